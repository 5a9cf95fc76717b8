"""The synthetic catalogue: determinism, structure, signal, oracle, streaming, TFDS."""

import glob
import json
import os

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music.data import synthetic
from tfrec_music.data.tables import AUDIO_FEATURES
from tfrec_music.data.tables import validate_tables
from conftest import run_python

ITEM_COLUMNS = {"item_id", "title", "artist", "album", "tags", "genre", "parent_genre",
                "genre_level", "text", "danceability", "energy", "loudness", "speechiness",
                "acousticness", "valence", "tempo"}


@pytest.fixture(scope="module")
def tiny():
  return synthetic.generate("tiny", seed=0)


def _leave_last_out(catalogue):
  """(users [N], targets [N] item indices, history per user, popularity [I])."""
  inter = catalogue.tables.interactions
  item_ids = catalogue.tables.items["item_id"].to_numpy()
  inter = inter.assign(i=pd.Index(item_ids).get_indexer(inter["item_id"]))
  last = inter.groupby("user_id", sort=False).tail(1)
  train = inter.drop(last.index)
  history = train.groupby("user_id")["i"].apply(np.asarray)
  popularity = np.bincount(train["i"], minlength=len(item_ids)).astype(np.float64)
  return last["user_id"].to_numpy(), last["i"].to_numpy(), history, popularity, item_ids


def _hit_rate(scores, users, targets, history, k=10):
  scores = np.array(scores, dtype=np.float64)
  for row, user in enumerate(users):
    scores[row, history[user]] = -np.inf  # the user's other items are not candidates
  target_scores = scores[np.arange(len(users)), targets]
  rank = (scores > target_scores[:, None]).sum(1)
  return float((rank < k).mean())


def test_same_seed_gives_identical_tables(tiny):
  again = synthetic.generate("tiny", seed=0)
  for name in ("interactions", "items", "users", "user_links"):
    pd.testing.assert_frame_equal(getattr(tiny.tables, name), getattr(again.tables, name))
  pd.testing.assert_frame_equal(tiny.playlists, again.playlists)
  users = tiny.tables.users["user_id"][:5]
  np.testing.assert_array_equal(tiny.oracle.scores(users, tiny.oracle.item_ids),
                                again.oracle.scores(users, again.oracle.item_ids))


def test_different_seed_differs(tiny):
  other = synthetic.generate("tiny", seed=1)
  assert not tiny.tables.interactions["item_id"].equals(other.tables.interactions["item_id"])
  assert not tiny.tables.items["genre"].equals(other.tables.items["genre"])


def test_tables_validate_and_have_every_column(tiny):
  tables = tiny.tables
  assert tables.name == "synthetic"
  assert tables.sources["interactions"] == "synthetic:tiny/interactions"
  assert ITEM_COLUMNS <= set(tables.items.columns)
  assert set(synthetic.AUDIO_COLUMNS) <= set(AUDIO_FEATURES)
  assert {"user_id", "country", "username"} <= set(tables.users.columns)
  assert list(tables.interactions.columns) == list(synthetic.INTERACTION_COLUMNS)
  assert list(tables.user_links.columns) == ["user_id", "other_user_id"]
  validate_tables(tables)  # still valid when validated again
  items = tables.items
  assert items["item_id"].iloc[42] == "t00042"
  assert tables.users["user_id"].iloc[42] == "u00042"
  assert items["artist"].str.match(r"^a\d{4} \S+$").all()
  assert set(items["genre_level"]) <= {1, 2, 3} and len(set(items["genre_level"])) >= 2
  assert all(isinstance(t, list) and g in t for t, g in zip(items["tags"], items["genre"]))
  n_words = items["text"].str.split().str.len()
  assert n_words.between(20, 40).all()
  for col in ("danceability", "energy", "speechiness", "acousticness", "valence"):
    assert items[col].between(0, 1).all(), col
  assert items["loudness"].between(-60, 0).all()
  assert items["tempo"].between(60, 200).all()
  assert tables.users["country"].nunique() >= 8
  inter = tables.interactions
  assert not inter.duplicated(["user_id", "item_id"]).any()  # items distinct per user
  assert inter.groupby("user_id").size().min() >= 8  # tiny preset promise
  assert (inter["weight"] >= 1).all()
  assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_ratings_are_bimodal(tiny):
  share = tiny.tables.interactions["rating"].value_counts(normalize=True)
  assert share[1.0] > max(share[2.0], share[3.0])
  assert share[4.0] + share[5.0] > 2 * max(share[2.0], share[3.0])
  assert share[4.0] > share[3.0] and share[5.0] > share[3.0]


