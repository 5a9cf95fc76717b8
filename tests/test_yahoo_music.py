"""Yahoo! Music loader: hand-written release fixture, bad lines by policy, streaming to shards."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from tfrec_music.data.loaders import canonical
from tfrec_music.data.loaders.yahoo_music import convert_yahoo_music
from tfrec_music.data.loaders.yahoo_music import load_yahoo_music
from tfrec_music.data.registry import load_data
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError

FIXTURES = os.path.join(REPO, "tests", "fixtures", "yahoo_music")
RELEASE = os.path.join(FIXTURES, "release")


def _release_with(tmp_path, bad_file=None):
  """A copy of the good release, plus a bad-lines file as train_9.txt."""
  folder = tmp_path / "release"
  shutil.copytree(RELEASE, folder)
  if bad_file:
    shutil.copy(os.path.join(FIXTURES, "bad_lines", bad_file), folder / "train_9.txt")
  return str(folder)


def _sorted(frame):
  return frame.sort_values(["user_id", "item_id"]).reset_index(drop=True)


def test_release_loads_into_canonical_tables_with_the_genre_hierarchy():
  report = DataReport()
  tables = load_yahoo_music(RELEASE, report=report)
  # train_0.txt: 6 users x songs 10-15 = 36 lines; test_0.txt: 6 users x song 16.
  assert len(tables.interactions) == 42 and len(tables.items) == 7
  assert tables.interactions["rating"].dtype == np.float32
  ratings = tables.interactions.set_index(["user_id", "item_id"])["rating"]
  # rating = 1 + (user + song) % 5: user 3, song 14 -> 1 + 17 % 5 = 3; user 5, song 16 -> 2.
  assert ratings[("3", "14")] == 3.0 and ratings[("5", "16")] == 2.0
  items = tables.items.set_index("item_id")
  # Song 13: album 102, artist 1001, genre 4 (Bebop, level 2) under 3 (Jazz).
  assert items.loc["13", ["album", "artist", "genre", "parent_genre", "title"]].tolist() == [
      "102", "1001", "4", "3", "Bebop"]
  assert items.loc["13", "genre_level"] == 2 and items.loc["12", "genre_level"] == 1
  # Song 16's genre 99 is not in the hierarchy: kept, with no parent and level 0.
  assert items.loc["16", ["genre", "parent_genre", "genre_level"]].tolist() == ["99", "", 0]
  assert report.get("load", "songs_with_unlisted_genre") == 1
  assert report.get("load", "rating_rows_read") == 42


def test_chunk_size_does_not_change_the_tables():
  whole = load_yahoo_music(RELEASE)
  for chunk_rows in (1, 5, 7):
    chunked = load_yahoo_music(RELEASE, chunk_rows=chunk_rows)
    pd.testing.assert_frame_equal(chunked.interactions, whole.interactions)


@pytest.mark.parametrize("bad_file,line,column,problem", [
    ("train_rating_7.txt", 2, "rating", "rating should be from 1 to 5. Received: 7"),
    ("train_unknown_song.txt", 3, "song_id", "song id '999' is not in song-attributes.txt"),
    ("train_malformed.txt", 2, "song_id", "expected 3 non-empty tab-separated fields"),
])
def test_bad_lines_raise_naming_file_line_column_and_fix(tmp_path, bad_file, line, column,
                                                         problem):
  folder = _release_with(tmp_path, bad_file)
  with pytest.raises(DataValidationError) as info:
    load_yahoo_music(folder)
  error = info.value
  assert error.file == os.path.join(folder, "train_9.txt")
  assert (error.row, error.column) == (line, column)
  assert problem in str(error)
  assert "--unknown-items drop" in error.fix


def test_drop_policy_counts_every_bad_line_by_reason(tmp_path):
  folder = _release_with(tmp_path, "train_all_bad.txt")
  report = DataReport()
  tables = load_yahoo_music(folder, unknown_items="drop", report=report)
  # train_all_bad.txt: line 1 good; 2 rating 7 and 6 rating 0 out of range;
  # 3 unknown song 999; 4 space-separated and 5 rating "four" malformed; 7 blank (skipped).
  assert report.get("load", "out_of_range_ratings_dropped") == 2
  assert report.get("load", "unknown_song_ratings_dropped") == 1
  assert report.get("load", "malformed_lines_dropped") == 2
  assert len(tables.interactions) == 42 + 1


def test_registry_name_and_policy_flag(tmp_path):
  folder = _release_with(tmp_path, "train_unknown_song.txt")
  with pytest.raises(DataValidationError, match="song-attributes.txt"):
    load_data("yahoo-music", data_dir=folder)
  loaded = load_data("yahoo-music", data_dir=folder, unknown_items="drop")
  assert len(loaded.tables.interactions) == 42 + 2


def test_bad_metadata_lines(tmp_path):
  folder = _release_with(tmp_path)
  with open(os.path.join(folder, "song-attributes.txt"), "a") as f:
    f.write("12\t105\t1004\t1\n")  # line 8 repeats song 12 (first at line 3)
  with pytest.raises(DataValidationError, match=r"listed twice \(first at line 3\)") as info:
    load_yahoo_music(folder)
  assert info.value.row == 8 and info.value.column == "song_id"
  report = DataReport()
  tables = load_yahoo_music(folder, unknown_items="drop", report=report)
  assert report.get("load", "duplicate_songs_dropped") == 1
  assert tables.items.set_index("item_id").loc["12", "album"] == "101"  # first line kept
  shutil.copy(os.path.join(RELEASE, "song-attributes.txt"), folder)  # undo the duplicate
  with open(os.path.join(folder, "genre-hierarchy.txt"), "a") as f:
    f.write("5\t1\tsecond\tPost Rock\n")
  with pytest.raises(DataValidationError, match="not a whole number") as info:
    load_yahoo_music(folder, unknown_items="error")
  assert (info.value.column, info.value.row) == ("level", 6)


def test_missing_files_and_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="Yahoo! Music release"):
    load_yahoo_music(str(tmp_path / "nowhere"))
  folder = _release_with(tmp_path)
  os.remove(os.path.join(folder, "song-attributes.txt"))
  with pytest.raises(DataValidationError, match="song-attributes.txt is missing"):
    load_yahoo_music(folder)
  empty = tmp_path / "empty"
  shutil.copytree(RELEASE, empty, ignore=shutil.ignore_patterns("train_*", "test_*"))
  with pytest.raises(DataValidationError, match="no rating files"):
    load_yahoo_music(str(empty))


def test_convert_streams_to_parquet_shards_the_canonical_loader_reads(tmp_path):
  out = str(tmp_path / "shards")
  report = DataReport()
  counts = convert_yahoo_music(RELEASE, out, report=report, chunk_rows=4, shard_rows=10)
  # 42 ratings in shards of at most 10 rows: 10 + 10 + 10 + 10 + 2.
  assert counts == {"items": 7, "interactions": 42, "shards": 5}
  assert sorted(n for n in os.listdir(out) if n.startswith("interactions-")) == [
      f"interactions-{k:05d}.parquet" for k in range(5)]
  from_shards = canonical.load_canonical(out, fmt="parquet")
  direct = load_yahoo_music(RELEASE)
  pd.testing.assert_frame_equal(_sorted(from_shards.interactions), _sorted(direct.interactions))
  pd.testing.assert_frame_equal(
      from_shards.items.sort_values("item_id").reset_index(drop=True),
      direct.items.sort_values("item_id").reset_index(drop=True), check_dtype=False)
  # A second conversion into the same folder replaces the shards.
  convert_yahoo_music(RELEASE, out, chunk_rows=100, shard_rows=100)
  assert sorted(n for n in os.listdir(out) if n.startswith("interactions-")) == [
      "interactions-00000.parquet"]


def test_cli_trains_dcn_on_the_release(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--model", "dcn", "--preset", "tiny",
       "--data", "yahoo-music", "--data-dir", RELEASE, "--kcore", "2",
       "--job-dir", str(tmp_path / "job"), "--no-export"],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(tmp_path / "job" / "data_report.json"))
  assert report["load"]["songs_with_unlisted_genre"] == 1
  assert "biased_mf" in proc.stdout
