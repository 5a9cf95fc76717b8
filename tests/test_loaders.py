"""Loaders: canonical CSV/Parquet folders, the Last.fm loved-tracks export, TFDS."""

import os
import shutil

import numpy as np
import pytest

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music.data.loaders import load_canonical
from tfrec_music.data.loaders import load_lastfm_loved
from tfrec_music.data.loaders import load_tfds
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import parse_column_mapping

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CANONICAL = os.path.join(FIXTURES, "canonical_csv")
LASTFM = os.path.join(FIXTURES, "lastfm_loved")


def _copy(src, tmp_path):
  dst = tmp_path / "data"
  shutil.copytree(src, dst)
  return dst


# ----------------------------------------------------------------------------
# Canonical folders.


def test_canonical_csv_keeps_ids_text_and_splits_tags():
  tables = load_canonical(CANONICAL)
  inter = tables.interactions
  # Leading zeros survive: ids are read as text, never as numbers.
  assert inter["user_id"].tolist() == ["007", "007", "u2"]
  assert inter["item_id"].tolist() == ["0042", "0100", "0042"]
  assert inter["timestamp"].tolist() == [1700000000, 1700000100, 1700000200]
  assert inter["timestamp"].dtype == np.int64
  np.testing.assert_allclose(inter["rating"], [4.5, 3.0, 5.0])
  np.testing.assert_allclose(inter["weight"], [3.0, 1.0, 2.0])
  items = tables.items.set_index("item_id")
  assert items.loc["0042", "title"] == "Hello, Goodbye"
  assert items.loc["0042", "tags"] == ["rock", "pop"]
  assert items.loc["0100", "tags"] == []
  # `NA` and `None` are a title and an artist here, not missing values.
  assert items.loc["0100", "title"] == "NA" and items.loc["0100", "artist"] == "None"
  np.testing.assert_allclose(items["energy"], [0.8, 0.1], rtol=1e-6)
  assert tables.users["country"].tolist() == ["UK", "US"]
  assert tables.user_links.to_dict("records") == [{"user_id": "007", "other_user_id": "u2"}]
  assert "_row" not in inter.columns
  assert tables.sources["interactions"].endswith("interactions.csv")


def _assert_same_tables(a, b):
  for table in ("interactions", "items", "users", "user_links"):
    left, right = getattr(a, table), getattr(b, table)
    assert list(left.columns) == list(right.columns), table
    for column in left.columns:
      assert [list(v) if isinstance(v, (list, np.ndarray)) else v for v in left[column]] \
          == [list(v) if isinstance(v, (list, np.ndarray)) else v for v in right[column]], \
          (table, column)


def test_canonical_parquet_round_trip(tmp_path):
  csv_tables = load_canonical(CANONICAL)
  for table in ("interactions", "items", "users", "user_links"):
    getattr(csv_tables, table).to_parquet(tmp_path / f"{table}.parquet", index=False)
  parquet_tables = load_canonical(str(tmp_path), fmt="parquet")
  _assert_same_tables(csv_tables, parquet_tables)
  assert parquet_tables.items.set_index("item_id").loc["0042", "tags"] == ["rock", "pop"]


def test_columns_mapping_applies_to_every_table(tmp_path):
  (tmp_path / "interactions.csv").write_text(
      "username,track_name,stars\n0001,song 1,4\n0002,song 2,5\n")
  (tmp_path / "items.csv").write_text("track_name,name,tags\nsong 1,One,a|b\nsong 2,Two,c\n")
  (tmp_path / "users.csv").write_text("username,country\n0001,UK\n0002,FR\n")
  mapping = parse_column_mapping("user_id=username,item_id=track_name,rating=stars,title=name")
  tables = load_canonical(str(tmp_path), columns=mapping)
  assert tables.interactions.columns.tolist() == ["user_id", "item_id", "rating"]
  assert tables.interactions["user_id"].tolist() == ["0001", "0002"]
  assert tables.items.columns.tolist() == ["item_id", "title", "tags"]
  assert tables.items["tags"].tolist() == [["a", "b"], ["c"]]
  assert tables.users["user_id"].tolist() == ["0001", "0002"]


