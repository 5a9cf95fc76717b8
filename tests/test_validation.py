"""Every validation case, through real files read by `load_canonical`.

Each test writes a small canonical folder, loads it, and checks that the error
names the file, the 1-based data row (the first row after the header is row 1)
and the column, both as attributes and in the message a user reads.
"""

import os

import pytest

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music.data.loaders import load_canonical
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError

GOOD_ITEMS = "item_id,title\nt1,one\nt2,two\n"


def _write(folder, **files):
  for name, content in files.items():
    path = folder / name.replace("__", ".")
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content, encoding="utf-8")


def _error(folder, **kwargs) -> DataValidationError:
  with pytest.raises(DataValidationError) as info:
    load_canonical(str(folder), **kwargs)
  return info.value


def _assert_names(error, file, row, column):
  """The error points at `file`, `row` and `column`, in attributes and in words."""
  message = str(error)
  assert os.path.basename(error.file) == file, message
  assert file in message
  assert error.row == row, message
  if row is not None:
    assert f"row {row}" in message
  assert error.column == column, message
  if column is not None:
    assert f"column `{column}`" in message
  assert "Fix:" in message


def test_missing_required_column(tmp_path):
  _write(tmp_path, interactions__csv="user,item_id\nu1,t1\n")
  error = _error(tmp_path)
  # A missing column is not one row's fault: no row is named.
  _assert_names(error, "interactions.csv", None, "user_id")
  assert "--columns user_id=" in str(error)


def test_missing_required_column_of_items(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\n",
         items__csv="id,title\nt1,one\n")
  _assert_names(_error(tmp_path), "items.csv", None, "item_id")