def test_ratings_and_play_counts_follow_affinity(tiny):
  inter = tiny.tables.interactions
  users = inter["user_id"].to_numpy()
  taste = tiny.oracle.user_taste(users)
  idx = pd.Index(tiny.oracle.item_ids).get_indexer(inter["item_id"])
  affinity = np.einsum("nd,nd->n", taste, tiny.oracle.item_vectors[idx])
  # Within-user centred affinity; high ratings and many plays go with it.
  centred = affinity - pd.Series(affinity).groupby(users).transform("mean").to_numpy()
  assert np.corrcoef(centred, inter["rating"])[0, 1] > 0.1
  assert np.corrcoef(centred, np.log(inter["weight"]))[0, 1] > 0.1


def test_timestamps_increase_per_user_within_two_years(tiny):
  inter = tiny.tables.interactions
  diffs = inter.groupby("user_id")["timestamp"].diff().dropna()
  assert (diffs > 0).all()
  config = tiny.config
  assert inter["timestamp"].min() >= config.start_time
  assert inter["timestamp"].max() <= config.start_time + config.window_days * 86_400


def test_popularity_is_power_law(tiny):
  counts = np.sort(tiny.tables.interactions["item_id"].value_counts().reindex(
      tiny.tables.items["item_id"], fill_value=0).to_numpy())[::-1]
  top = counts[:len(counts) // 10].sum() / counts.sum()
  assert top > 0.3, top
  degree = tiny.tables.interactions.groupby("user_id").size()
  assert degree.max() > 4 * degree.median()  # a few heavy users


def test_friends_share_taste_more_than_random_pairs(tiny):
  links = tiny.tables.user_links
  pairs = set(zip(links["user_id"], links["other_user_id"]))
  assert all((b, a) in pairs for a, b in pairs)  # listed both ways
  assert not (links["user_id"] == links["other_user_id"]).any()
  friends = tiny.oracle.taste_similarity(links["user_id"], links["other_user_id"]).mean()
  rng = np.random.default_rng(0)
  ids = tiny.tables.users["user_id"].to_numpy()
  random = tiny.oracle.taste_similarity(rng.choice(ids, 2000), rng.choice(ids, 2000)).mean()
  assert friends > random + 0.1, (friends, random)


def test_oracle_beats_popularity_leave_one_out(tiny):
  users, targets, history, popularity, item_ids = _leave_last_out(tiny)
  oracle = _hit_rate(tiny.oracle.score_fn(item_ids)(users), users, targets, history)
  popular = _hit_rate(np.broadcast_to(popularity, (len(users), len(item_ids))), users,
                      targets, history)
  assert oracle > 2 * popular and oracle > 0.2, (oracle, popular)


def test_taste_drifts_late_history_predicts_last_item_better(tiny):
  # Each user's last item is drawn from the late taste: the centroid of the
  # other late items points at it more than the centroid of the early half.
  inter = tiny.tables.interactions
  vectors = tiny.oracle.item_vectors[pd.Index(tiny.oracle.item_ids).get_indexer(
      inter["item_id"])]
  early_cos, late_cos = [], []
  for rows in inter.groupby("user_id", sort=False).indices.values():
    half = len(rows) // 2
    target = vectors[rows[-1]]
    for part, out in ((rows[:half], early_cos), (rows[half:-1], late_cos)):
      centroid = vectors[part].mean(0)
      out.append(centroid @ target / np.linalg.norm(centroid) / np.linalg.norm(target))
  assert np.mean(late_cos) > np.mean(early_cos) + 0.02, (np.mean(late_cos), np.mean(early_cos))


def test_content_carries_latent_signal(tiny):
  items = tiny.tables.items
  vectors = tiny.oracle.item_vectors
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, len(items), (2, 4000))
  keep = a != b
  a, b = a[keep], b[keep]
  latent = np.linalg.norm(vectors[a] - vectors[b], axis=1)
  audio = items[list(synthetic.AUDIO_COLUMNS)].to_numpy(np.float64)
  audio = (audio - audio.mean(0)) / audio.std(0)
  audio_dist = np.linalg.norm(audio[a] - audio[b], axis=1)
  assert np.corrcoef(latent, audio_dist)[0, 1] > 0.2
  same_artist = (items["artist"].to_numpy()[a] == items["artist"].to_numpy()[b])
  same_parent = (items["parent_genre"].to_numpy()[a] == items["parent_genre"].to_numpy()[b])
  assert same_artist.any()
  assert latent[same_artist].mean() < latent[same_parent & ~same_artist].mean() \
      < latent[~same_parent].mean()
  # Text words name the genre: a genre's lyrics share its vocabulary.
  words = items["text"].str.split().apply(set)
  genre = items["parent_genre"].to_numpy()
  overlap = np.array([len(words[i] & words[j]) for i, j in zip(a[:1000], b[:1000])])
  assert overlap[same_parent[:1000]].mean() > overlap[~same_parent[:1000]].mean()
  assert len(set(genre)) == 6


