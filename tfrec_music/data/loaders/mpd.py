"""Loader for the Spotify Million Playlist Dataset (`--data mpd`).

The recommender idea it serves: a playlist is a user whose "history" is its
tracks in order, so playlist continuation is next-item recommendation for
playlists. The loader maps

- each playlist to a user: `user_id` = `pid`, with `name`, `collaborative`
  (the dataset writes `"true"` / `"false"` strings), `num_followers`,
  `num_edits`, `modified_at`, `description` and, in the challenge set,
  `num_samples` / `num_holdouts`;
- each track of a playlist to an interaction: `user_id` = `pid`,
  `item_id` = `track_uri`, `timestamp` = `pos` (the order that the temporal
  split and the K-seed protocol use), `playlist_id` = `pid`;
- each distinct track to an item: `title` = `track_name`, `artist` =
  `artist_name`, `album` = `album_name`, plus `artist_uri`, `album_uri`,
  `duration_ms` (first occurrence wins).

The dataset is a folder of JSON slices `mpd.slice.<a>-<b>.json` (1,000
playlists each; 1,000 slices, 66 M rows in all) and possibly the challenge
set `challenge_set.json`. Slices are read one at a time (in numeric order)
and reduced to integer codes before the next is parsed, so peak memory is one
parsed slice plus the compact tables, not the whole JSON.

`num_tracks` is never trusted: the tracks present are used and mismatches
are counted (`load/num_tracks_mismatch`). Challenge playlists given by name
only have no interactions; they are kept in the users table and counted
(`load/playlists_without_tracks`). A truncated or malformed slice is an error
naming the file, the line, the column and the character offset, unless
`bad_slices="drop"`, which skips the whole slice and counts it.
"""

import json
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.loaders import canonical
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables

__all__ = ["BAD_SLICE_POLICIES", "list_slices", "load_mpd", "parse_bool"]

SLICE_PATTERN = re.compile(r"^mpd\.slice\.(\d+)-(\d+)\.json$")
CHALLENGE_FILE = "challenge_set.json"
BAD_SLICE_POLICIES = ("error", "drop")
TRACK_FIELDS = ("track_uri", "track_name", "artist_name", "album_name")
# Optional per-playlist numbers copied to the users table when present.
PLAYLIST_NUMBERS = ("num_followers", "num_edits", "modified_at", "num_samples", "num_holdouts")
_RESHAPE_FIX = ("each slice should be `{\"info\": {...}, \"playlists\": [{\"pid\": ..., "
                "\"name\": ..., \"tracks\": [{\"pos\": 0, \"track_uri\": ...}]}]}` as "
                "distributed by AIcrowd; re-download the file if it was edited.")


def parse_bool(value: Any, *, file: str, row: int, column: str) -> bool:
  """Parses the dataset's booleans: `"true"` / `"false"` strings (or JSON booleans).

  Raises:
    DataValidationError: any other value, naming the file, playlist and field.
  """
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip().lower() in ("true", "false"):
    return value.strip().lower() == "true"
  raise DataValidationError(
      f"`{column}` should be \"true\" or \"false\". Received: {value!r}.",
      file=file, row=row, column=column,
      fix="write the field as the string \"true\" or \"false\" (as the MPD does).")


def list_slices(data_dir: str) -> List[str]:
  """Slice file names of `data_dir` in numeric order, then the challenge set.

  Raises:
    FileNotFoundError: the folder does not exist.
    DataValidationError: it holds no slice and no challenge set.
  """
  if not canonical.is_dir(data_dir):
    raise canonical.missing_folder_error(
        data_dir, "the Million Playlist Dataset's `data/` folder (mpd.slice.*.json)")
  names = canonical.list_dir(data_dir)
  slices = sorted((int(m.group(1)), n) for n in names
                  for m in [SLICE_PATTERN.match(n)] if m)
  out = [n for _, n in slices]
  if CHALLENGE_FILE in names:
    out.append(CHALLENGE_FILE)
  if not out:
    shown = sorted(names)[:20]
    raise DataValidationError(
        f"no `mpd.slice.<a>-<b>.json` file and no `{CHALLENGE_FILE}` in the folder. "
        f"Found: {shown}.", file=str(data_dir),
        fix="point `--data-dir` at the MPD's `data/` folder (or at the challenge set's).")
  return out


def _json_error(path: str, error: json.JSONDecodeError, text: str) -> DataValidationError:
  # A complete slice ends with its closing brace; a copy cut short does not.
  truncated = not text.rstrip().endswith("}") or error.pos >= len(text) - 2
  what = "is truncated" if truncated else "is not valid JSON"
  # Which playlist the parser was in: the `"pid"` keys before the error.
  before = text[:error.pos]
  pids = re.findall(r'"pid"\s*:\s*(\d+)', before)
  where = (f", in playlist {len(pids)} of the file (pid {pids[-1]})" if pids else "")
  return DataValidationError(
      f"the slice {what}: {error.msg} at line {error.lineno}, column {error.colno} "
      f"(character {error.pos} of {len(text)}){where}.", file=path,
      fix=("re-download or re-extract the file (an interrupted copy leaves a truncated "
           "slice), or skip bad slices with `--bad-slices drop` (`load_mpd(..., "
           "bad_slices=\"drop\")`), each counted in the data report."))


