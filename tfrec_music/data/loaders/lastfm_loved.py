"""Loader for the Last.fm "loved tracks" export that small apps build from the API.

The export is a folder of three CSV files:

- `users.csv`: `name,realname,country,loved_tracks`, where `loved_tracks` is a
  Python-literal list of dicts such as
  `[{'track_name': 'Song', 'artist_name': 'Band'}]`.
- `items.csv`: `artistName,trackName,tags`, where `tags` is a Python-literal
  list (`['rock', 'indie']`) or a `|`- or comma-separated string.
- `interactions.csv`: `username,track_name,date_time` (Unix seconds).

Literals are parsed with `ast.literal_eval` only: a cell is data, never code.
"""

import ast
import logging
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.loaders import canonical
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import ROW_COLUMN
from tfrec_music.data.tables import Tables

FILES = ("users.csv", "items.csv", "interactions.csv")
_LOVED_EXAMPLE = "[{'track_name': 'Song', 'artist_name': 'Band'}]"


def _require(frame: pd.DataFrame, path: str, names: List[str]) -> None:
  present = [c for c in frame.columns if c != ROW_COLUMN]
  for name in names:
    if name not in frame.columns:
      raise DataValidationError(
          f"required column `{name}` of the Last.fm loved-tracks export is missing "
          f"(columns present: {present}).", file=path, column=name,
          fix=(f"this loader reads {', '.join(FILES)} as written by the Last.fm "
               "export; for other layouts use `--data csv` with `--columns`."))


# Columns each file's reader uses; any other column is listed in the data
# report (`ignored_columns`) so a misspelt optional column is not lost silently.
READ_COLUMNS = {"users.csv": ("name", "country", "loved_tracks"),
                "items.csv": ("trackName", "artistName", "tags"),
                "interactions.csv": ("username", "track_name", "date_time")}


def _note_ignored(frame: pd.DataFrame, name: str, report: DataReport) -> None:
  """Records (and logs) the columns of `name` that this loader does not read."""
  ignored = [str(c) for c in frame.columns if c != ROW_COLUMN and c not in READ_COLUMNS[name]]
  if ignored:
    logging.info("lastfm-loved: %s columns not read: %s (read: %s)", name, ignored,
                 list(READ_COLUMNS[name]))
    report.record("load", ignored_columns={**report.get("load", "ignored_columns", {}),
                                           name: ignored})


def _is_missing(value) -> bool:
  return value is None or (isinstance(value, float) and np.isnan(value))


def _literal(text: str, path: str, row: int, column: str, fix: str):
  try:
    # Never `eval`: literal_eval accepts only Python literals, so a cell such
    # as `__import__('os')` is rejected, not run.
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise DataValidationError(
        f"cell is not a Python literal ({type(e).__name__}). Received: {shown!r}.",
        file=path, row=row, column=column, fix=fix) from None


def parse_loved_tracks(cell, path: str, row: int) -> List[Dict[str, str]]:
  """Parses one `loved_tracks` cell into a list of `{track_name, artist_name}`.

  Args:
    cell: The cell text (an empty cell means no loved tracks).
    path: File named in errors.
    row: 1-based data row named in errors.

  Returns:
    The entries, with names stripped of surrounding spaces.

  Raises:
    DataValidationError: the cell is not a literal list of dicts with string
      `track_name` and `artist_name` values.
  """
  if _is_missing(cell) or not str(cell).strip():
    return []
  fix = f"write `loved_tracks` as a Python list of dicts, e.g. `{_LOVED_EXAMPLE}`."
  value = _literal(str(cell), path, row, "loved_tracks", fix)
  if not isinstance(value, (list, tuple)):
    raise DataValidationError(
        f"`loved_tracks` should be a list of dicts. Received: a {type(value).__name__}.",
        file=path, row=row, column="loved_tracks", fix=fix)
  out = []
  for position, entry in enumerate(value, 1):
    if not isinstance(entry, dict):
      raise DataValidationError(
          f"entry {position} of `loved_tracks` should be a dict. Received: {entry!r}.",
          file=path, row=row, column="loved_tracks", fix=fix)
    for key in ("track_name", "artist_name"):
      if not isinstance(entry.get(key), str) or (key == "track_name"
                                                 and not entry[key].strip()):
        raise DataValidationError(
            f"entry {position} of `loved_tracks` should have a non-empty string "
            f"`{key}`. Received: {entry!r}.",
            file=path, row=row, column="loved_tracks", fix=fix)
    out.append({"track_name": entry["track_name"].strip(),
                "artist_name": entry["artist_name"].strip()})
  return out