def test_columns_mapping_to_no_column_is_an_error(tmp_path):
  (tmp_path / "interactions.csv").write_text("username,item_id\nu1,t1\n")
  with pytest.raises(DataValidationError, match="no table has a column `usernme`"):
    load_canonical(str(tmp_path), columns={"user_id": "usernme"})


def test_columns_mapping_onto_an_existing_column_is_an_error(tmp_path):
  (tmp_path / "interactions.csv").write_text("user_id,username,item_id\nu1,x,t1\n")
  with pytest.raises(DataValidationError, match="two `user_id` columns"):
    load_canonical(str(tmp_path), columns={"user_id": "username"})


def test_sharded_parquet_from_the_synthetic_streamer(tmp_path):
  from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.write_large(str(tmp_path), preset="tiny", seed=0, shard_rows=1000)
  shards = sorted(f for f in os.listdir(tmp_path) if f.startswith("interactions-"))
  assert len(shards) >= 3 and shards[0].startswith("interactions-00000-of-")
  report = DataReport()
  loaded = load_canonical(str(tmp_path), fmt="parquet", report=report)
  expected = synthetic.generate("tiny", seed=0).tables
  assert report.get("load", "interaction_files") == len(shards)
  assert len(loaded.interactions) == len(expected.interactions)
  for column in ("user_id", "item_id", "timestamp"):
    assert loaded.interactions[column].tolist() == expected.interactions[column].tolist()
  assert loaded.items["item_id"].tolist() == expected.items["item_id"].tolist()


def test_sharded_csv_keeps_order_and_rows_per_shard(tmp_path):
  # Written out of order on purpose: shards are read in sorted name order.
  (tmp_path / "interactions-00001-of-00002.csv").write_text("user_id,item_id\nu3,t3\n")
  (tmp_path / "interactions-00000-of-00002.csv").write_text("user_id,item_id\nu1,t1\nu2,t2\n")
  tables = load_canonical(str(tmp_path))
  assert tables.interactions["user_id"].tolist() == ["u1", "u2", "u3"]


def test_shards_with_different_columns_are_an_error(tmp_path):
  (tmp_path / "interactions-00000-of-00002.csv").write_text("user_id,item_id\nu1,t1\n")
  (tmp_path / "interactions-00001-of-00002.csv").write_text("user_id,item_id,rating\nu3,t3,1\n")
  with pytest.raises(DataValidationError, match="interactions-00001-of-00002.csv"):
    load_canonical(str(tmp_path))


