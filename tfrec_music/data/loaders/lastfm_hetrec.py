"""Loader for the Last.fm HetRec 2011 release (`--data lastfm-hetrec`).

The recommender data: 1,892 Last.fm users, the artists they listen to with
play counts (implicit feedback, as ALS with confidence weights expects),
the tags users put on artists, and a friend graph.

The `hetrec2011-lastfm-2k` release is a folder (or its zip) of tab-separated
files with a header row:

- `user_artists.dat`: `userID artistID weight` (weight = play count).
- `artists.dat`: `id name url pictureURL`. Names contain double quotes
  (`"Weird Al" Yankovic`), so fields are split on tabs with no quote handling.
- `tags.dat`: `tagID tagValue`, latin-1 encoded.
- `user_taggedartists.dat`: `userID artistID tagID day month year`, and
  `user_taggedartists-timestamps.dat`: `userID artistID tagID timestamp`
  (milliseconds); the second is read only when the first is absent.
- `user_friends.dat`: `userID friendID`, each friendship listed both ways.

Most files have Windows line endings; every file is decoded as UTF-8, or as
latin-1 when it is not valid UTF-8. Ids are not contiguous and stay strings.

Canonical tables: interactions (`user_id`, `item_id` = artist id, `weight`),
items (`item_id`, `title` = `artist` = name, `url`, `tags` = the artist's
most used tags, most used first), users (every user id seen) and
`user_links` (friendships as listed). Counted in the data report (`load`
step): tag rows naming artists missing from `artists.dat`, tag rows naming
unknown tags, friendships listed one way only, self-friendships (dropped).
A zip is extracted with `safe_extract` (members leaving the target folder are
refused) into a cache folder next to the system temp folder.
"""

import hashlib
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.loaders import canonical
from tfrec_music.data.loaders.safe_extract import safe_extract
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import ROW_COLUMN
from tfrec_music.data.tables import Tables

ARCHIVE = "hetrec2011-lastfm-2k.zip"
# File -> header columns (case-insensitive) it must start with.
HEADERS = {
    "user_artists.dat": ("userID", "artistID", "weight"),
    "artists.dat": ("id", "name"),
    "tags.dat": ("tagID", "tagValue"),
    "user_taggedartists.dat": ("userID", "artistID", "tagID"),
    "user_taggedartists-timestamps.dat": ("userID", "artistID", "tagID"),
    "user_friends.dat": ("userID", "friendID"),
}
REQUIRED = ("user_artists.dat", "artists.dat")
DEFAULT_TOP_TAGS = 10


def decode(data: bytes) -> Tuple[str, str]:
  """(text, encoding): UTF-8 when valid (BOM dropped), else latin-1 (never fails)."""
  try:
    return data.decode("utf-8-sig"), "utf-8"
  except UnicodeDecodeError:
    return data.decode("latin-1"), "latin-1"


def read_dat(path: str, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
  """Reads one tab-separated HetRec file with a header, every field a string.

  No quote handling (names hold double quotes), CRLF or LF line ends, blank
  lines skipped.

  Args:
    path: File path (local or `tf.io.gfile`).
    required: Columns the header must have (case-insensitive).
    optional: Columns read when the header has them (missing fields: "").

  Returns:
    The frame with the file's column names and a `_row` column (1-based data
    row, the first line after the header being row 1).

  Raises:
    DataValidationError: empty file, missing column, or a row with fewer
      fields than the required columns; naming the file, row and column.
  """
  text, _ = decode(canonical.read_bytes(path))
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  if not lines or not lines[0].strip():
    raise DataValidationError(
        "the file is empty (not even a header row).", file=path,
        fix=f"restore the release's file; its header is `{chr(9).join(required)}`.")
  header = [h.strip() for h in lines[0].split("\t")]
  lower = [h.lower() for h in header]
  for position, name in enumerate(required):
    if name.lower() not in lower:
      raise DataValidationError(
          f"required column `{name}` is missing from the header (found {header}).",
          file=path, row=None, column=name,
          fix=f"the release's header is `{chr(9).join(required)}...`, tab-separated.")
  index = [lower.index(name.lower()) for name in required]
  extra_names = [n for n in optional if n.lower() in lower]
  extra = [lower.index(n.lower()) for n in extra_names]
  rows, numbers = [], []
  for number, line in enumerate(lines[1:], 1):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) <= max(index):
      missing = required[next(i for i, k in enumerate(index) if k >= len(fields))]
      raise DataValidationError(
          f"the row has {len(fields)} tab-separated fields; column `{missing}` is missing. "
          f"Received: {line[:80]!r}.", file=path, row=number, column=missing,
          fix="separate fields with tabs, one record per line, as in the release.")
    rows.append([fields[k].strip() for k in index]
                + [fields[k].strip() if k < len(fields) else "" for k in extra])
    numbers.append(number)
  frame = pd.DataFrame(rows, columns=list(required) + extra_names, dtype=object)
  frame[ROW_COLUMN] = np.asarray(numbers, np.int64)
  return frame