def test_non_numeric_rating(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id,rating\nu1,t1,4\nu2,t2,lots\n")
  error = _error(tmp_path)
  _assert_names(error, "interactions.csv", 2, "rating")
  assert "'lots'" in str(error)


def test_empty_rating_cell_is_an_error(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id,rating\nu1,t1,\nu2,t2,3\n")
  _assert_names(_error(tmp_path), "interactions.csv", 1, "rating")


@pytest.mark.parametrize("column,value", [("rating", "nan"), ("rating", "inf"),
                                          ("rating", "-inf"), ("weight", "NaN"),
                                          ("weight", "inf")])
def test_nan_or_inf_rating_or_weight(tmp_path, column, value):
  _write(tmp_path, interactions__csv=(f"user_id,item_id,{column}\nu1,t1,1\nu2,t2,2\n"
                                      f"u3,t3,{value}\n"))
  _assert_names(_error(tmp_path), "interactions.csv", 3, column)


def test_negative_weight(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id,weight\nu1,t1,-2\n")
  _assert_names(_error(tmp_path), "interactions.csv", 1, "weight")


def test_negative_timestamp(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id,timestamp\nu1,t1,5\nu2,t2,-1\n")
  error = _error(tmp_path)
  _assert_names(error, "interactions.csv", 2, "timestamp")
  assert "negative" in str(error)


def test_non_integer_timestamp(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id,timestamp\nu1,t1,1700000000.5\n")
  error = _error(tmp_path)
  _assert_names(error, "interactions.csv", 1, "timestamp")
  assert "whole number" in str(error)


def test_empty_interactions_table(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\n")
  error = _error(tmp_path)
  _assert_names(error, "interactions.csv", None, None)
  assert "empty" in str(error)


def test_empty_file_without_header(tmp_path):
  _write(tmp_path, interactions__csv="")
  error = _error(tmp_path)
  _assert_names(error, "interactions.csv", None, None)
  assert "header" in str(error)


def test_empty_id(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\n  ,t2\n")
  _assert_names(_error(tmp_path), "interactions.csv", 2, "user_id")


def test_duplicate_item_ids(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\n",
         items__csv="item_id,title\nt1,one\nt2,two\nt1,again\n")
  error = _error(tmp_path)
  _assert_names(error, "items.csv", 3, "item_id")
  assert "first seen at row 1" in str(error)


def test_duplicate_user_ids(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\n",
         users__csv="user_id,country\nu1,UK\nu1,US\n")
  _assert_names(_error(tmp_path), "users.csv", 2, "user_id")


def test_unknown_items_error(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\nu1,t9\nu2,t8\n",
         items__csv=GOOD_ITEMS)
  error = _error(tmp_path)
  _assert_names(error, "interactions.csv", 2, "item_id")
  assert "'t9'" in str(error) and "2 interaction rows" in str(error)
  assert "--unknown-items drop" in str(error)


def test_unknown_items_drop_is_counted(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\nu1,t9\nu2,t8\nu2,t2\n",
         items__csv=GOOD_ITEMS)
  report = DataReport()
  tables = load_canonical(str(tmp_path), unknown_items="drop", report=report)
  assert tables.interactions["item_id"].tolist() == ["t1", "t2"]
  assert report.get("validation", "unknown_item_rows_dropped") == 2
  assert report.get("load", "interactions_rows") == 2


def test_unknown_policy_is_checked(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\n")
  with pytest.raises(ValueError, match="`unknown_items` should be one of"):
    load_canonical(str(tmp_path), unknown_items="ignore")


@pytest.mark.parametrize("body,row,line,words", [
    # Too many fields (an unquoted comma).
    ("u1,t1,4\nu2,Hello, Goodbye,5\nu3,t3,1\n", 2, 3, "expected 3 fields"),
    # Too few fields: pandas would silently pad it with a missing value.
    ("u1,t1,4\nu2,t2,5\nu3,t3\n", 3, 4, "saw 2"),
    # Every row one field too many: pandas would silently make column 1 the index.
    ("u1,t1,4,x\nu2,t2,5,y\n", 1, 2, "saw 4"),
    # A quote that is never closed.
    ("u1,t1,4\nu2,\"t2,5\nu3,t3,1\n", 2, 3, "quote"),
])
def test_malformed_csv_line(tmp_path, body, row, line, words):
  _write(tmp_path, interactions__csv="user_id,item_id,rating\n" + body)
  error = _error(tmp_path)
  # A malformed line is a fault of the whole record, not of one column.
  _assert_names(error, "interactions.csv", row, None)
  assert f"line {line}" in str(error) and words in str(error)


def test_malformed_line_after_a_multiline_field_counts_records(tmp_path):
  # The quoted title spans two lines, so data row 2 starts on line 4.
  _write(tmp_path, interactions__csv="user_id,item_id\n",
         items__csv='item_id,title\nt1,"two\nlines"\nt2,x,extra\n')
  error = _error(tmp_path)
  _assert_names(error, "items.csv", 2, None)
  assert "line 4" in str(error)


def test_non_utf8_bytes(tmp_path):
  _write(tmp_path, interactions__csv="user_id,item_id\nu1,t1\n",
         items__csv=b"item_id,title\nt1,ok\nt2,caf\xe9 noir\n")
  error = _error(tmp_path)
  _assert_names(error, "items.csv", 2, "title")
  assert "line 3" in str(error) and "0xe9" in str(error)
  assert "UTF-8" in error.fix and "iconv" in error.fix


def test_error_names_the_mapped_source_column(tmp_path):
  _write(tmp_path, interactions__csv="username,track,stars\nu1,t1,4\nu2,t2,four\n")
  error = _error(tmp_path, columns={"user_id": "username", "item_id": "track",
                                    "rating": "stars"})
  _assert_names(error, "interactions.csv", 2, "stars")
  assert "read as `rating`" in str(error)


def test_error_in_a_shard_names_the_shard_and_its_row(tmp_path):
  _write(tmp_path,
         **{"interactions-00000-of-00002.csv": "user_id,item_id,timestamp\nu1,t1,1\nu2,t2,2\n",
            "interactions-00001-of-00002.csv": "user_id,item_id,timestamp\nu3,t3,3\nu4,t4,-4\n"})
  _assert_names(_error(tmp_path), "interactions-00001-of-00002.csv", 2, "timestamp")


def test_large_integer_timestamps_are_exact_and_playlist_gaps_stay_empty():
  import pandas as pd
  from tfrec_music.data.tables import Tables, validate_tables, rename_columns
  big = 2**53 + 1
  frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"],
                        "timestamp": [big, 5], "playlist_id": ["p1", None]})
  out = validate_tables(Tables(frame)).interactions
  assert out["timestamp"].iloc[0] == big          # not rounded through float64
  assert out["playlist_id"].tolist() == ["p1", ""]
  with pytest.raises(ValueError, match="same source column `name`"):
    rename_columns(frame, {"user_id": "name", "username": "name"})
