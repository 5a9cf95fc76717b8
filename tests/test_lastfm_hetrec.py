"""Last.fm HetRec 2011 loader: folder and zip, safe extraction, encodings, counts, errors."""

import os
import shutil
import stat
import zipfile

import numpy as np
import pytest

from conftest import REPO
from tfrec_music import training
from tfrec_music.data.loaders import lastfm_hetrec
from tfrec_music.data.loaders.lastfm_hetrec import load_lastfm_hetrec
from tfrec_music.data.loaders.safe_extract import UnsafeArchiveError
from tfrec_music.data.loaders.safe_extract import safe_extract
from tfrec_music.data.registry import load_data
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError

FIXTURE = os.path.join(REPO, "tests", "fixtures", "lastfm_hetrec")
DAT_FILES = sorted(n for n in os.listdir(FIXTURE) if n.endswith(".dat"))


@pytest.fixture
def release(tmp_path):
  """A writable copy of the fixture release."""
  folder = tmp_path / "hetrec2011-lastfm-2k"
  shutil.copytree(FIXTURE, folder)
  return folder


def _zip(path, folder, prefix=""):
  with zipfile.ZipFile(path, "w") as zf:
    for name in DAT_FILES:
      zf.write(os.path.join(folder, name), prefix + name)
  return str(path)


def test_folder_loads_every_table_with_counts():
  report = DataReport()
  tables = load_lastfm_hetrec(FIXTURE, report=report)
  inter = tables.interactions
  assert len(inter) == 25
  # ids stay strings and non-contiguous; play counts keep their size
  assert set(inter["item_id"]) == {"51", "52", "53", "89", "289", "1001"}
  assert set(inter["user_id"]) == {"2", "7", "13", "31", "1002", "2100"}
  row = inter[(inter["user_id"] == "13") & (inter["item_id"] == "289")]
  assert float(row["weight"].iloc[0]) == 352698.0
  items = tables.items.set_index("item_id")
  # quotes are part of names (no quote handling), UTF-8 survives, no '\r' anywhere
  assert items.loc["53", "title"] == '"Weird Al" Yankovic'
  assert items.loc["89", "title"] == '12" Club "Mix'
  assert items.loc["1001", "artist"] == "Sigur Rós"
  assert items.loc["51", "url"] == "http://www.last.fm/music/Duran+Duran"
  for frame in (tables.interactions, tables.items, tables.user_links):
    for column in frame.columns:
      assert not frame[column].astype(str).str.contains("\r").any(), column
  # latin-1 tags, most used first: 1001 has post-rock x3, électronique x1
  assert items.loc["1001", "tags"] == ["post-rock", "électronique"]
  assert items.loc["52", "tags"] == ["électronique", "alternative"]
  assert items.loc["289", "tags"] == ["pop", "música latina"]  # tag 99 is unknown
  assert items.loc["51", "tags"] == []
  links = set(zip(tables.user_links["user_id"], tables.user_links["other_user_id"]))
  assert ("2", "7") in links and ("7", "2") in links and ("31", "1002") in links
  assert len(links) == 7
  load = report.as_dict()["load"]
  assert load["tag_rows_missing_artist"] == 1      # artist 9999 is not in artists.dat
  assert load["tag_rows_unknown_tag"] == 1         # tag 99 is not in tags.dat
  assert load["friendships_one_way"] == 1          # 31 -> 1002 only
  assert load["interactions_rows"] == 25 and load["items_rows"] == 6


def test_zip_and_folder_holding_it_load_the_same_tables(release, tmp_path):
  expected = load_lastfm_hetrec(str(release))
  flat = _zip(tmp_path / "flat.zip", release)
  nested = tmp_path / "holder"
  nested.mkdir()
  _zip(nested / "hetrec2011-lastfm-2k.zip", release, prefix="hetrec2011-lastfm-2k/")
  for source in (flat, str(nested)):
    tables = load_lastfm_hetrec(source)
    assert tables.interactions.equals(expected.interactions)
    assert tables.items["tags"].tolist() == expected.items["tags"].tolist()
    assert tables.user_links.equals(expected.user_links)


def test_timestamp_tag_file_is_used_when_the_day_file_is_missing(release):
  os.remove(release / "user_taggedartists.dat")
  tables = load_lastfm_hetrec(str(release))
  assert tables.items.set_index("item_id").loc["1001", "tags"] == ["post-rock", "électronique"]