def _integers(frame: pd.DataFrame, column: str, path: str) -> np.ndarray:
  """The column as int64, or an error naming the first bad row."""
  values = pd.to_numeric(frame[column], errors="coerce")
  bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(np.float64, na_value=np.nan))
  if bad.any():
    pos = int(np.argmax(bad))
    raise DataValidationError(
        f"`{column}` should be an integer. Received: {frame[column].iloc[pos]!r}.",
        file=path, row=int(frame[ROW_COLUMN].iloc[pos]), column=column,
        fix="fix or delete the row.")
  return values.to_numpy(np.int64)


def find_release(data_dir: str, extract_root: Optional[str] = None) -> str:
  """The folder holding `user_artists.dat`: `data_dir`, a sub-folder, or the
  extracted zip (`data_dir` may be the zip itself or a folder holding it).

  Raises:
    FileNotFoundError: no such folder or archive.
    DataValidationError: neither the files nor the archive are there.
    UnsafeArchiveError: the archive has members that leave the target folder.
  """
  data_dir = str(data_dir)
  archive = None
  if data_dir.endswith(".zip") and io.exists(data_dir) and not canonical.is_dir(data_dir):
    archive = data_dir
  elif not canonical.is_dir(data_dir):
    raise canonical.missing_folder_error(data_dir, "the Last.fm HetRec release (or its zip)")
  else:
    names = canonical.list_dir(data_dir)
    if "user_artists.dat" in names:
      return data_dir
    for name in names:
      sub = io.join(data_dir, name)
      if canonical.is_dir(sub) and "user_artists.dat" in canonical.list_dir(sub):
        return sub
    zips = [n for n in names if n.endswith(".zip")]
    if ARCHIVE in zips or len(zips) == 1:
      archive = io.join(data_dir, ARCHIVE if ARCHIVE in zips else zips[0])
    else:
      raise DataValidationError(
          f"neither user_artists.dat nor {ARCHIVE} is in the folder. Found: {names[:20]}.",
          file=io.join(data_dir, "user_artists.dat"),
          fix=f"point `--data-dir` at the unpacked hetrec2011-lastfm-2k folder or at {ARCHIVE}.")
  data = canonical.read_bytes(archive)
  digest = hashlib.sha256(data).hexdigest()[:16]
  root = extract_root or os.path.join(tempfile.gettempdir(), "tfrec_music_hetrec")
  target = os.path.join(root, digest)
  if not os.path.exists(os.path.join(target, ".complete")):
    import io as pyio  # pylint: disable=g-import-not-at-top
    staging = tempfile.mkdtemp(prefix=f"{digest}.", dir=_makedirs(root))
    safe_extract(pyio.BytesIO(data), staging)
    open(os.path.join(staging, ".complete"), "w").close()
    try:
      os.replace(staging, target)
    except OSError:  # another process extracted it first
      pass
  return find_release(target)


