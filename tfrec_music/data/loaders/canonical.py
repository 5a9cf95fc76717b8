"""Loader for the canonical folder format (CSV or Parquet).

A canonical folder holds `interactions.csv`, `items.csv`, `users.csv` and
`user_links.csv` (or the same names in `.parquet`) with the canonical column
names; only the interactions are required. Any table may instead be split into
shards named `<table>-*.<ext>` (e.g. `interactions-00000-of-00012.parquet`, as
the synthetic `large` preset writes them), read in sorted order.

The module also holds the file helpers the other file loaders share: strict
CSV reading (`read_csv_file`), Parquet reading, folder listing, and
`validate_with_origins`, which runs the one validation pass and rewrites its
errors so they name the shard, the source row and the source column.
"""

import csv
import dataclasses
import fnmatch
import io as pyio
import os
import re
import warnings
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import ROW_COLUMN
from tfrec_music.data.tables import TABLE_NAMES
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import rename_columns
from tfrec_music.data.tables import validate_tables
from tfrec_music.io import read_bytes

FORMATS = ("csv", "parquet")

_UTF8_FIX = ("save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`, "
             "or \"CSV UTF-8\" in a spreadsheet's Save As).")


# ----------------------------------------------------------------------------
# Row provenance: `_row` numbers of a concatenated table -> (file, row).


@dataclasses.dataclass
class _Segment:
  start: int  # first global `_row` of the segment
  stop: int  # one past the last
  file: str
  local_rows: Optional[np.ndarray]  # None: rows 1..n of `file`
  column: Optional[str]  # source column the rows came from, if not their own


class RowOrigins:
  """Maps the `_row` values of a table built from several sources back to them.

  A table concatenated from shards (or, in the Last.fm loader, grown with rows
  taken from another file) gets global `_row` numbers 1..N so that
  `validate_tables` can point at one row; `locate` turns such a number back
  into the file, that file's 1-based data row, and (for rows derived from a
  cell of another table) the source column.
  """

  def __init__(self):
    self._segments: List[_Segment] = []
    self._next = 1

  def add(self, file: str, n_rows: int, local_rows: Optional[np.ndarray] = None,
          column: Optional[str] = None) -> np.ndarray:
    """Registers `n_rows` rows of `file` and returns their global `_row` values.

    Args:
      file: Source file named in error messages.
      n_rows: Number of rows taken from it.
      local_rows: [n_rows] the file's data row of each row; default 1..n_rows.
      column: Source column the rows were derived from, when it is not the
        column the validation error names (e.g. `loved_tracks`).

    Returns:
      [n_rows] int64 global row numbers to store in the `_row` column.
    """
    start = self._next
    self._next += int(n_rows)
    if local_rows is not None:
      local_rows = np.asarray(local_rows, dtype=np.int64)
    self._segments.append(_Segment(start, self._next, file, local_rows, column))
    return np.arange(start, self._next, dtype=np.int64)

  def locate(self, row: int) -> Tuple[Optional[str], int, Optional[str]]:
    """Returns `(file, local_row, column)` for a global `_row` value."""
    for seg in self._segments:
      if seg.start <= row < seg.stop:
        offset = row - seg.start
        local = int(seg.local_rows[offset]) if seg.local_rows is not None else offset + 1
        return seg.file, local, seg.column
    return None, row, None


def validate_with_origins(tables: Tables, *, origins: Mapping[str, RowOrigins],
                          renamed: Mapping[str, Mapping[str, str]],
                          unknown_items: str = "error",
                          report: Optional[DataReport] = None) -> Tables:
  """Runs `validate_tables`, making its errors name the true source.

  Args:
    tables: Tables whose `_row` columns hold global row numbers of `origins`.
    origins: Table name -> where its rows came from.
    renamed: Table name -> {canonical column: source column} for columns the
      loader renamed, so errors name the column the user can find in the file.
    unknown_items: `"error"` or `"drop"`, as in `validate_tables`.
    report: Data report to record counts in.

  Returns:
    The validated tables.

  Raises:
    DataValidationError: as `validate_tables`, with file, row and column
      rewritten to the source file, its data row and its column.
  """
  try:
    return validate_tables(tables, unknown_items=unknown_items, report=report)
  except DataValidationError as e:
    table = next((t for t in TABLE_NAMES if tables.sources.get(t) == e.file), None)
    if table is None:
      raise
    file, row, column, problem = e.file, e.row, e.column, e.problem
    derived_from = None
    if row is not None and table in origins:
      located, row, derived_from = origins[table].locate(row)
      file = located or file
    source_column = renamed.get(table, {}).get(column) if column else None
    if derived_from is not None:
      problem = f"(an entry read as `{column}`) {problem}"
      column = derived_from
    elif source_column is not None:
      problem = f"(`{source_column}` is read as `{column}`) {problem}"
      column = source_column
    raise DataValidationError(problem, file=file, row=row, column=column,
                              fix=e.fix) from e


