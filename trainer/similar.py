"""`python -m trainer.similar`: most similar users (or artists) from a user-similarity export.

Reads the vectors of `saved_models/user_similarity/<version>/vectors/` (the
highest version unless `--version`), so it answers instantly without
TensorFlow Serving. Examples:

  python -m trainer.similar --user u00042 --k 10
  python -m trainer.similar --artist "a0007 neon" --k 5
  python -m trainer.similar --tracks t00001,t00420,t00999      # a new user
  python -m trainer.similar --heatmap users.png --users u00001,u00002,u00003
  python -m trainer.similar --heatmap artists.png --artists "a0001 x,a0002 y"

Exit codes: 0 ok, 2 bad input (unknown id, no export).
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)


def build_parser() -> argparse.ArgumentParser:
  """The CLI's argument parser."""
  p = argparse.ArgumentParser(
      prog="python -m trainer.similar",
      description="Most similar users or artists from a user_similarity export.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--export-dir", default=os.environ.get("AIP_MODEL_DIR", "saved_models"),
                 help="Export root (the model is <export-dir>/user_similarity/<version>).")
  p.add_argument("--model-dir", default=None,
                 help="A user_similarity model or version folder (overrides --export-dir).")
  p.add_argument("--version", type=int, default=None, help="Version (default: the highest).")
  p.add_argument("--user", action="append", default=[], help="A user id (repeatable).")
  p.add_argument("--artist", action="append", default=[], help="An artist name (repeatable).")
  p.add_argument("--tracks", default=None,
                 help="Comma-separated track ids of a new user: their most similar users.")
  p.add_argument("--k", type=int, default=10, help="Results per query.")
  p.add_argument("--heatmap", default=None, help="Write a pairwise-similarity heatmap PNG here.")
  p.add_argument("--users", default=None, help="Comma-separated user ids for --heatmap.")
  p.add_argument("--artists", default=None,
                 help="Artist names for --heatmap, separated by '|' (names may hold commas "
                      "or spaces) or by ',' when no '|' is given.")
  return p


def _split(text: Optional[str]) -> List[str]:
  if not text:
    return []
  sep = "|" if "|" in text else ","
  return [t.strip() for t in text.split(sep) if t.strip()]


def format_table(title: str, frame) -> str:
  """A plain text table: a title line, then rank, id and score columns."""
  key = [c for c in frame.columns if c not in ("rank", "score")][0]
  width = max([len(str(v)) for v in frame[key]] + [len(key)])
  lines = [title, f"{'rank':>4}  {key:<{width}}  {'score':>12}"]
  for rank, name, score in zip(frame["rank"], frame[key], frame["score"]):
    lines.append(f"{rank:>4}  {str(name):<{width}}  {score:>12.6g}")
  return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
  """Entry point; returns the process exit code."""
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  from tfrec_music import io  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.user_similarity import UserSimilarity  # pylint: disable=g-import-not-at-top
  folder = args.model_dir or io.join(args.export_dir, "user_similarity")
  if args.version is not None:
    folder = io.join(folder, str(args.version))
  if not (args.user or args.artist or args.tracks or args.heatmap):
    print("error: nothing to do: pass --user, --artist, --tracks or --heatmap.", file=sys.stderr)
    return 2
  try:
    model = UserSimilarity.load(folder)
    blocks = []
    for user in args.user:
      blocks.append(format_table(f"Users most similar to {user} ({model.users.metric}):",
                                 model.most_similar_users(user, args.k)))
    for artist in args.artist:
      blocks.append(format_table(f"Artists most similar to {artist} ({model.users.metric}):",
                                 model.most_similar_artists(artist, args.k)))
    if args.tracks:
      tracks = _split(args.tracks)
      blocks.append(format_table(f"Users most similar to a listener of {len(tracks)} tracks:",
                                 model.similar_to_tracks(tracks, args.k)))
    if args.heatmap:
      from tfrec_music.heatmap import similarity_heatmap  # pylint: disable=g-import-not-at-top
      if args.artists:
        index, ids = model.artists, _split(args.artists)
      else:
        index, ids = model.users, _split(args.users)
      if index is None or len(ids) < 2:
        raise ValueError("--heatmap needs at least two ids in --users or --artists.")
      import numpy as np  # pylint: disable=g-import-not-at-top
      matrix = index.pairwise(ids)
      np.fill_diagonal(matrix, np.nan)
      files = similarity_heatmap(matrix, ids, args.heatmap, title=f"{index.kind} similarity")
      blocks.append("Wrote " + ", ".join(files))
  except (KeyError, ValueError, FileNotFoundError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {message}", file=sys.stderr)
    return 2
  print("\n\n".join(blocks))
  return 0


if __name__ == "__main__":
  sys.exit(main())
