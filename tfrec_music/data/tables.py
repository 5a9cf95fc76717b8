"""The canonical tables every loader returns, and the one validation pass.

The canonical format has four tables: `interactions`, `items`, `users`, `user_links`.
Every source (CSV folders, Last.fm exports, TFDS, the synthetic catalogue) is
read into a `Tables` and goes through `validate_tables`, which either returns
clean, typed frames or raises a `DataValidationError` that names the file, the
row and the column and says how to fix the input.

Rows carry their provenance in an optional `_row` column (the 1-based data row
of the source file, or whatever the loader wants reported); validation uses it
in messages and drops it from the returned frames.
"""

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from tfrec_music.data.report import DataReport

TABLE_NAMES = ("interactions", "items", "users", "user_links")

REQUIRED_COLUMNS: Dict[str, Sequence[str]] = {
    "interactions": ("user_id", "item_id"),
    "items": ("item_id",),
    "users": ("user_id",),
    "user_links": ("user_id", "other_user_id"),
}

STRING_COLUMNS = ("user_id", "item_id", "other_user_id", "playlist_id", "title",
                  "artist", "album", "genre", "parent_genre", "text", "country",
                  "username")
LIST_COLUMNS = ("tags",)
# Numeric audio features of the canonical `items`; any other numeric column is
# treated as a numeric feature too.
AUDIO_FEATURES = ("danceability", "energy", "loudness", "speechiness",
                  "acousticness", "instrumentalness", "liveness", "valence",
                  "tempo")

UNKNOWN_POLICIES = ("error", "drop")

ROW_COLUMN = "_row"


class DataValidationError(ValueError):
  """Bad input data, with the file, row and column and how to fix it.

  Attributes:
    file: Source file (or table name when the data came from memory).
    row: 1-based data row of the source, when one row is at fault.
    column: Offending column name.
    fix: A sentence saying how to fix the input.
  """

  def __init__(self, problem: str, *, file: Optional[str] = None,
               row: Optional[int] = None, column: Optional[str] = None,
               fix: Optional[str] = None):
    self.file = file
    self.row = row
    self.column = column
    self.problem = problem
    self.fix = fix
    where = []
    if file is not None:
      where.append(str(file))
    if row is not None:
      where.append(f"row {row}")
    if column is not None:
      where.append(f"column `{column}`")
    message = (", ".join(where) + ": " if where else "") + problem
    if fix:
      message += f" Fix: {fix}"
    super().__init__(message)


@dataclasses.dataclass
class Tables:
  """The canonical tables of one data set.

  Attributes:
    interactions: `user_id`, `item_id` (strings); optional `timestamp` (int
      seconds), `rating` (float), `weight` (play count), `playlist_id`.
    items: `item_id`; optional content columns (title, artist, album, tags,
      genre, parent_genre, genre_level, text, numeric audio features).
    users: `user_id`; optional `country`, `username`, ...
    user_links: `user_id`, `other_user_id` (friendships).
    sources: Table name -> file name used in error messages.
    name: Short name of the data set (e.g. `"synthetic"`).
  """

  interactions: pd.DataFrame
  items: Optional[pd.DataFrame] = None
  users: Optional[pd.DataFrame] = None
  user_links: Optional[pd.DataFrame] = None
  sources: Dict[str, str] = dataclasses.field(default_factory=dict)
  name: str = "data"

  def source(self, table: str) -> str:
    """Returns the file name reported for `table` in error messages."""
    return self.sources.get(table, f"<{table} table>")

  def summary(self) -> Dict[str, int]:
    """Row counts of every table present."""
    out = {}
    for table in TABLE_NAMES:
      frame = getattr(self, table)
      if frame is not None:
        out[table] = int(len(frame))
    return out