# ----------------------------------------------------------------------------
# Files.


def _is_local(path: str) -> bool:
  return "://" not in str(path)


def is_dir(path: str) -> bool:
  """True if `path` is a folder (local or `tf.io.gfile`)."""
  if _is_local(path):
    return os.path.isdir(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.isdir(path)


def list_dir(path: str) -> List[str]:
  """Sorted names of the entries of folder `path` (local or `tf.io.gfile`)."""
  if _is_local(path):
    return sorted(os.listdir(path))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def missing_folder_error(data_dir: str, what: str) -> FileNotFoundError:
  """A `FileNotFoundError` for a missing data folder, listing its parent."""
  parent = os.path.dirname(str(data_dir).rstrip("/")) or "."
  try:
    seen = list_dir(parent) if is_dir(parent) else None
  except Exception:  # pylint: disable=broad-except  (listing is only a hint)
    seen = None
  found = (f" Found in {parent}: {seen[:20]}" + (" ..." if len(seen) > 20 else "") + "."
           if seen is not None else f" The parent folder {parent} does not exist either.")
  try:
    state = "is a file, not a folder" if io.exists(data_dir) else "does not exist"
  except Exception:  # pylint: disable=broad-except
    state = "does not exist"
  return FileNotFoundError(
      f"`data_dir` should be a folder of {what}. Received: `data_dir` = "
      f"{str(data_dir)!r}, which {state}.{found} Fix: pass the folder that "
      "holds the files with `--data-dir`.")


def read_csv_file(path: str) -> pd.DataFrame:
  """Reads a UTF-8 CSV file with a header, every column as strings.

  Ids stay as written (`"007"` is not turned into `7`) and only empty cells are
  missing values (`NA`, `null` or `None` are kept as text: they are valid
  titles and user names). Rows whose number of fields differs from the header
  are errors, not silently padded or truncated as pandas would do.

  Args:
    path: Local or `tf.io.gfile` path.

  Returns:
    The frame, with header names stripped of spaces and a `_row` column holding
    each row's 1-based data row (the first row after the header is row 1).

  Raises:
    DataValidationError: the file is empty, is not valid UTF-8, has an
      unbalanced quote or a row with the wrong number of fields; the message
      names the file, the line and the data row.
  """
  data = None if _is_local(path) else read_bytes(path)

  def source():
    return path if data is None else pyio.BytesIO(data)

  try:
    with warnings.catch_warnings():
      # The field-count check below turns this warning into an error.
      warnings.simplefilter("ignore", pd.errors.ParserWarning)
      frame = pd.read_csv(source(), dtype=str, keep_default_na=False, na_values=[""],
                          encoding="utf-8", index_col=False, skip_blank_lines=True)
  except pd.errors.EmptyDataError:
    raise DataValidationError(
        "the file is empty (not even a header row).", file=path,
        fix="write a header row with the column names, e.g. `user_id,item_id`.") from None
  except UnicodeDecodeError as e:
    raise _encoding_error(path, data if data is not None else read_bytes(path), e) from None
  except pd.errors.ParserError as e:
    raise _structure_error(path, data if data is not None else read_bytes(path),
                           str(e)) from None
  n_fields = len(frame.columns)
  # pandas pads short rows with missing values and (with `index_col=False`)
  # drops extra trailing fields, both silently; Arrow's strict tokenizer is a
  # fast way to find out whether any row has the wrong number of fields.
  if _has_bad_field_count(source(), n_fields):
    raise _structure_error(path, data if data is not None else read_bytes(path), None)
  frame.columns = [str(c).strip() for c in frame.columns]
  frame[ROW_COLUMN] = np.arange(1, len(frame) + 1, dtype=np.int64)
  return frame


def _has_bad_field_count(source, n_fields: int) -> bool:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from pyarrow import csv as pa_csv  # pylint: disable=g-import-not-at-top
  bad = []

  def on_invalid(row):
    bad.append(row)
    return "skip"

  names = [f"c{i}" for i in range(n_fields)]
  try:
    reader = pa_csv.open_csv(
        source,
        read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True,
                                          invalid_row_handler=on_invalid),
        # Only the tokenizer matters here; converting one column keeps it cheap.
        convert_options=pa_csv.ConvertOptions(include_columns=names[:1],
                                              column_types={names[0]: pa.string()}))
    for _ in reader:
      if bad:
        return True
  except (pa.ArrowInvalid, StopIteration):
    # An empty body, or input pandas already accepted but Arrow cannot read:
    # pandas' reading stands.
    return bool(bad)
  return bool(bad)