def test_oracle_scores_and_errors(tiny):
  oracle = tiny.oracle
  users = ["u00003", "u00001"]
  items = ["t00007", "t00002", "t00100"]
  scores = oracle.scores(users, items)
  assert scores.shape == (2, 3)
  full = oracle.score_fn(oracle.item_ids)(users)
  np.testing.assert_allclose(scores, full[:, [7, 2, 100]], rtol=1e-6)
  taste = oracle.user_taste(users)
  np.testing.assert_allclose(np.linalg.norm(taste, axis=1), 1.0, rtol=1e-5)
  manual = taste @ oracle.item_vectors[[7, 2, 100]].T / oracle.temperature \
      + oracle.item_bias[[7, 2, 100]]
  np.testing.assert_allclose(scores, manual, rtol=1e-5)
  np.testing.assert_allclose(oracle.taste_similarity(users, users), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="'u99999'"):
    oracle.scores(["u00001", "u99999"], items)
  with pytest.raises(ValueError, match="'nope'"):
    oracle.score_fn(["t00001", "nope"])
  # Playlists are known as "users" too.
  assert oracle.scores(tiny.playlists["playlist_id"][:1], items).shape == (1, 3)


def test_oracle_round_trip_in_fresh_process(tiny, tmp_path):
  path = str(tmp_path / "oracle.npz")
  tiny.oracle.save(path)
  users = tiny.tables.users["user_id"].to_numpy()[:20]
  expected = tiny.oracle.scores(users, tiny.oracle.item_ids)
  out = str(tmp_path / "scores.npy")
  run_python(
      "import numpy as np\n"
      "from tfrec_music.data.synthetic import Oracle\n"
      f"o = Oracle.load({path!r})\n"
      f"np.save({out!r}, o.scores(['u%05d' % i for i in range(20)], o.item_ids))\n")
  np.testing.assert_array_equal(np.load(out), expected)
  with np.load(path, allow_pickle=False) as data:
    assert data["user_ids"].dtype.kind == "U"


def test_playlists_follow_their_theme(tiny):
  playlists = tiny.playlists
  assert {"playlist_id", "user_id", "item_id", "pos", "name", "timestamp"} <= set(
      playlists.columns)
  assert playlists["playlist_id"].nunique() == tiny.config.n_playlists
  sizes = playlists.groupby("playlist_id").size()
  assert sizes.between(tiny.config.playlist_min_tracks, tiny.config.playlist_max_tracks).all()
  pos_ok = playlists.groupby("playlist_id")["pos"].apply(
      lambda p: list(p) == list(range(len(p))))
  assert pos_ok.all()
  assert not playlists.duplicated(["playlist_id", "item_id"]).any()
  assert playlists["name"].str.match(r"^\w+ .+ \d+$").all()
  assert set(playlists["user_id"]) <= set(tiny.tables.users["user_id"])
  items = tiny.tables.items.set_index("item_id")
  genre_parent = items.drop_duplicates("genre").set_index("genre")["parent_genre"]
  track_parent = items.loc[playlists["item_id"], "parent_genre"].to_numpy()
  theme_parent = genre_parent.reindex(playlists["theme_genre"]).to_numpy()
  match = (track_parent == theme_parent).mean()
  base = (items["parent_genre"].value_counts(normalize=True) ** 2).sum()
  assert match > 2 * base, (match, base)
  mood_match = (items.loc[playlists["item_id"], "mood"].to_numpy()
                == playlists["theme_mood"].to_numpy()).mean()
  assert mood_match > 1.5 / len(synthetic.MOODS)


