"""Loader for the Yahoo! Music user-song ratings releases (`--data yahoo-music`).

The recommender idea behind the data: explicit 1-5 star ratings of songs,
with each song placed in an album, an artist and a genre hierarchy, so a
ranking model can learn that a user who rates one song of a sub-genre highly
tends to like its siblings (genre and parent genre are shared features).

The release (obtained by the user from Yahoo! Webscope) is tab-separated
text with no header:

- rating files `train_*.txt` and `test_*.txt`: `user_id<TAB>song_id<TAB>rating`
  with an integer rating from 1 to 5;
- `song-attributes.txt`: `song_id<TAB>album_id<TAB>artist_id<TAB>genre_id`;
- `genre-hierarchy.txt`: `genre_id<TAB>parent_genre_id<TAB>level<TAB>genre_name`.

Canonical tables: interactions `user_id`, `item_id` (= song_id), `rating`
(float); items `item_id`, `album`, `artist`, `genre` (genre id), `parent_genre`
(its parent's id), `genre_level` (int), `title` (the genre name, the only text
the release has). Train and test files are read alike (the trainer makes its
own split).

Streaming: the full release has hundreds of millions of rating lines, so
rating files are read line by line in chunks of `chunk_rows` lines; each
chunk is checked and typed on its own. `convert_yahoo_music` writes each chunk
straight to canonical Parquet shards (`interactions-00000.parquet`, ...), never
holding the ratings in memory; `--data parquet --data-dir OUT` then trains on
them. `load_yahoo_music` (the registered loader) returns in-memory tables,
for releases that fit in memory.

Bad input follows the loader's `unknown_items` policy, applied to every bad
line: `"error"` raises a `DataValidationError` naming the file, the 1-based
line, the column and the fix; `"drop"` skips the line and counts it in the
data report under `load/<reason>_dropped` (`malformed_lines`,
`out_of_range_ratings`, `unknown_song_ratings`, `duplicate_songs`).
"""

import argparse
import logging
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.loaders import canonical
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import ROW_COLUMN
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import UNKNOWN_POLICIES

SONG_ATTRIBUTES = "song-attributes.txt"
GENRE_HIERARCHY = "genre-hierarchy.txt"
RATING_COLUMNS = ("user_id", "song_id", "rating")
SONG_COLUMNS = ("song_id", "album_id", "artist_id", "genre_id")
GENRE_COLUMNS = ("genre_id", "parent_genre_id", "level", "genre_name")
RATING_RANGE = (1, 5)
DEFAULT_CHUNK_ROWS = 1_000_000

__all__ = ["load_yahoo_music", "convert_yahoo_music", "iter_rating_chunks", "rating_files",
           "read_songs"]


class _Policy:
  """Applies the bad-line policy: raise, or count a drop under `load/<reason>_dropped`."""

  def __init__(self, policy: str, report: DataReport):
    if policy not in UNKNOWN_POLICIES:
      raise ValueError(f"`unknown_items` should be one of {UNKNOWN_POLICIES}. "
                       f"Received: `unknown_items` = {policy!r}.")
    self.policy = policy
    self.report = report

  def bad(self, reason: str, count: int, error: Callable[[], DataValidationError]) -> None:
    """Raises `error()` under `error`; otherwise counts `count` dropped lines."""
    if count <= 0:
      return
    if self.policy == "error":
      raise error()
    self.report.add("load", f"{reason}_dropped", count)


_DROP_HINT = ("or pass `--unknown-items drop` to skip such lines (they are counted in the "
              "data report).")


def _iter_line_chunks(path: str, chunk_rows: int) -> Iterator[Tuple[int, List[str]]]:
  """Yields (line number of the chunk's first line, lines) of at most `chunk_rows` lines."""
  first, lines = 1, []
  with _open(path) as f:
    for number, raw in enumerate(f, 1):
      lines.append(raw)
      if len(lines) >= chunk_rows:
        yield first, lines
        first, lines = number + 1, []
  if lines:
    yield first, lines


