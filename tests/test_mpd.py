"""Million Playlist Dataset loader: hand-written slices, challenge set, bad input, generator."""

import json
import os
import shutil

import numpy as np
import pytest

from tfrec_music.data.loaders.mpd import list_slices
from tfrec_music.data.loaders.mpd import load_mpd
from tfrec_music.data.mpd_format import MPDFormatConfig
from tfrec_music.data.mpd_format import generate_slice
from tfrec_music.data.mpd_format import write_slices
from tfrec_music.data.registry import load_data
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mpd")
SLICES = os.path.join(FIXTURES, "slices")


def _copy(tmp_path, name):
  target = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), target)
  return target


def test_slices_are_read_in_numeric_order_and_other_files_ignored():
  # Lexically "10000-10999" < "2000-2999"; numerically 2000 comes first.
  assert list_slices(SLICES) == ["mpd.slice.2000-2999.json", "mpd.slice.10000-10999.json"]


def test_playlists_become_users_tracks_become_items():
  report = DataReport()
  tables = load_mpd(SLICES, report=report)
  inter, items, users = tables.interactions, tables.items, tables.users
  assert users["user_id"].tolist() == ["2000", "2001", "10000"]
  assert users["name"].tolist() == ["Road Trip", "chill", "Road trip 2"]
  # "true" / "false" strings become booleans.
  assert users["collaborative"].tolist() == [False, True, False]
  assert users["description"].tolist() == ["windows down", "", ""]
  assert users["num_followers"].tolist() == [1, 3, 1]
  # One row per playlist track; `pos` is the order (timestamp), even when the
  # JSON lists tracks out of order (playlist 2001).
  rows = inter[inter["user_id"] == "2001"].sort_values("timestamp")
  assert rows["item_id"].tolist() == ["spotify:track:3Sl6w3cTUOhQQpLsBDLeFV",
                                      "spotify:track:4fbvXwMTXPWaFyaMWUm9CR"]
  assert rows["timestamp"].tolist() == [0, 1]
  assert (inter["playlist_id"] == inter["user_id"]).all()
  assert len(inter) == 7
  # A track shared by two playlists is one item, with artist and album.
  assert len(items) == 5 and items["item_id"].is_unique
  toxic = items.set_index("item_id").loc["spotify:track:6I9VzXrHxO9rA9A5euc8Ak"]
  assert (toxic["title"], toxic["artist"], toxic["album"]) == ("Toxic", "Britney Spears",
                                                               "In The Zone")
  assert toxic["artist_uri"] == "spotify:artist:26dSoYclwsYLMAKD3tpOr4"
  # Playlist 2001 says num_tracks 5 but lists 2 tracks: counted, never trusted.
  load = report.as_dict()["load"]
  assert load["num_tracks_mismatch"] == 1
  assert load["playlists"] == 3 and load["slices_read"] == 2
  assert load["playlists_without_tracks"] == 0


def test_challenge_set_keeps_name_only_playlists_as_users():
  report = DataReport()
  tables = load_mpd(os.path.join(FIXTURES, "challenge"), report=report)
  users = tables.users.set_index("user_id")
  assert users.loc["1000000", "name"] == "party"
  assert users.loc["1000001", "name"] == ""                    # no name given
  assert users.loc["1000000", "num_holdouts"] == 10
  assert users.loc["1000001", "num_samples"] == 1
  # The name-only playlist has no interaction row; it is counted.
  assert tables.interactions["user_id"].tolist() == ["1000001"]
  load = report.as_dict()["load"]
  assert load["playlists_without_tracks"] == 1
  assert load["num_tracks_mismatch"] == 2          # num_tracks includes the hold-outs


def test_truncated_slice_error_names_file_and_position():
  folder = os.path.join(FIXTURES, "truncated")
  with pytest.raises(DataValidationError) as info:
    load_mpd(folder)
  message = str(info.value)
  assert "mpd.slice.1000-1999.json" in message
  assert "is truncated" in message
  assert "line 1, column 237" in message and "playlist 1 of the file (pid 1000)" in message
  assert "bad_slices=\"drop\"" in message           # says how to go on


def test_truncated_slice_is_dropped_and_counted_with_drop_policy():
  report = DataReport()
  tables = load_mpd(os.path.join(FIXTURES, "truncated"), report=report, bad_slices="drop")
  load = report.as_dict()["load"]
  assert load["bad_slices_dropped"] == 1 and load["slices_read"] == 1
  assert "mpd.slice.1000-1999.json" in load["bad_slice_files"][0]
  assert tables.users["user_id"].tolist() == ["0"]
  with pytest.raises(ValueError, match="`bad_slices` should be one of"):
    load_mpd(SLICES, bad_slices="skip")


def _edit(tmp_path, edit):
  folder = _copy(tmp_path, "slices")
  path = folder / "mpd.slice.2000-2999.json"
  document = json.loads(path.read_text())
  edit(document["playlists"])
  path.write_text(json.dumps(document))
  return str(folder)