def test_data_card_counts(tiny):
  card = tiny.data_card()
  assert card["n_interactions"] == len(tiny.tables.interactions)
  assert card["n_users"] == len(tiny.tables.users) == tiny.config.n_users
  assert card["n_items"] == len(tiny.tables.items)
  assert card["n_user_links"] == len(tiny.tables.user_links)
  assert card["n_playlist_rows"] == len(tiny.playlists)
  assert sum(card["rating_histogram"].values()) == card["n_interactions"]
  assert card["user_degree"]["max"] == tiny.tables.interactions.groupby("user_id").size().max()
  assert 0 < card["sparsity"] < 1
  json.dumps(card)
  text = synthetic.format_data_card(card)
  assert "interactions" in text and f"{card['n_interactions']:,}" in text


def test_write_large_shards_equal_generate(tmp_path):
  overrides = {"n_users": 300}
  card = synthetic.write_large(str(tmp_path), preset="tiny", seed=3, shard_rows=2000,
                               **overrides)
  shards = sorted(glob.glob(str(tmp_path / "interactions-*-of-*.parquet")))
  assert len(shards) >= 2
  assert os.path.basename(shards[0]) == f"interactions-00000-of-{len(shards):05d}.parquet"
  frames = [pd.read_parquet(s) for s in shards]
  assert all(len(f) == 2000 for f in frames[:-1])
  streamed = pd.concat(frames, ignore_index=True)
  expected = synthetic.generate("tiny", seed=3, **overrides)
  inter = expected.tables.interactions
  assert len(streamed) == len(inter) == card["n_interactions"]
  for column in inter.columns:
    np.testing.assert_array_equal(streamed[column].to_numpy(), inter[column].to_numpy(),
                                  err_msg=column)
  items = pd.read_parquet(tmp_path / "items.parquet")
  assert items["item_id"].tolist() == expected.tables.items["item_id"].tolist()
  assert items["tags"].apply(list).tolist() == expected.tables.items["tags"].tolist()
  links = pd.read_parquet(tmp_path / "user_links.parquet")
  assert len(links) == len(expected.tables.user_links)
  assert len(pd.read_parquet(tmp_path / "users.parquet")) == 300
  assert len(pd.read_parquet(tmp_path / "playlists.parquet")) == len(expected.playlists)
  oracle = synthetic.Oracle.load(str(tmp_path / "oracle.npz"))
  np.testing.assert_array_equal(oracle.scores(["u00001"], oracle.item_ids),
                                expected.oracle.scores(["u00001"], oracle.item_ids))
  on_disk = json.loads((tmp_path / "data_card.json").read_text())
  assert on_disk["n_interactions"] == card["n_interactions"]
  assert on_disk["rating_histogram"] == expected.data_card()["rating_histogram"]
  assert on_disk["item_degree"] == expected.data_card()["item_degree"]


def test_tfds_builder_loads_tiny_configs(tiny, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfrec_music.data.synthetic_tfds  # noqa: F401  (registers the builder)
  interactions = tfds.load("tfrec_music_synthetic/tiny-interactions", split="train",
                           data_dir=str(tmp_path))
  rows = list(tfds.as_numpy(interactions.take(3)))
  assert len(rows) == 3 and rows[0]["user_id"].startswith(b"u")
  assert rows[0]["rating"] in (1.0, 2.0, 3.0, 4.0, 5.0)
  assert int(interactions.cardinality()) == len(tiny.tables.interactions)
  tracks = tfds.load("tfrec_music_synthetic/tiny-tracks", split="train",
                     data_dir=str(tmp_path))
  assert int(tracks.cardinality()) == len(tiny.tables.items)
  track = next(iter(tfds.as_numpy(tracks.take(1))))
  assert track["tags"].dtype == object and len(track["tags"]) >= 2
  assert 60 <= track["tempo"] <= 200


def test_bad_preset_and_overrides_raise():
  with pytest.raises(ValueError, match=r"`preset` should be one of \['default', 'large', "
                     r"'tiny'\]. Received: `preset` = 'huge'."):
    synthetic.generate("huge")
  with pytest.raises(ValueError, match="n_userz"):
    synthetic.generate("tiny", n_userz=3)
  with pytest.raises(ValueError, match="`temperature` should be a positive number"):
    synthetic.generate("tiny", temperature=0.0)
  with pytest.raises(ValueError, match="write_large"):
    synthetic.generate("large")
  with pytest.raises(ValueError, match="`shard_rows`"):
    synthetic.write_large("/tmp/unused", preset="tiny", shard_rows=0)