def _open(path: str):
  """Binary reader of a local or `tf.io.gfile` path (line iteration streams)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return open(path, "rb") if os.path.exists(path) else tf.io.gfile.GFile(path, "rb")


def _split_lines(path: str, first: int, lines: List[bytes], columns: Tuple[str, ...],
                 policy: _Policy) -> Tuple[List[List[str]], np.ndarray]:
  """Decodes and splits lines into `len(columns)` fields; returns (fields, line numbers).

  Blank lines are skipped silently (a trailing newline is not data); lines
  with another number of fields, or that are not UTF-8, are malformed.
  """
  rows, numbers = [], []
  n = len(columns)
  layout = "<TAB>".join(columns)
  for offset, raw in enumerate(lines):
    number = first + offset
    try:
      text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
      policy.bad("malformed_lines", 1, lambda e=e, number=number: DataValidationError(
          f"line is not UTF-8 text ({e.reason} at byte {e.start}).", file=path, row=number,
          fix=f"save the file as UTF-8, {_DROP_HINT}"))
      continue
    if not text.strip():
      continue
    fields = text.split("\t")
    if len(fields) != n or any(not f.strip() for f in fields):
      column = (columns[len(fields)] if len(fields) < n
                else next((c for c, f in zip(columns, fields) if not f.strip()), columns[-1]))
      shown = text if len(text) <= 80 else text[:77] + "..."
      policy.bad("malformed_lines", 1, lambda text=shown, k=len(fields), number=number,
                 column=column: DataValidationError(
                     f"expected {n} non-empty tab-separated fields ({layout}), found {k}: "
                     f"{text!r}.", file=path, row=number, column=column,
                     fix=f"write the line as `{layout}` separated by tabs, {_DROP_HINT}"))
      continue
    rows.append([f.strip() for f in fields])
    numbers.append(number)
  return rows, np.asarray(numbers, dtype=np.int64)


def _read_small_table(path: str, columns: Tuple[str, ...], policy: _Policy) -> pd.DataFrame:
  rows, numbers = [], []
  for first, lines in _iter_line_chunks(path, DEFAULT_CHUNK_ROWS):
    r, n = _split_lines(path, first, lines, columns, policy)
    rows.extend(r)
    numbers.append(n)
  frame = pd.DataFrame(rows, columns=list(columns), dtype=object)
  frame["_line"] = np.concatenate(numbers) if numbers else np.zeros(0, np.int64)
  return frame


def _whole_numbers(frame: pd.DataFrame, column: str, path: str, policy: _Policy,
                   fix: str) -> pd.DataFrame:
  """Keeps rows whose `column` is a whole number (others: policy `malformed_lines`)."""
  values = pd.to_numeric(frame[column], errors="coerce")
  bad = (values.isna() | (np.floor(values) != values)).to_numpy()
  if bad.any():
    pos = int(np.argmax(bad))
    policy.bad("malformed_lines", int(bad.sum()), lambda: DataValidationError(
        f"value is not a whole number. Received: {frame[column].iloc[pos]!r}.", file=path,
        row=int(frame["_line"].iloc[pos]), column=column, fix=f"{fix}, {_DROP_HINT}"))
  out = frame[~bad].copy()
  out[column] = values[~bad].astype(np.int64)
  return out


def read_genres(path: str, policy: _Policy) -> pd.DataFrame:
  """genre-hierarchy.txt -> `genre_id` (index), `parent_genre_id`, `level`, `genre_name`."""
  frame = _read_small_table(path, GENRE_COLUMNS, policy)
  frame = _whole_numbers(frame, "level", path, policy,
                         "write `level` as a whole number (1 = top-level genre)")
  dup = frame["genre_id"].duplicated().to_numpy()
  if dup.any():
    pos = int(np.argmax(dup))
    policy.bad("duplicate_genres", int(dup.sum()), lambda: DataValidationError(
        f"genre id {frame['genre_id'].iloc[pos]!r} is listed twice.", file=path,
        row=int(frame["_line"].iloc[pos]), column="genre_id",
        fix=f"keep one line per genre, {_DROP_HINT}"))
  return frame[~dup].set_index("genre_id")


def read_songs(data_dir: str, policy_name: str = "error",
               report: Optional[DataReport] = None) -> pd.DataFrame:
  """song-attributes.txt joined with genre-hierarchy.txt -> canonical items.

  Args:
    data_dir: Folder of the release.
    policy_name: `"error"` or `"drop"` for bad lines.
    report: Data report for counts.

  Returns:
    Items with `item_id`, `album`, `artist`, `genre`, `parent_genre`,
    `genre_level`, `title` and `_row` (the line in song-attributes.txt).
    A song whose genre is not in the hierarchy keeps its `genre`, with an
    empty parent and level 0 (counted as `load/songs_with_unlisted_genre`).

  Raises:
    DataValidationError: a bad line under the `error` policy, or a missing file.
  """
  report = report if report is not None else DataReport()
  policy = _Policy(policy_name, report)
  path = io.join(data_dir, SONG_ATTRIBUTES)
  _require_file(data_dir, SONG_ATTRIBUTES)
  songs = _read_small_table(path, SONG_COLUMNS, policy)
  dup = songs["song_id"].duplicated().to_numpy()
  if dup.any():
    pos = int(np.argmax(dup))
    first = int(songs["_line"][songs["song_id"] == songs["song_id"].iloc[pos]].iloc[0])
    policy.bad("duplicate_songs", int(dup.sum()), lambda: DataValidationError(
        f"song id {songs['song_id'].iloc[pos]!r} is listed twice (first at line {first}).",
        file=path, row=int(songs["_line"].iloc[pos]), column="song_id",
        fix=f"keep one line per song, {_DROP_HINT}"))
  songs = songs[~dup]
  genres = None
  if GENRE_HIERARCHY in canonical.list_dir(data_dir):
    genres = read_genres(io.join(data_dir, GENRE_HIERARCHY), policy)
  items = pd.DataFrame({"item_id": songs["song_id"].to_numpy(),
                        "album": songs["album_id"].to_numpy(),
                        "artist": songs["artist_id"].to_numpy(),
                        "genre": songs["genre_id"].to_numpy()})
  if genres is not None:
    listed = items["genre"].isin(genres.index).to_numpy()
    report.add("load", "songs_with_unlisted_genre", int((~listed).sum()))
    items["parent_genre"] = items["genre"].map(genres["parent_genre_id"]).fillna("")
    items["genre_level"] = items["genre"].map(genres["level"]).fillna(0).astype(np.int64)
    items["title"] = items["genre"].map(genres["genre_name"]).fillna("")
  items[ROW_COLUMN] = songs["_line"].to_numpy()
  return items.reset_index(drop=True)


def rating_files(data_dir: str) -> List[str]:
  """The rating files of a release folder: `train_*.txt` then `test_*.txt`, sorted.

  Raises:
    DataValidationError: the folder has none.
  """
  names = canonical.list_dir(data_dir)
  found = ([n for n in sorted(names) if n.startswith("train_") and n.endswith(".txt")]
           + [n for n in sorted(names) if n.startswith("test_") and n.endswith(".txt")])
  if not found:
    shown = names[:20] + (["..."] if len(names) > 20 else [])
    raise DataValidationError(
        f"no rating files (train_*.txt, test_*.txt) in the folder. Found: {shown}.",
        file=io.join(data_dir, "train_0.txt"),
        fix="point `--data-dir` at the unpacked Yahoo! Music release folder.")
  return found


def iter_rating_chunks(path: str, known_songs: Optional[pd.Index], policy: _Policy,
                       chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
  """Checked rating chunks of one file: `user_id`, `item_id`, `rating` (float32), `_line`.

  Args:
    path: A `train_*.txt` / `test_*.txt` file.
    known_songs: Song ids of song-attributes.txt (None: no check).
    policy: Bad-line policy.
    chunk_rows: Lines per chunk (memory is bounded by one chunk).

  Yields:
    One frame per chunk (possibly empty after drops).
  """
  if not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
    raise ValueError(f"`chunk_rows` should be a positive integer. Received: {chunk_rows!r}.")
  low, high = RATING_RANGE
  for first, lines in _iter_line_chunks(path, chunk_rows):
    rows, numbers = _split_lines(path, first, lines, RATING_COLUMNS, policy)
    frame = pd.DataFrame(rows, columns=list(RATING_COLUMNS), dtype=object)
    frame["_line"] = numbers
    frame = _whole_numbers(frame, "rating", path, policy,
                           f"write `rating` as a whole number from {low} to {high}")
    out_of_range = ((frame["rating"] < low) | (frame["rating"] > high)).to_numpy()
    if out_of_range.any():
      pos = int(np.argmax(out_of_range))
      policy.bad("out_of_range_ratings", int(out_of_range.sum()), lambda: DataValidationError(
          f"rating should be from {low} to {high}. Received: {frame['rating'].iloc[pos]}.",
          file=path, row=int(frame["_line"].iloc[pos]), column="rating",
          fix=f"correct the rating to {low}-{high}, {_DROP_HINT}"))
      frame = frame[~out_of_range]
    if known_songs is not None:
      unknown = ~frame["song_id"].isin(known_songs).to_numpy()
      if unknown.any():
        pos = int(np.argmax(unknown))
        policy.bad("unknown_song_ratings", int(unknown.sum()), lambda: DataValidationError(
            f"song id {frame['song_id'].iloc[pos]!r} is not in {SONG_ATTRIBUTES}; "
            f"{int(unknown.sum())} lines of this chunk rate unknown songs.", file=path,
            row=int(frame["_line"].iloc[pos]), column="song_id",
            fix=f"add the song to {SONG_ATTRIBUTES}, {_DROP_HINT}"))
        frame = frame[~unknown]
    yield pd.DataFrame({"user_id": frame["user_id"].to_numpy(),
                        "item_id": frame["song_id"].to_numpy(),
                        "rating": frame["rating"].to_numpy(np.float32),
                        "_line": frame["_line"].to_numpy()})


def _require_file(data_dir: str, name: str) -> None:
  if not canonical.is_dir(data_dir):
    raise canonical.missing_folder_error(
        data_dir, f"a Yahoo! Music release (train_*.txt, {SONG_ATTRIBUTES}, {GENRE_HIERARCHY})")
  if name not in canonical.list_dir(data_dir):
    raise DataValidationError(
        f"{name} is missing from the release folder.", file=io.join(data_dir, name),
        fix=f"unpack the whole release into `--data-dir` ({name} holds the song features).")


def load_yahoo_music(data_dir: str, unknown_items: str = "error",
                     report: Optional[DataReport] = None,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tables:
  """Loads a Yahoo! Music ratings release into validated canonical tables.

  Args:
    data_dir: Folder with `train_*.txt` / `test_*.txt`, song-attributes.txt
      and (optional) genre-hierarchy.txt; local or any `tf.io.gfile` path.
    unknown_items: Bad-line policy, `"error"` (default) or `"drop"`: applies
      to malformed lines, ratings outside 1-5 and ratings of songs missing
      from song-attributes.txt (see the module docstring).
    report: Data report to record counts in.
    chunk_rows: Lines read and checked at a time.

  Returns:
    Validated `Tables` (interactions with `rating`; items with the genre
    hierarchy).

  Raises:
    FileNotFoundError: `data_dir` does not exist.
    DataValidationError: a missing file, or a bad line under `error`.
  """
  report = report if report is not None else DataReport()
  data_dir = str(data_dir)
  policy = _Policy(unknown_items, report)
  items = read_songs(data_dir, unknown_items, report)
  known = pd.Index(items["item_id"])
  origins = {"interactions": canonical.RowOrigins(), "items": canonical.RowOrigins()}
  parts = []
  for name in rating_files(data_dir):
    path = io.join(data_dir, name)
    lines = 0
    for chunk in iter_rating_chunks(path, known, policy, chunk_rows):
      chunk[ROW_COLUMN] = origins["interactions"].add(path, len(chunk),
                                                      local_rows=chunk.pop("_line").to_numpy())
      parts.append(chunk)
      lines += len(chunk)
    report.add("load", "rating_rows_read", lines)
  interactions = (pd.concat(parts, ignore_index=True) if parts else
                  pd.DataFrame({"user_id": [], "item_id": [], "rating": [], ROW_COLUMN: []}))
  songs_path = io.join(data_dir, SONG_ATTRIBUTES)
  items[ROW_COLUMN] = origins["items"].add(songs_path, len(items),
                                           local_rows=items[ROW_COLUMN].to_numpy())
  report.record("load", source=f"yahoo-music:{data_dir}")
  tables = Tables(interactions=interactions, items=items,
                  sources={"interactions": io.join(data_dir, "train_*.txt"),
                           "items": songs_path}, name="yahoo-music")
  renamed = {"interactions": {"item_id": "song_id"},
             "items": {"item_id": "song_id", "album": "album_id", "artist": "artist_id",
                       "genre": "genre_id"}}
  return canonical.validate_with_origins(tables, origins=origins, renamed=renamed,
                                         unknown_items=unknown_items, report=report)


def convert_yahoo_music(data_dir: str, out_dir: str, *, unknown_items: str = "error",
                        report: Optional[DataReport] = None,
                        chunk_rows: int = DEFAULT_CHUNK_ROWS,
                        shard_rows: int = 5_000_000) -> Dict[str, int]:
  """Streams a release into a canonical Parquet folder, one chunk in memory at a time.

  Writes `items.parquet` and `interactions-00000.parquet`, ... (each with at
  most `shard_rows` rows) into `out_dir`, which `--data parquet --data-dir
  out_dir` reads. Bad lines follow `unknown_items` as in `load_yahoo_music`.

  Args:
    data_dir: The release folder.
    out_dir: Output folder (created; existing shards are replaced).
    unknown_items: `"error"` or `"drop"`.
    report: Data report to record counts in.
    chunk_rows: Lines read at a time.
    shard_rows: Most rows per interactions shard.

  Returns:
    `{"items": n, "interactions": n, "shards": n}`.
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  report = report if report is not None else DataReport()
  policy = _Policy(unknown_items, report)
  items = read_songs(str(data_dir), unknown_items, report).drop(columns=[ROW_COLUMN])
  io.makedirs(out_dir)
  for name in canonical.list_dir(out_dir):
    if name.startswith("interactions-") and name.endswith(".parquet"):
      _remove(io.join(out_dir, name))
  pq.write_table(pa.Table.from_pandas(items, preserve_index=False),
                 io.join(out_dir, "items.parquet"))
  schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                      ("rating", pa.float32())])
  known = pd.Index(items["item_id"])
  writer, shard, in_shard, total = None, -1, 0, 0
  for name in rating_files(str(data_dir)):
    for chunk in iter_rating_chunks(io.join(data_dir, name), known, policy, chunk_rows):
      chunk = chunk.drop(columns=["_line"])
      start = 0
      while start < len(chunk):
        if writer is None or in_shard >= shard_rows:
          if writer is not None:
            writer.close()
          shard, in_shard = shard + 1, 0
          writer = pq.ParquetWriter(io.join(out_dir, f"interactions-{shard:05d}.parquet"),
                                    schema)
        take = min(len(chunk) - start, shard_rows - in_shard)
        writer.write_table(pa.Table.from_pandas(chunk.iloc[start:start + take], schema=schema,
                                                preserve_index=False))
        start, in_shard, total = start + take, in_shard + take, total + take
  if writer is not None:
    writer.close()
  report.record("load", source=f"yahoo-music:{data_dir}", rating_rows_written=total)
  return {"items": len(items), "interactions": total, "shards": shard + 1}


def _remove(path: str) -> None:
  if os.path.exists(path):
    os.remove(path)
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.remove(path)


def main(argv: Optional[List[str]] = None) -> int:
  """`python -m tfrec_music.data.loaders.yahoo_music --data-dir D --out O`: stream to shards."""
  p = argparse.ArgumentParser(description=convert_yahoo_music.__doc__.splitlines()[0])
  p.add_argument("--data-dir", required=True, help="The unpacked release folder.")
  p.add_argument("--out", required=True, help="Canonical Parquet folder to write.")
  p.add_argument("--unknown-items", choices=UNKNOWN_POLICIES, default="error",
                 help="Bad lines: fail, or drop and count them.")
  p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
  p.add_argument("--shard-rows", type=int, default=5_000_000)
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  report = DataReport()
  try:
    counts = convert_yahoo_music(args.data_dir, args.out, unknown_items=args.unknown_items,
                                 report=report, chunk_rows=args.chunk_rows,
                                 shard_rows=args.shard_rows)
  except (DataValidationError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  report.write(io.join(args.out, "data_report.json"))
  print(counts)
  return 0


if __name__ == "__main__":
  sys.exit(main())