@pytest.mark.parametrize("edit,pattern", [
    (lambda p: p[1].update(collaborative="yes"),
     r"mpd.slice.2000-2999.json, row 2, column `collaborative`: .*\"true\" or \"false\".*'yes'"),
    (lambda p: p[0]["tracks"][1].pop("track_uri"),
     r"row 1, column `track_uri`: track 2 of playlist 2000 has no `track_uri`"),
    (lambda p: p[0]["tracks"][0].update(pos="first"),
     r"row 1, column `pos`: `pos` should be an integer. Received: 'first'"),
    (lambda p: p[1].update(pid=2000),
     r"row 2, column `pid`: playlist id 2000 repeats playlist 1 of"),
    (lambda p: p[0].pop("pid"), r"row 1, column `pid`: playlist 1 has no `pid`"),
])
def test_bad_fields_name_file_playlist_and_field(tmp_path, edit, pattern):
  with pytest.raises(DataValidationError, match=pattern):
    load_mpd(_edit(tmp_path, edit))


def test_json_booleans_and_missing_pos_are_accepted(tmp_path):
  def edit(playlists):
    playlists[0]["collaborative"] = True
    for track in playlists[1]["tracks"]:
      track.pop("pos")
  report = DataReport()
  tables = load_mpd(_edit(tmp_path, edit), report=report)
  assert tables.users["collaborative"].tolist()[:2] == [True, True]
  assert report.get("load", "tracks_without_pos") == 2
  # Without `pos` the listed order is kept.
  rows = tables.interactions[tables.interactions["user_id"] == "2001"]
  assert rows.sort_values("timestamp")["item_id"].iloc[0].endswith("4fbvXwMTXPWaFyaMWUm9CR")


def test_bad_slices_policy_from_the_command_line(tmp_path):
  folder = os.path.join(FIXTURES, "truncated")
  report = DataReport()
  loaded = load_data("mpd", data_dir=folder, report=report, bad_slices="drop")
  assert loaded.tables.users["user_id"].tolist() == ["0"]
  assert report.get("load", "bad_slices_dropped") == 1
  with pytest.raises(ValueError, match="applies to sources read as slice files"):
    load_data("synthetic", preset="tiny", bad_slices="drop")
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--model", "popularity", "--data", "mpd",
       "--data-dir", folder, "--job-dir", str(tmp_path / "job"), "--no-export"],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 2
  assert "mpd.slice.1000-1999.json" in proc.stderr and "--bad-slices drop" in proc.stderr


def test_missing_or_empty_folder(tmp_path):
  with pytest.raises(FileNotFoundError):
    load_mpd(str(tmp_path / "nope"))
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(DataValidationError, match="no `mpd.slice.<a>-<b>.json` file"):
    load_mpd(str(tmp_path))


def test_registered_as_data_mpd():
  loaded = load_data("mpd", data_dir=SLICES)
  assert loaded.tables.name == "mpd" and len(loaded.tables.users) == 3


def test_generator_writes_slices_the_loader_reads_back(tmp_path):
  config = MPDFormatConfig(playlists_per_slice=30, n_themes=4, artists_per_theme=5,
                           max_tracks=20, seed=3)
  paths = write_slices(str(tmp_path), 3, config)
  assert [os.path.basename(p) for p in paths] == [
      "mpd.slice.0-29.json", "mpd.slice.30-59.json", "mpd.slice.60-89.json"]
  # Deterministic and independent per slice (streamable).
  assert generate_slice(config, 1) == json.loads(open(paths[1]).read())
  raw = json.loads(open(paths[0]).read())
  first = raw["playlists"][0]
  assert first["collaborative"] in ("true", "false")
  assert first["num_tracks"] == len(first["tracks"])
  assert [t["pos"] for t in first["tracks"]] == list(range(len(first["tracks"])))
  report = DataReport()
  tables = load_mpd(str(tmp_path), report=report)
  assert len(tables.users) == 90
  assert report.get("load", "num_tracks_mismatch") == 0
  n_rows = sum(len(p["tracks"]) for path in paths
               for p in json.loads(open(path).read())["playlists"])
  assert len(tables.interactions) == n_rows
  # Themed: a playlist's tracks share artists far more than random tracks would.
  inter = tables.interactions.merge(tables.items[["item_id", "artist"]], on="item_id")
  distinct = inter.groupby("user_id")["artist"].nunique() / inter.groupby("user_id").size()
  assert distinct.mean() < 0.6
  with pytest.raises(ValueError, match="`max_tracks`"):
    MPDFormatConfig(min_tracks=10, max_tracks=5)
  with pytest.raises(ValueError, match="`n_slices` should be a positive integer"):
    write_slices(str(tmp_path), 0, config)


def test_playlist_mf_trains_on_generated_slices(tmp_path):
  # End to end through the CLI: --data mpd on generated slices.
  import subprocess
  import sys
  data = tmp_path / "mpd"
  write_slices(str(data), 2, MPDFormatConfig(playlists_per_slice=120, n_themes=6,
                                             artists_per_theme=6, max_tracks=30, seed=1))
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--model", "playlist_mf", "--preset", "tiny",
       "--data", "mpd", "--data-dir", str(data), "--job-dir", str(tmp_path / "job"),
       "--export-dir", str(tmp_path / "export")],
      capture_output=True, text=True, timeout=600,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
  model, popular = metrics["model"], metrics["popularity"]
  assert model["test/k5/r_precision"] > popular["test/k5/r_precision"]
  assert "same_artist" in metrics and "same_album" in metrics
  assert np.isfinite(model["test/k0/r_precision"])
  assert os.path.exists(tmp_path / "export" / "playlist_mf" / "1" / "saved_model.pb")