class _Accumulator:
  """Compact, growing tables: integer codes per row, strings once per track."""

  def __init__(self):
    self.track_code: Dict[str, int] = {}
    self.track_rows: List[tuple] = []   # per track: uri, name, artist, album, artist_uri, ...
    self.user_codes: List[np.ndarray] = []
    self.item_codes: List[np.ndarray] = []
    self.positions: List[np.ndarray] = []
    self.playlists: Dict[str, List[Any]] = {k: [] for k in (
        "user_id", "name", "collaborative", "description") + PLAYLIST_NUMBERS}
    self.pid_row: Dict[str, tuple] = {}  # pid -> (file, playlist position), for duplicates

  @property
  def n_playlists(self) -> int:
    return len(self.playlists["user_id"])


def _int_field(value: Any, *, file: str, row: int, column: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    value_ok = False
  else:
    try:
      number = float(value)
      value_ok = np.isfinite(number) and number == int(number)
    except ValueError:
      value_ok = False
  if not value_ok:
    raise DataValidationError(f"`{column}` should be an integer. Received: {value!r}.",
                              file=file, row=row, column=column,
                              fix=f"write `{column}` as a whole number.")
  return int(float(value))


def _read_playlist(acc: _Accumulator, playlist: Any, path: str, row: int,
                   report: DataReport) -> None:
  if not isinstance(playlist, dict):
    raise DataValidationError(f"playlist {row} should be an object. Received: "
                              f"{type(playlist).__name__}.", file=path, row=row, fix=_RESHAPE_FIX)
  if "pid" not in playlist:
    raise DataValidationError(f"playlist {row} has no `pid`.", file=path, row=row,
                              column="pid", fix=_RESHAPE_FIX)
  pid = str(_int_field(playlist["pid"], file=path, row=row, column="pid"))
  if pid in acc.pid_row:
    first_file, first_row = acc.pid_row[pid]
    raise DataValidationError(
        f"playlist id {pid} repeats playlist {first_row} of {first_file}.",
        file=path, row=row, column="pid",
        fix="load each slice once: remove copies of slices from the folder.")
  acc.pid_row[pid] = (path, row)
  tracks = playlist.get("tracks") or []
  if not isinstance(tracks, list):
    raise DataValidationError(f"`tracks` of playlist {pid} should be a list.", file=path,
                              row=row, column="tracks", fix=_RESHAPE_FIX)
  declared = playlist.get("num_tracks")
  if declared is not None and _int_field(declared, file=path, row=row,
                                         column="num_tracks") != len(tracks):
    report.add("load", "num_tracks_mismatch", 1)
  if not tracks:
    report.add("load", "playlists_without_tracks", 1)
  p = acc.playlists
  p["user_id"].append(pid)
  p["name"].append(str(playlist.get("name") or ""))
  p["description"].append(str(playlist.get("description") or ""))
  p["collaborative"].append(parse_bool(playlist["collaborative"], file=path, row=row,
                                       column="collaborative")
                            if "collaborative" in playlist else False)
  for key in PLAYLIST_NUMBERS:
    value = playlist.get(key)
    p[key].append(np.nan if value is None else
                  _int_field(value, file=path, row=row, column=key))
  if not tracks:
    return
  items = np.empty(len(tracks), np.int64)
  pos = np.empty(len(tracks), np.int64)
  for i, track in enumerate(tracks):
    if not isinstance(track, dict) or not track.get("track_uri"):
      raise DataValidationError(
          f"track {i + 1} of playlist {pid} has no `track_uri`. Received: {track!r}.",
          file=path, row=row, column="track_uri", fix=_RESHAPE_FIX)
    uri = str(track["track_uri"])
    code = acc.track_code.get(uri)
    if code is None:
      code = acc.track_code[uri] = len(acc.track_rows)
      acc.track_rows.append((uri, str(track.get("track_name") or ""),
                             str(track.get("artist_name") or ""),
                             str(track.get("album_name") or ""),
                             str(track.get("artist_uri") or ""),
                             str(track.get("album_uri") or ""),
                             track.get("duration_ms")))
    items[i] = code
    if "pos" in track:
      pos[i] = _int_field(track["pos"], file=path, row=row, column="pos")
    else:
      pos[i] = i
      report.add("load", "tracks_without_pos", 1)
  acc.user_codes.append(np.full(len(tracks), acc.n_playlists - 1, np.int32))
  acc.item_codes.append(items.astype(np.int32))
  acc.positions.append(pos.astype(np.int32))


def _read_slice(acc: _Accumulator, path: str, report: DataReport, bad_slices: str) -> bool:
  """Parses one slice into `acc`; False when it was dropped (bad JSON, `drop`)."""
  try:
    text = canonical.read_bytes(path).decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataValidationError(f"the slice is not UTF-8 ({e.reason} at byte {e.start}).",
                              file=path, fix="re-download the file.") from None
  try:
    document = json.loads(text)
  except json.JSONDecodeError as e:
    error = _json_error(path, e, text)
    if bad_slices == "drop":
      report.add("load", "bad_slices_dropped", 1)
      report.record("load", **{"bad_slice_files": report.get("load", "bad_slice_files", [])
                               + [f"{path}: {error.problem}"]})
      return False
    raise error from None
  del text
  if not isinstance(document, dict) or not isinstance(document.get("playlists"), list):
    raise DataValidationError("the file has no `playlists` list.", file=path,
                              column="playlists", fix=_RESHAPE_FIX)
  start = acc.n_playlists
  for row, playlist in enumerate(document["playlists"], 1):
    _read_playlist(acc, playlist, path, row, report)
  report.add("load", "playlists", acc.n_playlists - start)
  return True


def load_mpd(data_dir: str, *, unknown_items: str = "error",
             report: Optional[DataReport] = None, bad_slices: str = "error",
             max_slices: Optional[int] = None,
             files: Optional[Sequence[str]] = None) -> Tables:
  """Loads a Million Playlist Dataset folder (slices and/or the challenge set).

  Args:
    data_dir: Folder of `mpd.slice.<a>-<b>.json` files and/or
      `challenge_set.json` (local or `tf.io.gfile`).
    unknown_items: Passed to `validate_tables` (every track of a playlist is
      in the items table, so nothing is ever unknown here).
    report: Data report to record counts in.
    bad_slices: `"error"` (default): a truncated or malformed slice stops
      the load, naming the file and position; `"drop"`: skip it and count it
      (`load/bad_slices_dropped`, `load/bad_slice_files`).
    max_slices: Read only the first n files (in numeric order).
    files: Read these file names of `data_dir` instead of listing it.

  Returns:
    Validated canonical tables (playlists are the users).

  Raises:
    FileNotFoundError: `data_dir` does not exist.
    DataValidationError: no slice in the folder, a bad slice (with
      `bad_slices="error"`), a playlist without `pid` or with a repeated one,
      a track without `track_uri`, a non-integer `pos` / `num_tracks`, or a
      `collaborative` value other than "true" / "false".
  """
  if bad_slices not in BAD_SLICE_POLICIES:
    raise ValueError(f"`bad_slices` should be one of {BAD_SLICE_POLICIES}. "
                     f"Received: `bad_slices` = {bad_slices!r}.")
  report = report if report is not None else DataReport()
  data_dir = str(data_dir)
  names = list(files) if files is not None else list_slices(data_dir)
  if max_slices is not None:
    names = names[:max_slices]
  for key in ("playlists", "num_tracks_mismatch", "playlists_without_tracks",
              "tracks_without_pos", "bad_slices_dropped"):
    report.add("load", key, 0)
  acc = _Accumulator()
  read = 0
  for name in names:
    read += _read_slice(acc, io.join(data_dir, name), report, bad_slices)
  report.record("load", source=f"mpd:{data_dir}", slices_read=read)
  if not acc.n_playlists:
    raise DataValidationError("no playlist was read.", file=data_dir,
                              fix="check that the slices are complete MPD files.")

  users = pd.DataFrame(acc.playlists)
  users["collaborative"] = users["collaborative"].astype(bool)
  for key in PLAYLIST_NUMBERS:
    if users[key].isna().all():
      users = users.drop(columns=key)
    elif not users[key].isna().any():
      users[key] = users[key].astype(np.int64)
  pids = users["user_id"].to_numpy(dtype=object)
  track_cols = list(zip(*acc.track_rows)) if acc.track_rows else [[]] * 7
  items = pd.DataFrame({"item_id": np.asarray(track_cols[0], dtype=object),
                        "title": np.asarray(track_cols[1], dtype=object),
                        "artist": np.asarray(track_cols[2], dtype=object),
                        "album": np.asarray(track_cols[3], dtype=object),
                        "artist_uri": np.asarray(track_cols[4], dtype=object),
                        "album_uri": np.asarray(track_cols[5], dtype=object)})
  durations = pd.to_numeric(pd.Series(track_cols[6], dtype=object), errors="coerce")
  if len(durations) and durations.notna().all():
    items["duration_ms"] = durations.astype(np.int64).to_numpy()
  if acc.user_codes:
    user_codes = np.concatenate(acc.user_codes)
    item_codes = np.concatenate(acc.item_codes)
    positions = np.concatenate(acc.positions).astype(np.int64)
  else:
    user_codes = item_codes = positions = np.zeros(0, np.int64)
  acc.user_codes = acc.item_codes = acc.positions = []
  user_ids = pids[user_codes]
  interactions = pd.DataFrame({"user_id": user_ids,
                               "item_id": items["item_id"].to_numpy()[item_codes],
                               "timestamp": positions, "playlist_id": user_ids})
  report.record("load", tracks=len(items), playlist_tracks=len(interactions))
  source = f"{data_dir} (mpd slices)"
  tables = Tables(interactions=interactions, items=items, users=users,
                  sources={"interactions": source, "items": source, "users": source},
                  name="mpd")
  return validate_tables(tables, unknown_items=unknown_items, report=report)