def test_single_file_and_shards_together_are_an_error(tmp_path):
  (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,t1\n")
  (tmp_path / "interactions-00000-of-00001.csv").write_text("user_id,item_id\nu1,t1\n")
  with pytest.raises(DataValidationError, match="either the single file or the shards"):
    load_canonical(str(tmp_path))


def test_missing_folder_lists_what_is_there(tmp_path):
  (tmp_path / "sibling").mkdir()
  with pytest.raises(FileNotFoundError) as info:
    load_canonical(str(tmp_path / "nope"))
  assert str(tmp_path / "nope") in str(info.value) and "sibling" in str(info.value)


def test_missing_interactions_lists_files_and_suggests_the_format(tmp_path):
  (tmp_path / "items.csv").write_text("item_id\nt1\n")
  (tmp_path / "interactions.parquet").write_bytes(b"")
  with pytest.raises(DataValidationError) as info:
    load_canonical(str(tmp_path))
  message = str(info.value)
  assert "interactions.csv" in message and "items.csv" in message
  assert "--data parquet" in message


def test_not_a_parquet_file(tmp_path):
  (tmp_path / "interactions.parquet").write_text("user_id,item_id\nu1,t1\n")
  with pytest.raises(DataValidationError, match="cannot be read as Parquet"):
    load_canonical(str(tmp_path), fmt="parquet")


def test_bad_format_name(tmp_path):
  with pytest.raises(ValueError, match="`fmt` should be one of"):
    load_canonical(str(tmp_path), fmt="json")


def test_canonical_through_tf_io_gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  root = "ram://tfrec_music_loaders_test/canonical"
  tf.io.gfile.makedirs(root)
  for name in os.listdir(CANONICAL):
    with open(os.path.join(CANONICAL, name), "rb") as src, \
        tf.io.gfile.GFile(f"{root}/{name}", "wb") as dst:
      dst.write(src.read())
  _assert_same_tables(load_canonical(CANONICAL), load_canonical(root))
  # The ram:// file system appends to an existing file: remove it first.
  tf.io.gfile.remove(f"{root}/users.csv")
  with tf.io.gfile.GFile(f"{root}/users.csv", "wb") as f:
    f.write(b"user_id,country\n007,UK\nu2,US,extra\n")
  with pytest.raises(DataValidationError) as info:
    load_canonical(root)
  assert info.value.file == f"{root}/users.csv" and info.value.row == 2


# ----------------------------------------------------------------------------
# Last.fm loved tracks.


def test_lastfm_loved_fixture():
  report = DataReport()
  tables = load_lastfm_loved(LASTFM, report=report)
  inter = tables.interactions
  rows = list(zip(inter["user_id"], inter["item_id"], inter["timestamp"]))
  assert rows == [
      ("alice", "Song A", 1700000100), ("alice", "Song B", 1700000200),
      ("bob", "Song C", 1700000300), ("bob", "007", 1700000400),
      ("carol", "Song A", 1700000500),
      # Loved but never logged: added with timestamp 0, once each.
      ("alice", "Song C", 0), ("carol", "Song B", 0),
  ]
  assert report.get("load", "loved_only_pairs_added") == 2
  # `Song A` is listed again under another artist: the first row wins.
  assert report.get("load", "duplicate_item_rows_dropped") == 1
  items = tables.items.set_index("item_id")
  assert items.index.tolist() == ["Song A", "Song B", "Song C", "007"]
  assert items.loc["Song A", "artist"] == "Band 1"
  assert items.loc["Song A", "tags"] == ["rock", "indie"]  # Python literal
  assert items.loc["Song B", "tags"] == ["pop", "dance"]  # `|`-separated
  assert items.loc["Song C", "tags"] == ["jazz", "blues"]  # comma-separated
  assert items.loc["007", "tags"] == []
  assert (items["title"] == items.index).all()
  assert tables.users.to_dict("records") == [
      {"user_id": "alice", "username": "alice", "country": "UK"},
      {"user_id": "bob", "username": "bob", "country": "US"},
      {"user_id": "carol", "username": "carol", "country": "DE"},
  ]


def _write_users(folder, loved_cell_of_bob):
  cell = loved_cell_of_bob.replace('"', '""')
  (folder / "users.csv").write_text(
      "name,realname,country,loved_tracks\n"
      "alice,A,UK,\"[{'track_name': 'Song A', 'artist_name': 'Band 1'}]\"\n"
      f"bob,B,US,\"{cell}\"\n")


@pytest.mark.parametrize("cell,words", [
    ("[{'track_name': 'Song A', 'artist_name': 'Band 1'}", "not a Python literal"),
    ("{'track_name': 'Song A', 'artist_name': 'Band 1'}", "should be a list of dicts"),
    ("['Song A']", "entry 1 of `loved_tracks` should be a dict"),
    ("[{'track_name': 'Song A'}]", "non-empty string `artist_name`"),
    ("[{'track_name': '', 'artist_name': 'x'}]", "non-empty string `track_name`"),
])
def test_lastfm_malformed_loved_tracks(tmp_path, cell, words):
  folder = _copy(LASTFM, tmp_path)
  _write_users(folder, cell)
  with pytest.raises(DataValidationError) as info:
    load_lastfm_loved(str(folder))
  error = info.value
  assert os.path.basename(error.file) == "users.csv" and error.row == 2
  assert error.column == "loved_tracks" and words in str(error)


def test_lastfm_code_in_a_literal_is_never_run(tmp_path):
  folder = _copy(LASTFM, tmp_path)
  marker = tmp_path / "PWNED"
  _write_users(folder, f"__import__('pathlib').Path({str(marker)!r}).touch()")
  with pytest.raises(DataValidationError) as info:
    load_lastfm_loved(str(folder))
  assert not marker.exists()
  assert info.value.row == 2 and info.value.column == "loved_tracks"
  # The same goes for a list literal hiding a call.
  _write_users(folder, f"[__import__('pathlib').Path({str(marker)!r}).touch()]")
  with pytest.raises(DataValidationError):
    load_lastfm_loved(str(folder))
  assert not marker.exists()


def test_lastfm_loved_track_missing_from_items_points_at_users_csv(tmp_path):
  folder = _copy(LASTFM, tmp_path)
  _write_users(folder, "[{'track_name': 'Unknown Song', 'artist_name': 'Nobody'}]")
  with pytest.raises(DataValidationError) as info:
    load_lastfm_loved(str(folder))
  error = info.value
  assert os.path.basename(error.file) == "users.csv" and error.row == 2
  assert error.column == "loved_tracks" and "'Unknown Song'" in str(error)
  report = DataReport()
  tables = load_lastfm_loved(str(folder), unknown_items="drop", report=report)
  assert "Unknown Song" not in set(tables.interactions["item_id"])
  assert report.get("validation", "unknown_item_rows_dropped") == 1


def test_lastfm_bad_date_time_names_the_source_column(tmp_path):
  folder = _copy(LASTFM, tmp_path)
  (folder / "interactions.csv").write_text(
      "username,track_name,date_time\nalice,Song A,1700000100\nbob,Song B,yesterday\n")
  with pytest.raises(DataValidationError) as info:
    load_lastfm_loved(str(folder))
  error = info.value
  assert os.path.basename(error.file) == "interactions.csv" and error.row == 2
  assert error.column == "date_time" and "read as `timestamp`" in str(error)


def test_lastfm_malformed_tags_literal(tmp_path):
  folder = _copy(LASTFM, tmp_path)
  (folder / "items.csv").write_text(
      "artistName,trackName,tags\nBand 1,Song A,rock\nBand 2,Song B,\"['pop',\"\n")
  with pytest.raises(DataValidationError) as info:
    load_lastfm_loved(str(folder))
  assert os.path.basename(info.value.file) == "items.csv"
  assert info.value.row == 2 and info.value.column == "tags"


def test_lastfm_missing_column_and_missing_files(tmp_path):
  folder = _copy(LASTFM, tmp_path)
  (folder / "interactions.csv").write_text("user,track_name\nalice,Song A\n")
  with pytest.raises(DataValidationError, match="`username`"):
    load_lastfm_loved(str(folder))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataValidationError, match="neither users.csv nor interactions.csv"):
    load_lastfm_loved(str(empty))