def _records(text: str):
  """Yields `(data_row, start_line, end_line, fields)` of a CSV text, header excluded.

  Raises:
    csv.Error: the text is malformed (e.g. a quote is never closed); the
      exception gets `start_line` and `data_row` attributes.
  """
  reader = csv.reader(pyio.StringIO(text, newline=""), strict=True)
  start = 1
  data_row = 0
  header_seen = False
  while True:
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      e.start_line, e.data_row = start, data_row + (1 if header_seen else 0)
      raise
    end = reader.line_num
    if fields:  # pandas skips blank lines, so they are no data rows
      if not header_seen:
        header_seen = True
      else:
        data_row += 1
        yield data_row, start, end, fields
    start = end + 1


def _structure_error(path: str, data: bytes, parser_message: Optional[str]
                     ) -> DataValidationError:
  text = data.decode("utf-8-sig", errors="replace")
  try:
    n_fields = len(next(csv.reader(pyio.StringIO(text, newline="")), []))
    for data_row, start, end, fields in _records(text):
      if len(fields) != n_fields:
        lines = f"line {start}" if start == end else f"lines {start}-{end}"
        if len(fields) > n_fields:
          fix = ("quote fields that contain commas (`\"Hello, Goodbye\"`), or remove "
                 "the extra fields.")
        else:
          fix = (f"give every row the {n_fields} fields of the header (write an empty "
                 "field as nothing between two commas).")
        return DataValidationError(
            f"{lines}: expected {n_fields} fields (as in the header), saw "
            f"{len(fields)}.", file=path, row=data_row, fix=fix)
  except csv.Error as e:
    return DataValidationError(
        f"line {e.start_line}: malformed CSV ({e}); most likely a quote that is "
        "never closed.", file=path, row=e.data_row,
        fix=("close the quote opened on that line, or write a quote inside a quoted "
             "field as two quotes (`\"\"`)."))
  # The scan found nothing (a dialect difference): fall back on pandas' words.
  line = None
  if parser_message:
    match = re.search(r"line (\d+)", parser_message)
    if match:
      line = int(match.group(1))
    match = re.search(r"starting at row (\d+)", parser_message)
    if match:
      line = int(match.group(1)) + 1  # pandas counts these rows from 0
  where = f"line {line}: " if line else ""
  return DataValidationError(
      f"{where}malformed CSV ({(parser_message or 'wrong number of fields').strip()}).",
      file=path, fix="check quotes and the number of fields on that line.")