def rename_columns(frame: pd.DataFrame, mapping: Mapping[str, str]) -> pd.DataFrame:
  """Renames source columns onto canonical names.

  Args:
    frame: A loaded table.
    mapping: Canonical name -> source column name (as in the CLI flag
      `--columns user_id=username,item_id=track_name`). Entries whose source
      column is absent are ignored, so one mapping serves several tables.

  Returns:
    The frame with renamed columns.
  """
  sources = [src for src in mapping.values()]
  repeated = sorted({src for src in sources if sources.count(src) > 1})
  if repeated:
    raise ValueError(f"`--columns` maps several canonical names onto the same source column "
                     f"`{repeated[0]}`. Map each source column once.")
  rename = {src: dst for dst, src in mapping.items() if src in frame.columns and src != dst}
  return frame.rename(columns=rename) if rename else frame


def parse_column_mapping(text: str) -> Dict[str, str]:
  """Parses `user_id=username,item_id=track_name` into a dict.

  Raises:
    ValueError: An entry is not of the form `canonical=source`.
  """
  mapping = {}
  if not text:
    return mapping
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    if "=" not in part:
      raise ValueError(
          "`--columns` entries must look like `canonical=source`, e.g. "
          f"`user_id=username,item_id=track_name`. Received: `{part}`.")
    dst, src = (s.strip() for s in part.split("=", 1))
    if not dst or not src:
      raise ValueError(f"`--columns` entry `{part}` has an empty side.")
    mapping[dst] = src
  return mapping


def split_list_cell(value) -> List[str]:
  """Turns a CSV list cell (`rock|indie`) or a sequence into a list of strings."""
  if value is None:
    return []
  if isinstance(value, float) and math.isnan(value):
    return []
  if isinstance(value, str):
    return [t.strip() for t in value.split("|") if t.strip()]
  if isinstance(value, (list, tuple, np.ndarray)):
    return [str(t) for t in value if t is not None and str(t) != ""]
  return [str(value)]


def _row_of(frame: pd.DataFrame, position: int) -> int:
  if ROW_COLUMN in frame.columns:
    return int(frame[ROW_COLUMN].iloc[position])
  return position + 1


def _check_required(frame: pd.DataFrame, table: str, file: str,
                    allow_empty: bool = False) -> None:
  missing = [c for c in REQUIRED_COLUMNS[table] if c not in frame.columns]
  if missing:
    present = [c for c in frame.columns if c != ROW_COLUMN]
    raise DataValidationError(
        f"required column `{missing[0]}` is missing from the {table} table "
        f"(columns present: {present}).",
        file=file, column=missing[0],
        fix=(f"add a `{missing[0]}` column, or map an existing column onto it "
             f"with `--columns {missing[0]}=<your column>`."))
  if len(frame) == 0 and not allow_empty:
    raise DataValidationError(
        f"the {table} table is empty.", file=file,
        fix=f"give at least one {table} row, or leave the file out if it is optional.")


def _check_ids(frame: pd.DataFrame, column: str, file: str) -> pd.Series:
  values = frame[column]
  null = values.isna().to_numpy()
  as_str = values.astype(str).str.strip()
  empty = null | (as_str == "").to_numpy()
  if empty.any():
    pos = int(np.argmax(empty))
    raise DataValidationError(
        "id is empty.", file=file, row=_row_of(frame, pos), column=column,
        fix=f"give every row a non-empty `{column}`, or remove the row.")
  return as_str