# ----------------------------------------------------------------------------
# TFDS.

_MOVIES = [
    # movie_id, title, genre label ids, user, rating, timestamp, occupation label
    (b"m1", b"Toy Story", [3, 4], b"u1", 4.0, 881250949, 0),
    (b"m2", b"Heat", [1], b"u1", 5.0, 881250950, 0),
    (b"m1", b"Toy Story", [3, 4], b"u2", 2.0, 881250951, 4),
]


def _movielens_as_dataset(self, split, decoders=None, read_config=None, movies=None,
                          **kwargs):
  """A `_as_dataset` override for `tfds.testing.mock_data`: known examples."""
  del split, decoders, read_config, kwargs
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def examples():
    for movie, title, genres, user, rating, ts, occupation in movies or _MOVIES:
      yield {"movie_id": movie, "movie_title": title,
             "movie_genres": np.array(genres, np.int64), "user_id": user,
             "user_rating": np.float32(rating), "timestamp": np.int64(ts),
             "user_gender": True, "bucketized_user_age": np.float32(25),
             "user_occupation_label": np.int64(occupation),
             "user_occupation_text": b"x", "user_zip_code": b"01234",
             "raw_user_age": np.float32(26)}

  spec = {k: tf.TensorSpec(shape=v.shape, dtype=v.tf_dtype)
          for k, v in self.info.features.get_tensor_info().items()}
  return tf.data.Dataset.from_generator(examples, output_signature=spec)