def _encoding_error(path: str, data: bytes, error: UnicodeDecodeError
                    ) -> DataValidationError:
  bad_line = None
  detail = ""
  for number, line in enumerate(data.split(b"\n"), 1):
    try:
      line.decode("utf-8")
    except UnicodeDecodeError as e:
      bad_line = number
      detail = f" (byte 0x{line[e.start]:02x} at character {e.start + 1} of the line)"
      break
  if bad_line is None:
    return DataValidationError(f"the file is not valid UTF-8 ({error}).", file=path,
                               fix=_UTF8_FIX)
  row = column = None
  text = data.decode("utf-8", errors="replace")
  try:
    header = next(csv.reader(pyio.StringIO(text, newline="")), [])
    for data_row, start, end, fields in _records(text):
      if start <= bad_line <= end:
        row = data_row
        # U+FFFD marks the undecodable bytes: name the field that holds them.
        hit = [i for i, f in enumerate(fields) if "\ufffd" in f]
        if hit and hit[0] < len(header):
          column = header[hit[0]].strip()
        break
  except csv.Error:
    pass
  return DataValidationError(
      f"line {bad_line}: the bytes are not valid UTF-8{detail}.", file=path, row=row,
      column=column, fix=_UTF8_FIX)


def read_parquet_file(path: str) -> pd.DataFrame:
  """Reads a Parquet file and adds the 1-based `_row` column.

  Raises:
    DataValidationError: the file cannot be read as Parquet.
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  try:
    if _is_local(path):
      frame = pd.read_parquet(path)
    else:
      frame = pd.read_parquet(pyio.BytesIO(read_bytes(path)))
  except (pa.ArrowException, OSError, ValueError) as e:
    raise DataValidationError(
        f"the file cannot be read as Parquet ({e}).", file=path,
        fix="check that the file is a complete Parquet file, or use `--data csv` for "
            "CSV files.") from None
  frame = frame.reset_index(drop=True)
  frame.columns = [str(c) for c in frame.columns]
  frame[ROW_COLUMN] = np.arange(1, len(frame) + 1, dtype=np.int64)
  return frame


def read_table_file(path: str, fmt: str) -> pd.DataFrame:
  """Reads one CSV or Parquet file with its `_row` column."""
  return read_csv_file(path) if fmt == "csv" else read_parquet_file(path)


# ----------------------------------------------------------------------------
# The canonical folder.


def _table_files(data_dir: str, names: List[str], table: str, ext: str) -> List[str]:
  single = f"{table}.{ext}"
  shards = sorted(n for n in names if fnmatch.fnmatch(n, f"{table}-*.{ext}"))
  if single in names and shards:
    raise DataValidationError(
        f"both {single} and {len(shards)} shard(s) {table}-*.{ext} are present, so "
        f"it is unclear which hold the {table}.", file=io.join(data_dir, single),
        fix="keep either the single file or the shards, not both.")
  return [single] if single in names else shards


def _read_table(data_dir: str, files: List[str], fmt: str, table: str,
                origins: RowOrigins) -> pd.DataFrame:
  frames = []
  columns = None
  for name in files:
    path = io.join(data_dir, name)
    frame = read_table_file(path, fmt)
    these = [c for c in frame.columns if c != ROW_COLUMN]
    if columns is None:
      columns = these
    elif set(these) != set(columns):
      raise DataValidationError(
          f"the shard's columns {these} differ from those of {files[0]} {columns}.",
          file=path,
          fix=f"write every {table} shard with the same columns.")
    frame[ROW_COLUMN] = origins.add(path, len(frame))
    frames.append(frame)
  if len(frames) == 1:
    return frames[0]
  return pd.concat(frames, ignore_index=True)


def load_canonical(data_dir: str, fmt: str = "csv",
                   columns: Optional[Mapping[str, str]] = None,
                   unknown_items: str = "error",
                   report: Optional[DataReport] = None) -> Tables:
  """Loads a canonical folder of CSV or Parquet tables.

  Reads `interactions.<ext>` (required), and `items`, `users`, `user_links`
  when present; any table may be sharded as `<table>-*.<ext>` (sorted,
  concatenated). In CSV every column is read as text, so ids such as `007`
  keep their leading zeros, and list columns (`tags`) are `|`-separated
  (`rock|indie`). Errors name the file (the shard, for sharded tables), the
  1-based data row (the first row after the header is row 1) and the column.

  Args:
    data_dir: Folder holding the files; local or any `tf.io.gfile` path
      (`gs://...`, `ram://...`).
    fmt: `"csv"` (default) or `"parquet"`.
    columns: Canonical name -> source column name, applied to every table
      (the CLI's `--columns user_id=username,item_id=track_name`). Each entry
      must name a column of at least one table.
    unknown_items: `"error"` (default) or `"drop"` for interactions whose item
      is not in the items table; drops are counted in the report.
    report: Data report to record load counts in.

  Returns:
    Validated canonical `Tables`.

  Raises:
    ValueError: `fmt` is not `csv` or `parquet`.
    FileNotFoundError: `data_dir` does not exist.
    DataValidationError: no interactions file, a malformed or non-UTF-8 file,
      a `columns` entry naming no column, or any check of `validate_tables`.
  """
  if fmt not in FORMATS:
    raise ValueError(f"`fmt` should be one of {FORMATS}. Received: `fmt` = {fmt!r}.")
  report = report if report is not None else DataReport()
  columns = dict(columns or {})
  data_dir = str(data_dir)
  if not is_dir(data_dir):
    raise missing_folder_error(data_dir, f"canonical {fmt} tables (interactions.{fmt}, ...)")
  names = list_dir(data_dir)
  found = {table: _table_files(data_dir, names, table, fmt) for table in TABLE_NAMES}
  if not found["interactions"]:
    other = "parquet" if fmt == "csv" else "csv"
    hint = ""
    if (f"interactions.{other}" in names
        or any(fnmatch.fnmatch(n, f"interactions-*.{other}") for n in names)):
      hint = f" The folder has {other} interactions: pass `--data {other}`."
    shown = names[:20] + (["..."] if len(names) > 20 else [])
    raise DataValidationError(
        f"no interactions file: expected interactions.{fmt} or shards "
        f"interactions-*.{fmt}. Found: {shown}.{hint}",
        file=io.join(data_dir, f"interactions.{fmt}"),
        fix=(f"put the interactions (columns `user_id`, `item_id`, ...) in "
             f"interactions.{fmt}, or point `--data-dir` at the right folder."))

  frames: Dict[str, Optional[pd.DataFrame]] = {}
  origins: Dict[str, RowOrigins] = {}
  renamed: Dict[str, Dict[str, str]] = {}
  sources: Dict[str, str] = {}
  for table in TABLE_NAMES:
    files = found[table]
    if not files:
      frames[table] = None
      continue
    origins[table] = RowOrigins()
    frame = _read_table(data_dir, files, fmt, table, origins[table])
    renamed[table] = {dst: src for dst, src in columns.items()
                      if src in frame.columns and src != dst}
    frame = rename_columns(frame, columns)
    dup = frame.columns[frame.columns.duplicated()].tolist()
    if dup:
      src = renamed[table].get(dup[0], dup[0])
      raise DataValidationError(
          f"mapping `{src}` onto `{dup[0]}` gives two `{dup[0]}` columns.",
          file=io.join(data_dir, files[0]), column=dup[0],
          fix=f"drop the `--columns {dup[0]}={src}` entry, or rename the existing "
              f"`{dup[0]}` column.")
    frames[table] = frame
    sources[table] = (io.join(data_dir, files[0]) if len(files) == 1 else
                      io.join(data_dir, f"{table}-*.{fmt}"))
  for dst, src in columns.items():
    if not any(f is not None and (src in f.columns or dst in renamed.get(t, {}))
               for t, f in frames.items()):
      present = {t: [c for c in f.columns if c != ROW_COLUMN]
                 for t, f in frames.items() if f is not None}
      raise DataValidationError(
          f"`--columns {dst}={src}`: no table has a column `{src}`. Columns "
          f"present: {present}.", file=data_dir, column=src,
          fix="map an existing column (names are case-sensitive), or drop the entry.")
  report.record("load", source=f"{fmt}:{data_dir}",
                interaction_files=len(found["interactions"]))
  tables = Tables(interactions=frames["interactions"], items=frames["items"],
                  users=frames["users"], user_links=frames["user_links"],
                  sources=sources, name=os.path.basename(data_dir.rstrip("/")) or fmt)
  return validate_with_origins(tables, origins=origins, renamed=renamed,
                               unknown_items=unknown_items, report=report)