def _check_numeric(frame: pd.DataFrame, column: str, file: str, *,
                   integer: bool = False, non_negative: bool = False,
                   allow_missing: bool = False) -> pd.Series:
  raw = frame[column]
  values = pd.to_numeric(raw, errors="coerce")
  if integer and values.dtype.kind in "iu":
    # Exact integer path: float64 would round values above 2**53.
    ints = values.to_numpy().astype(np.int64)
    if non_negative and (ints < 0).any():
      pos = int(np.argmax(ints < 0))
      raise DataValidationError(
          f"value must not be negative. Received: {raw.iloc[pos]!r}.",
          file=file, row=_row_of(frame, pos), column=column,
          fix=f"`{column}` counts or times must be >= 0.")
    return pd.Series(ints, index=frame.index)
  bad = values.isna().to_numpy() & ~(raw.isna().to_numpy() & allow_missing)
  if bad.any():
    pos = int(np.argmax(bad))
    raise DataValidationError(
        f"value is not a number. Received: {raw.iloc[pos]!r}.",
        file=file, row=_row_of(frame, pos), column=column,
        fix=f"write `{column}` as a plain number (e.g. `4` or `3.5`).")
  arr = values.to_numpy(dtype=np.float64)
  finite = np.isfinite(arr) | (np.isnan(arr) & allow_missing)
  if not finite.all():
    pos = int(np.argmax(~finite))
    raise DataValidationError(
        f"value must be finite. Received: {arr[pos]!r}.",
        file=file, row=_row_of(frame, pos), column=column,
        fix=f"replace NaN/inf in `{column}` with a real number, or remove the row.")
  if non_negative:
    neg = arr < 0
    if neg.any():
      pos = int(np.argmax(neg))
      raise DataValidationError(
          f"value must not be negative. Received: {raw.iloc[pos]!r}.",
          file=file, row=_row_of(frame, pos), column=column,
          fix=f"`{column}` counts or times must be >= 0.")
  if integer:
    frac = np.isfinite(arr) & (np.floor(arr) != arr)
    if frac.any():
      pos = int(np.argmax(frac))
      raise DataValidationError(
          f"value must be a whole number. Received: {raw.iloc[pos]!r}.",
          file=file, row=_row_of(frame, pos), column=column,
          fix=(f"write `{column}` as integer seconds since the Unix epoch "
               "(e.g. `1700000000`)."))
    return pd.Series(arr.astype(np.int64), index=frame.index)
  return pd.Series(arr, index=frame.index)


def _check_unique(frame: pd.DataFrame, column: str, entity: str, file: str) -> None:
  dup = frame[column].duplicated().to_numpy()
  if dup.any():
    pos = int(np.argmax(dup))
    value = frame[column].iloc[pos]
    first = int(np.argmax((frame[column] == value).to_numpy()))
    raise DataValidationError(
        f"duplicate {entity} id {value!r} (first seen at row {_row_of(frame, first)}).",
        file=file, row=_row_of(frame, pos), column=column,
        fix=f"give each {entity} exactly one row in the {entity}s table.")


def _validate_interactions(frame: pd.DataFrame, file: str) -> pd.DataFrame:
  _check_required(frame, "interactions", file)
  out = frame.copy()
  for column in ("user_id", "item_id"):
    out[column] = _check_ids(out, column, file)
  if "playlist_id" in out.columns:
    # An empty playlist id means "not from a playlist", never the text "nan".
    out["playlist_id"] = out["playlist_id"].fillna("").astype(str)
  if "timestamp" in out.columns:
    out["timestamp"] = _check_numeric(out, "timestamp", file, integer=True,
                                      non_negative=True)
  if "rating" in out.columns:
    out["rating"] = _check_numeric(out, "rating", file).astype(np.float32)
  if "weight" in out.columns:
    out["weight"] = _check_numeric(out, "weight", file, non_negative=True).astype(np.float32)
  return out


def _validate_items(frame: pd.DataFrame, file: str) -> pd.DataFrame:
  _check_required(frame, "items", file)
  out = frame.copy()
  out["item_id"] = _check_ids(out, "item_id", file)
  _check_unique(out, "item_id", "item", file)
  for column in out.columns:
    if column in LIST_COLUMNS:
      out[column] = [split_list_cell(v) for v in out[column]]
    elif column in STRING_COLUMNS:
      out[column] = out[column].fillna("").astype(str)
    elif column == "genre_level":
      out[column] = _check_numeric(out, column, file, integer=True, non_negative=True)
    elif column in AUDIO_FEATURES:
      out[column] = _check_numeric(out, column, file, allow_missing=True).astype(np.float32)
  return out