def _makedirs(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


def _top_tags(tagged: pd.DataFrame, tag_names: Dict[str, str], top: int
              ) -> Dict[str, List[str]]:
  """Artist id -> its `top` most used tag names (ties: lower tag id first)."""
  counts = (tagged.groupby(["artistID", "tagID"]).size().rename("n").reset_index())
  counts["tag_number"] = pd.to_numeric(counts["tagID"], errors="coerce")
  counts = counts.sort_values(["artistID", "n", "tag_number"], ascending=[True, False, True])
  out: Dict[str, List[str]] = {}
  for artist, group in counts.groupby("artistID", sort=False):
    out[artist] = [tag_names[t] for t in group["tagID"].head(top)]
  return out


def load_lastfm_hetrec(data_dir: str, *, unknown_items: str = "error",
                       report: Optional[DataReport] = None,
                       top_tags: int = DEFAULT_TOP_TAGS) -> Tables:
  """Loads the Last.fm HetRec 2011 release into canonical tables.

  Args:
    data_dir: The release folder, a folder holding it or its zip, or the zip.
    unknown_items: `"error"` (default) or `"drop"` for listening rows whose
      artist is missing from artists.dat (drops are counted in the report).
    report: Data report to record load counts in.
    top_tags: Tags kept per artist (most used first).

  Returns:
    Validated canonical `Tables`.

  Raises:
    FileNotFoundError: `data_dir` does not exist.
    DataValidationError: a required file or column is missing, a row has too
      few fields, an id or play count is not a number, or any check of
      `validate_tables`; the message names the file, row and column.
    UnsafeArchiveError: the zip has members that leave the target folder.
  """
  report = report if report is not None else DataReport()
  folder = find_release(data_dir)
  names = set(canonical.list_dir(folder))
  for name in REQUIRED:
    if name not in names:
      raise DataValidationError(
          f"required file {name} of the HetRec release is missing. Found: {sorted(names)}.",
          file=io.join(folder, name),
          fix="restore it from hetrec2011-lastfm-2k.zip.")
  paths = {name: io.join(folder, name) for name in HEADERS}

  listens = read_dat(paths["user_artists.dat"], HEADERS["user_artists.dat"])
  interactions = pd.DataFrame({"user_id": listens["userID"], "item_id": listens["artistID"],
                               "weight": listens["weight"], ROW_COLUMN: listens[ROW_COLUMN]})

  artists = read_dat(paths["artists.dat"], HEADERS["artists.dat"], optional=("url",))
  artist_ids = set(artists["id"])

  tag_names: Dict[str, str] = {}
  if "tags.dat" in names:
    tags = read_dat(paths["tags.dat"], HEADERS["tags.dat"])
    tag_names = dict(zip(tags["tagID"], tags["tagValue"]))
  tagged_name = next((n for n in ("user_taggedartists.dat", "user_taggedartists-timestamps.dat")
                      if n in names), None)
  artist_tags: Dict[str, List[str]] = {}
  if tagged_name is not None:
    tagged = read_dat(paths[tagged_name], HEADERS[tagged_name])
    missing_artist = ~tagged["artistID"].isin(artist_ids)
    unknown_tag = ~tagged["tagID"].isin(set(tag_names)) & ~missing_artist
    report.record("load", tag_rows=int(len(tagged)),
                  tag_rows_missing_artist=int(missing_artist.sum()),
                  tag_rows_unknown_tag=int(unknown_tag.sum()))
    artist_tags = _top_tags(tagged[~missing_artist & ~unknown_tag], tag_names, top_tags)

  items = pd.DataFrame({"item_id": artists["id"], "title": artists["name"],
                        "artist": artists["name"]})
  if "url" in artists.columns:
    items["url"] = artists["url"]
  items["tags"] = [artist_tags.get(a, []) for a in artists["id"]]
  items[ROW_COLUMN] = artists[ROW_COLUMN].to_numpy()

  links = None
  friend_users: List[str] = []
  if "user_friends.dat" in names:
    path = paths["user_friends.dat"]
    friends = read_dat(path, HEADERS["user_friends.dat"])
    self_links = (friends["userID"] == friends["friendID"]).to_numpy()
    friends = friends[~self_links]
    pairs = set(zip(friends["userID"], friends["friendID"]))
    one_way = sum((b, a) not in pairs for a, b in pairs)
    report.record("load", friendships_listed=int(len(friends)),
                  friendships_one_way=int(one_way), self_friendships_dropped=int(self_links.sum()))
    links = pd.DataFrame({"user_id": friends["userID"], "other_user_id": friends["friendID"],
                          ROW_COLUMN: friends[ROW_COLUMN].to_numpy()})
    friend_users = list(friends["userID"]) + list(friends["friendID"])

  # Ids and play counts are numbers in the release: check them here so the
  # error names the source column rather than a canonical one.
  _integers(listens, "userID", paths["user_artists.dat"])
  _integers(listens, "artistID", paths["user_artists.dat"])
  _integers(artists, "id", paths["artists.dat"])
  users = pd.DataFrame({"user_id": pd.unique(pd.Series(list(interactions["user_id"])
                                                        + friend_users, dtype=object))})
  report.record("load", source=f"lastfm-hetrec:{data_dir}")
  sources = {"interactions": paths["user_artists.dat"], "items": paths["artists.dat"],
             "users": paths["user_artists.dat"],
             "user_links": paths["user_friends.dat"]}
  renamed = {"interactions": {"user_id": "userID", "item_id": "artistID", "weight": "weight"},
             "items": {"item_id": "id", "title": "name"},
             "user_links": {"user_id": "userID", "other_user_id": "friendID"}}
  tables = Tables(interactions=interactions, items=items, users=users, user_links=links,
                  sources=sources, name="lastfm-hetrec")
  return canonical.validate_with_origins(tables, origins={}, renamed=renamed,
                                         unknown_items=unknown_items, report=report)