def test_tfds_movielens_known_examples():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  report = DataReport()
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=_movielens_as_dataset):
    genres = tfds.builder("movielens/100k-ratings").info.features["movie_genres"].feature
    tables = load_tfds("movielens/100k-ratings", report=report, batch_size=2)
  inter = tables.interactions
  assert list(inter.columns[:2]) == ["user_id", "item_id"]
  assert inter[["user_id", "item_id"]].values.tolist() == [["u1", "m1"], ["u1", "m2"],
                                                           ["u2", "m1"]]
  assert inter["rating"].tolist() == [4.0, 5.0, 2.0]
  assert inter["timestamp"].tolist() == [881250949, 881250950, 881250951]
  items = tables.items.set_index("item_id")
  assert items.index.tolist() == ["m1", "m2"]
  assert items.loc["m1", "title"] == "Toy Story"
  # Genre labels come back as their names, not as integers.
  assert items.loc["m1", "tags"] == [genres.int2str(3), genres.int2str(4)]
  assert all(isinstance(t, str) for t in items.loc["m1", "tags"])
  users = tables.users.set_index("user_id")
  assert users.index.tolist() == ["u1", "u2"]
  assert users.loc["u2", "user_zip_code"] == "01234"
  assert isinstance(users.loc["u2", "user_occupation_label"], str)
  assert report.get("load", "examples") == 3


def test_tfds_movielens_random_mock_and_max_rows():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    tables = load_tfds("movielens/100k-ratings", max_rows=7, batch_size=3)
  assert len(tables.interactions) == 7
  assert tables.interactions["user_id"].map(type).eq(str).all()
  assert tables.items["tags"].map(lambda t: all(isinstance(x, str) for x in t)).all()


def test_tfds_synthetic_builder_matches_the_generator(tmp_path):
  from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
  import tfrec_music.data.synthetic_tfds  # noqa: F401  pylint: disable=g-import-not-at-top
  tables = load_tfds("tfrec_music_synthetic/tiny-interactions", data_dir=str(tmp_path))
  expected = synthetic.generate("tiny", seed=0).tables
  got = tables.interactions.sort_values(["user_id", "timestamp", "item_id"])
  want = expected.interactions.sort_values(["user_id", "timestamp", "item_id"])
  for column in ("user_id", "item_id", "timestamp"):
    assert got[column].tolist() == want[column].tolist()
  users = tables.users.set_index("user_id").sort_index()
  want_users = expected.users.set_index("user_id").loc[users.index]
  # `user_country` maps onto the canonical `country` by default.
  assert users["country"].tolist() == want_users["country"].tolist()


def test_tfds_unknown_name_says_how_to_fix():
  with pytest.raises(ValueError, match=r"tfds.list_builders\(\)"):
    load_tfds("no_such_dataset_tfrec_music")


def test_tfds_bad_arguments():
  with pytest.raises(ValueError, match="`max_rows` should be a positive integer"):
    load_tfds("movielens/100k-ratings", max_rows=0)


def test_tfds_error_names_the_example_and_the_feature():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  movies = list(_MOVIES)
  movies[1] = (b"m2", b"Heat", [1], b"u1", float("nan"), 881250950, 0)

  def as_dataset(self, *args, **kwargs):  # a function, so TFDS binds `self`
    return _movielens_as_dataset(self, *args, movies=movies, **kwargs)

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=as_dataset):
    with pytest.raises(DataValidationError) as info:
      load_tfds("movielens/100k-ratings")
  error = info.value
  assert error.file == "tfds:movielens/100k-ratings[train]" and error.row == 2
  # The feature's own name, with the canonical column it is read as.
  assert error.column == "user_rating" and "read as `rating`" in str(error)
  assert "example 2" in str(error)


def test_lastfm_misspelt_optional_column_is_reported_not_silently_lost(tmp_path):
  folder = _copy(LASTFM, tmp_path)
  users = (folder / "users.csv").read_text()
  (folder / "users.csv").write_text(users.replace("loved_tracks", "loved_trakcs", 1))
  clean_report, report = DataReport(), DataReport()
  clean = load_lastfm_loved(LASTFM, report=clean_report)
  tables = load_lastfm_loved(str(folder), report=report)
  # The loved-only pairs are gone, and the report says which column was not read.
  assert len(tables.interactions) == len(clean.interactions) - 2
  assert report.get("load", "ignored_columns")["users.csv"] == ["realname", "loved_trakcs"]
  assert clean_report.get("load", "ignored_columns") == {"users.csv": ["realname"]}