def _validate_users(frame: pd.DataFrame, file: str) -> pd.DataFrame:
  _check_required(frame, "users", file)
  out = frame.copy()
  out["user_id"] = _check_ids(out, "user_id", file)
  _check_unique(out, "user_id", "user", file)
  for column in out.columns:
    if column in STRING_COLUMNS and column != "user_id":
      out[column] = out[column].fillna("").astype(str)
  return out


def _validate_links(frame: pd.DataFrame, file: str) -> pd.DataFrame:
  _check_required(frame, "user_links", file)
  out = frame.copy()
  for column in ("user_id", "other_user_id"):
    out[column] = _check_ids(out, column, file)
  return out


def validate_tables(tables: Tables, *, unknown_items: str = "error",
                    report: Optional[DataReport] = None) -> Tables:
  """Validates and types the canonical tables; the one pass every loader uses.

  Checks: required columns, empty tables, empty ids, non-numeric or non-finite
  ratings and weights, negative or fractional timestamps, duplicate item or
  user ids, and interactions whose item is missing from `items`.

  Args:
    tables: Tables as read by a loader (may carry a `_row` column).
    unknown_items: What to do with interactions whose `item_id` is absent from
      a present `items` table: `"error"` (default) or `"drop"` (dropped rows
      are counted in the report under `validation/unknown_item_rows_dropped`).
    report: Data report to record counts in.

  Returns:
    New `Tables` with typed columns and no `_row` column.

  Raises:
    DataValidationError: naming the file, row and column, with a fix.
    ValueError: `unknown_items` is not a known policy.
  """
  if unknown_items not in UNKNOWN_POLICIES:
    raise ValueError(f"`unknown_items` should be one of {UNKNOWN_POLICIES}. "
                     f"Received: `unknown_items` = {unknown_items!r}.")
  report = report if report is not None else DataReport()
  if tables.interactions is None:
    raise DataValidationError("no interactions table was given.",
                              file=tables.source("interactions"),
                              fix="every data set needs interactions (user_id, item_id).")
  interactions = _validate_interactions(tables.interactions, tables.source("interactions"))
  items = users = links = None
  if tables.items is not None:
    items = _validate_items(tables.items, tables.source("items"))
    known = interactions["item_id"].isin(set(items["item_id"])).to_numpy()
    if not known.all():
      pos = int(np.argmax(~known))
      n_bad = int((~known).sum())
      if unknown_items == "error":
        raise DataValidationError(
            f"item id {interactions['item_id'].iloc[pos]!r} is not in the items "
            f"table ({tables.source('items')}); {n_bad} interaction rows refer "
            "to unknown items.",
            file=tables.source("interactions"), row=_row_of(interactions, pos),
            column="item_id",
            fix=("add the missing items to the items table, or pass "
                 "`--unknown-items drop` to drop such rows (they are counted "
                 "in the data report)."))
      interactions = interactions[known].reset_index(drop=True)
      report.add("validation", "unknown_item_rows_dropped", n_bad)
  if tables.users is not None:
    users = _validate_users(tables.users, tables.source("users"))
  if tables.user_links is not None and len(tables.user_links):
    links = _validate_links(tables.user_links, tables.source("user_links"))
  elif tables.user_links is not None:
    # No friendships is valid, but the columns must still be right.
    _check_required(tables.user_links, "user_links", tables.source("user_links"),
                    allow_empty=True)
    links = tables.user_links

  def _strip(frame):
    if frame is not None and ROW_COLUMN in frame.columns:
      return frame.drop(columns=[ROW_COLUMN])
    return frame

  out = Tables(interactions=_strip(interactions).reset_index(drop=True),
               items=_strip(items), users=_strip(users), user_links=_strip(links),
               sources=dict(tables.sources), name=tables.name)
  report.record("load", **{f"{k}_rows": v for k, v in out.summary().items()})
  return out
