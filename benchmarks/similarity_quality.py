"""Quality of user-to-user taste similarity on the synthetic catalogue.

Trains one two-tower on the `--preset` catalogue (or reads a two-tower
export), then evaluates user similarity with each track-vector source and
centroid setting through `UserSimilarityFamily.evaluate`: friend-pair AUC
(valid and test halves), share of users with a friend in their top 10, and
Spearman correlation with the oracle's taste similarity. The oracle row (true
tastes) is the ceiling.

  python -m benchmarks.similarity_quality                   # default preset
  python -m benchmarks.similarity_quality --preset tiny
"""

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

KEYS = ("valid/all/friend_auc", "test/all/friend_auc", "test/all/friend_in_top10",
        "test/all/oracle_spearman")

# (label, config overrides); two_tower rows read the vectors trained once.
SETTINGS = (
    ("two_tower, all tracks, euclidean", {"track_vectors": "two_tower", "recent_share": 1.0}),
    ("two_tower, all tracks, cosine", {"track_vectors": "two_tower", "recent_share": 1.0,
                                       "metric": "cosine"}),
    ("two_tower, recent half, euclidean", {"track_vectors": "two_tower", "recent_share": 0.5}),
    ("two_tower, recent half, cosine", {"track_vectors": "two_tower", "recent_share": 0.5,
                                        "metric": "cosine"}),
    ("text colisten, all tracks, euclidean", {"track_vectors": "text", "recent_share": 1.0}),
    ("text colisten, recent half, euclidean", {"track_vectors": "text", "recent_share": 0.5}),
    ("text only (cooccurrence), all tracks, euclidean",
     {"track_vectors": "text", "word_vectors": "cooccurrence", "recent_share": 1.0}),
    ("text only (cooccurrence), recent half, euclidean",
     {"track_vectors": "text", "word_vectors": "cooccurrence", "recent_share": 0.5}),
)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
  """Runs every setting; prints a table and returns label -> metrics."""
  from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
  from tfrec_music.export.retrieval import save_candidates  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.family import EvalContext  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.track_vectors import track_vectors  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.user_similarity import UserSimilarityFamily  # pylint: disable=g-import-not-at-top
  from tfrec_music.prepare import PrepareConfig  # pylint: disable=g-import-not-at-top
  from tfrec_music.prepare import prepare  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="default")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--two-tower-export", default="",
                 help="Read two-tower track vectors from this version folder (no training).")
  p.add_argument("--out", default=None, help="Also write the results as JSON here.")
  args = p.parse_args(argv)
  catalog = synthetic.generate(args.preset, seed=args.seed)
  prepared = prepare(catalog.tables, PrepareConfig(**UserSimilarityFamily.prepare_overrides,
                                                   seed=args.seed))
  work = tempfile.mkdtemp(prefix="similarity_quality_")
  export = args.two_tower_export
  timings = {}
  if not export:
    start = time.perf_counter()
    vectors = track_vectors(prepared, "two_tower", job_dir=work,
                            two_tower_preset="tiny" if args.preset == "tiny" else "default",
                            seed=args.seed)
    timings["two_tower_fit_seconds"] = time.perf_counter() - start
    export = os.path.join(work, "two_tower")
    save_candidates(os.path.join(export, "candidates"), vectors.item_ids, vectors.vectors)
  results: Dict[str, Dict[str, float]] = {}
  context = EvalContext(oracle=catalog.oracle)
  for label, overrides in SETTINGS:
    config = UserSimilarityFamily.make_config(args.preset, {
        **overrides, "two_tower_export": export, "heatmap_size": 0, "seed": args.seed})
    family = UserSimilarityFamily(config, prepared)
    family.fit(os.path.join(work, "job"))
    metrics = family.evaluate(context)
    results[label] = {k: metrics["model"][k] for k in KEYS if k in metrics["model"]}
    results.setdefault("oracle (true tastes)",
                       {k: metrics["oracle"][k] for k in KEYS if k in metrics["oracle"]})
  width = max(len(k) for k in results) + 2
  print("setting".ljust(width) + "".join(f"{k.replace('/all/', ' '):>28}" for k in KEYS))
  for label, values in results.items():
    print(label.ljust(width) + "".join(f"{values.get(k, float('nan')):>28.4f}" for k in KEYS))
  print(json.dumps({"preset": args.preset, "seed": args.seed, "timings": timings}))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"preset": args.preset, "seed": args.seed, "timings": timings,
                 "results": results}, f, indent=2)
  return results


if __name__ == "__main__":
  main()