def test_zip_with_parent_paths_is_refused_and_writes_nothing(tmp_path):
  archive = tmp_path / "evil.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("user_artists.dat", "userID\tartistID\tweight\n1\t2\t3\n")
    zf.writestr("../escaped.dat", "owned\n")
  target = tmp_path / "out"
  with pytest.raises(UnsafeArchiveError, match=r"'\.\./escaped\.dat'.*outside"):
    safe_extract(str(archive), str(target))
  assert not (tmp_path / "escaped.dat").exists()
  assert not os.listdir(target)  # checked before anything is written
  holder = tmp_path / "holder"
  holder.mkdir()
  shutil.copy(archive, holder / "hetrec2011-lastfm-2k.zip")
  with pytest.raises(UnsafeArchiveError):
    load_lastfm_hetrec(str(holder))


@pytest.mark.parametrize("name", ["/tmp/absolute.dat", "C:/windows.dat", "a/../../up.dat",
                                  "..\\back.dat"])
def test_other_escaping_member_names_are_refused(tmp_path, name):
  archive = tmp_path / "bad.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr(name, "x")
  with pytest.raises(UnsafeArchiveError):
    safe_extract(str(archive), str(tmp_path / "out"))


def test_symlink_members_are_refused(tmp_path):
  archive = tmp_path / "link.zip"
  info = zipfile.ZipInfo("link.dat")
  info.external_attr = (stat.S_IFLNK | 0o777) << 16
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr(info, "/etc/passwd")
  with pytest.raises(UnsafeArchiveError, match="symbolic link"):
    safe_extract(str(archive), str(tmp_path / "out"))


def test_safe_extract_writes_normal_members(tmp_path):
  archive = tmp_path / "ok.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    zf.writestr("a/b.dat", "hello")
    zf.writestr("./c.dat", "world")
  written = safe_extract(str(archive), str(tmp_path / "out"))
  assert sorted(os.path.relpath(p, tmp_path / "out") for p in written) == ["a/b.dat", "c.dat"]
  assert open(tmp_path / "out" / "a" / "b.dat").read() == "hello"


def _rewrite(path, old, new):
  data = open(path, "rb").read()
  assert old in data
  open(path, "wb").write(data.replace(old, new, 1))


def test_bad_play_count_names_file_row_and_column(release):
  _rewrite(release / "user_artists.dat", b"7\t289\t40", b"7\t289\tforty")
  with pytest.raises(DataValidationError) as e:
    load_lastfm_hetrec(str(release))
  message = str(e.value)
  assert "user_artists.dat" in message and "row 8" in message and "`weight`" in message


def test_short_row_and_missing_header_column_are_named(release):
  _rewrite(release / "user_artists.dat", b"13\t89\t15", b"13 89 15")
  with pytest.raises(DataValidationError, match=r"user_artists.dat, row 11, column `artistID`"):
    load_lastfm_hetrec(str(release))
  _rewrite(release / "user_artists.dat", b"13 89 15", b"13\t89\t15")
  _rewrite(release / "artists.dat", b"id\tname", b"id\tartist")
  with pytest.raises(DataValidationError, match=r"artists.dat, column `name`"):
    load_lastfm_hetrec(str(release))


def test_missing_files_and_folders(release, tmp_path):
  os.remove(release / "artists.dat")
  with pytest.raises(DataValidationError, match="artists.dat of the HetRec release is missing"):
    load_lastfm_hetrec(str(release))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_lastfm_hetrec(str(tmp_path / "nowhere"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataValidationError, match="neither user_artists.dat nor"):
    load_lastfm_hetrec(str(empty))


def test_listens_of_unknown_artists_error_or_are_dropped_and_counted(release):
  with open(release / "user_artists.dat", "ab") as f:
    f.write(b"2\t7777\t5\r\n")
  with pytest.raises(DataValidationError, match="'7777' is not in the items"):
    load_lastfm_hetrec(str(release))
  report = DataReport()
  tables = load_lastfm_hetrec(str(release), unknown_items="drop", report=report)
  assert len(tables.interactions) == 25
  assert report.get("validation", "unknown_item_rows_dropped") == 1


def test_registered_name_trains_als_end_to_end(tmp_path):
  loaded = load_data("lastfm-hetrec", data_dir=FIXTURE)
  assert loaded.tables.name == "lastfm-hetrec"
  result = training.run(training.RunConfig(
      model="als", data="lastfm-hetrec", data_dir=FIXTURE, preset="tiny", kcore=1,
      cold_user_share=0.0, job_dir=str(tmp_path / "job"), export=False,
      hparams={"ranks": [2], "regs": [1.0], "top_n": 2, "iterations": 3}))
  assert 0.0 <= result.metrics["model"]["test/all/hr@10"] <= 1.0
  assert np.isfinite(result.metrics["model"]["test/all/mrr"])
  assert result.report.get("load", "tag_rows_missing_artist") == 1