def parse_tags(cell, path: str, row: int) -> List[str]:
  """Parses an items.csv `tags` cell: a literal list, or a `|`/comma-separated string.

  Raises:
    DataValidationError: the cell looks like a list literal (`[...]`) but is
      not a valid list.
  """
  if _is_missing(cell):
    return []
  text = str(cell).strip()
  if not text:
    return []
  if text.startswith("["):
    fix = "write `tags` as a list literal (`['rock', 'indie']`) or as `rock|indie`."
    value = _literal(text, path, row, "tags", fix)
    if not isinstance(value, (list, tuple)):
      raise DataValidationError(
          f"`tags` should be a list. Received: {value!r}.", file=path, row=row,
          column="tags", fix=fix)
    return [str(t).strip() for t in value if t is not None and str(t).strip()]
  sep = "|" if "|" in text else ","
  return [t.strip() for t in text.split(sep) if t.strip()]


def load_lastfm_loved(data_dir: str, unknown_items: str = "error",
                      report: Optional[DataReport] = None) -> Tables:
  """Loads a Last.fm loved-tracks export into canonical tables.

  Mapping:

  - users: `user_id` = `username` = `name`; `country`.
  - items: `item_id` = `title` = `trackName` (interactions know tracks only
    by name), `artist` = `artistName`, `tags` (list of strings). Rows of
    items.csv that repeat a `trackName` (the export lists a title once per
    artist that has it) keep the first row; the others are counted in the
    report as `load/duplicate_item_rows_dropped`.
  - interactions: `user_id` = `username`, `item_id` = `track_name`,
    `timestamp` = `date_time` (Unix seconds).

  Loved tracks of users.csv with no row in interactions.csv are added as
  interactions with `timestamp` 0, i.e. older than every real play, so a
  temporal split never makes them test items; they are counted in the report
  as `load/loved_only_pairs_added`. Loved tracks are matched by track name
  (their artist is not used, as interactions carry no artist).

  Args:
    data_dir: Folder of users.csv, items.csv and interactions.csv (local or
      `tf.io.gfile`). Each file is optional, but users.csv or interactions.csv
      must be present.
    unknown_items: `"error"` (default) or `"drop"` for interactions whose track
      is not in items.csv; drops are counted in the report.
    report: Data report to record load counts in.

  Returns:
    Validated canonical `Tables`.

  Raises:
    FileNotFoundError: `data_dir` does not exist.
    DataValidationError: neither users.csv nor interactions.csv exists, a
      required column is missing, a `loved_tracks` or `tags` literal is
      malformed, a CSV is malformed, or any check of `validate_tables`.
  """
  report = report if report is not None else DataReport()
  data_dir = str(data_dir)
  if not canonical.is_dir(data_dir):
    raise canonical.missing_folder_error(data_dir, f"a Last.fm loved-tracks export "
                                         f"({', '.join(FILES)})")
  names = canonical.list_dir(data_dir)
  if "users.csv" not in names and "interactions.csv" not in names:
    raise DataValidationError(
        f"neither users.csv nor interactions.csv is in the folder. Found: {names[:20]}.",
        file=io.join(data_dir, "interactions.csv"),
        fix=("point `--data-dir` at the folder of the Last.fm export "
             f"({', '.join(FILES)})."))
  paths = {name: io.join(data_dir, name) for name in FILES}
  origins = {"interactions": canonical.RowOrigins()}
  renamed = {"interactions": {"user_id": "username", "item_id": "track_name",
                              "timestamp": "date_time"},
             "items": {"item_id": "trackName", "artist": "artistName"},
             "users": {"user_id": "name"}}

  users = None
  loved_rows = []  # (user_id, track_name, users.csv row)
  if "users.csv" in names:
    path = paths["users.csv"]
    raw = canonical.read_csv_file(path)
    _note_ignored(raw, "users.csv", report)
    _require(raw, path, ["name"])
    users = pd.DataFrame({"user_id": raw["name"], "username": raw["name"]})
    if "country" in raw.columns:
      users["country"] = raw["country"]
    users[ROW_COLUMN] = raw[ROW_COLUMN].to_numpy()
    if "loved_tracks" in raw.columns:
      for name, cell, row in zip(raw["name"], raw["loved_tracks"], raw[ROW_COLUMN]):
        for entry in parse_loved_tracks(cell, path, int(row)):
          user = "" if _is_missing(name) else str(name).strip()
          loved_rows.append((user, entry["track_name"], int(row)))

  items = None
  if "items.csv" in names:
    path = paths["items.csv"]
    raw = canonical.read_csv_file(path)
    _note_ignored(raw, "items.csv", report)
    _require(raw, path, ["trackName"])
    track = raw["trackName"].fillna("").astype(str).str.strip()
    keep = ~track.duplicated().to_numpy()
    report.add("load", "duplicate_item_rows_dropped", int((~keep).sum()))
    raw = raw[keep]
    items = pd.DataFrame({"item_id": track[keep].to_numpy(),
                          "title": track[keep].to_numpy()})
    if "artistName" in raw.columns:
      items["artist"] = raw["artistName"].to_numpy()
    if "tags" in raw.columns:
      items["tags"] = [parse_tags(cell, path, int(row))
                       for cell, row in zip(raw["tags"], raw[ROW_COLUMN])]
    items[ROW_COLUMN] = raw[ROW_COLUMN].to_numpy()

  columns = ["user_id", "item_id", ROW_COLUMN]
  if "interactions.csv" in names:
    path = paths["interactions.csv"]
    raw = canonical.read_csv_file(path)
    _note_ignored(raw, "interactions.csv", report)
    _require(raw, path, ["username", "track_name"])
    interactions = pd.DataFrame({"user_id": raw["username"], "item_id": raw["track_name"]})
    if "date_time" in raw.columns:
      interactions["timestamp"] = raw["date_time"]
      columns.insert(2, "timestamp")
    interactions[ROW_COLUMN] = origins["interactions"].add(path, len(raw))
  else:
    interactions = pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    interactions["timestamp"] = pd.Series([], dtype=object)
    columns.insert(2, "timestamp")

  # Loved-only pairs: a love is a strong positive even without a logged play.
  seen = set(zip(interactions["user_id"].fillna("").astype(str).str.strip(),
                 interactions["item_id"].fillna("").astype(str).str.strip()))
  added = []
  for user, track, row in loved_rows:
    if (user, track) not in seen:
      seen.add((user, track))
      added.append((user, track, row))
  report.add("load", "loved_only_pairs_added", len(added))
  if added:
    extra = pd.DataFrame({"user_id": [a[0] for a in added],
                          "item_id": [a[1] for a in added]})
    if "timestamp" in columns:
      extra["timestamp"] = "0"
    extra[ROW_COLUMN] = origins["interactions"].add(
        paths["users.csv"], len(added), local_rows=np.array([a[2] for a in added]),
        column="loved_tracks")
    interactions = pd.concat([interactions.astype(object), extra.astype(object)],
                             ignore_index=True)

  if items is None:
    report.add("load", "duplicate_item_rows_dropped", 0)
  # Without interactions.csv every interaction comes from a loved_tracks cell.
  inter_source = (paths["interactions.csv"] if "interactions.csv" in names
                  else f"{paths['users.csv']} (loved_tracks)")
  sources = {"interactions": inter_source, "items": paths["items.csv"],
             "users": paths["users.csv"]}
  report.record("load", source=f"lastfm-loved:{data_dir}")
  tables = Tables(interactions=interactions[columns], items=items, users=users,
                  sources=sources, name="lastfm-loved")
  return canonical.validate_with_origins(tables, origins=origins, renamed=renamed,
                                         unknown_items=unknown_items, report=report)
