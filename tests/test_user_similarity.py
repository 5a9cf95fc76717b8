"""User similarity: golden scores, numpy references, parts, metrics, export round trip, CLIs."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401

from conftest import REPO
from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.evaluation import similarity as sim
from tfrec_music.export.saved_model import export_versioned
from tfrec_music.heatmap import decode_png
from tfrec_music.heatmap import similarity_heatmap
from tfrec_music.models.family import EvalContext
from tfrec_music.models.track_vectors import TrackVectors
from tfrec_music.models.user_similarity import SimilarityIndex
from tfrec_music.models.user_similarity import TasteParts
from tfrec_music.models.user_similarity import UserSimilarityFamily
from tfrec_music.models.user_similarity import recent_rows
from tfrec_music.models.user_similarity import taste_centroids
from tfrec_music.models.user_similarity.profiles import blend
from tfrec_music.models.user_similarity.profiles import fit_parts
from tfrec_music.models.user_similarity.profiles import part_weights
from tfrec_music.models.user_similarity.serving import distinct_counts
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def catalogue():
  return synthetic.generate("tiny", seed=0)


@pytest.fixture(scope="module")
def fitted(catalogue, tmp_path_factory):
  prepared = prepare(catalogue.tables, PrepareConfig(**UserSimilarityFamily.prepare_overrides))
  config = UserSimilarityFamily.make_config("tiny", {"track_vectors": "text", "word_dim": 16})
  family = UserSimilarityFamily(config, prepared)
  job = tmp_path_factory.mktemp("job")
  family.fit(str(job))
  return family, job


# ----------------------------------------------------------------- golden numbers
def test_euclidean_scores_by_hand_and_distance_zero():
  # u0 = (0, 0); u1 = (3, 4): distance 5; u2 = (0, 0): distance 0; u3 = (1, 0): distance 1.
  index = SimilarityIndex(["u0", "u1", "u2", "u3"], [[0, 0], [3, 4], [0, 0], [1, 0]],
                          epsilon=1e-6)
  np.testing.assert_allclose(index.score_pairs(["u0", "u0", "u0"], ["u1", "u2", "u3"]),
                             [1 / (5 + 1e-6), 1e6, 1 / (1 + 1e-6)])
  table = index.most_similar("u0", 3)
  assert table["user"].tolist() == ["u2", "u3", "u1"]  # distance 0 first, finite score
  assert np.isfinite(table["score"]).all() and table["score"].iloc[0] > 1e5
  with pytest.raises(KeyError, match="Unknown user 'nope'"):
    index.most_similar("nope")


def test_cosine_scores_by_hand():
  # cos((1, 0), (1, 1)) = 1/sqrt(2); cos((1, 0), (-2, 0)) = -1.
  index = SimilarityIndex(["a", "b", "c"], [[1, 0], [1, 1], [-2, 0]], metric="cosine")
  np.testing.assert_allclose(index.score_pairs(["a", "a"], ["b", "c"]), [2 ** -0.5, -1.0])
  assert index.most_similar("a", 2)["user"].tolist() == ["b", "c"]


def test_centroids_by_hand():
  tracks = TrackVectors(np.array(["t0", "t1", "t2"]), np.array([[2, 0], [0, 2], [9, 9]], np.float32),
                        np.array([True, True, False]), "test")
  ids, centroids, counts = taste_centroids(["a", "a", "b", "b", "c"], [0, 1, 0, 2, 2], tracks)
  # a: mean((2, 0), (0, 2)) = (1, 1); b: t2 has no vector -> (2, 0); c: nothing -> left out.
  assert ids.tolist() == ["a", "b"] and counts.tolist() == [2, 1]
  np.testing.assert_allclose(centroids, [[1, 1], [2, 0]])


def test_recent_rows_by_hand():
  frame = pd.DataFrame({"user_id": ["a"] * 4 + ["b"],
                        "item_id": ["t1", "t2", "t3", "t4", "t5"],
                        "timestamp": [4, 1, 3, 2, 9]})
  # a's half by time: t3 (3), t1 (4); b keeps its only row.
  assert sorted(recent_rows(frame, 0.5)["item_id"]) == ["t1", "t3", "t5"]
  assert len(recent_rows(frame, 1.0)) == 5
  assert sorted(recent_rows(frame, 0.01)["item_id"]) == ["t1", "t5"]  # at least one each
  # Without timestamps there is no recency: every row stays.
  assert len(recent_rows(frame.drop(columns="timestamp"), 0.5)) == 5


def test_blended_cosine_is_the_weighted_mean_of_part_cosines_by_hand():
  # Part 1: cos((1, 0), (1, 1)) = 1/sqrt(2); part 2: cos((0, 2), (0, -3)) = -1.
  # Weights (1, 2): blocks (1, 0 | 0, 2) and (0.707, 0.707 | 0, -2), each of
  # norm sqrt(1 + 4) = sqrt(5): cosine = (0.7071 - 4) / 5 = (1 * 0.7071 + 4 * -1) / (1 + 4).
  vectors = blend([np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [0.0, -3.0]])],
                  np.array([1.0, 2.0]))
  index = SimilarityIndex(["a", "b"], vectors, metric="cosine")
  np.testing.assert_allclose(index.score_pairs(["a"], ["b"]), [(2 ** -0.5 - 4) / 5], rtol=1e-6)
  # One part is used as it is (euclidean keeps its meaning).
  np.testing.assert_array_equal(blend([np.array([[3.0, 4.0]])], np.ones(1)), [[3.0, 4.0]])


def test_part_weights_match_numpy_reference():
  rng = np.random.default_rng(0)
  parts = [rng.normal(size=(60, 4)), rng.normal(size=(60, 3)) + 2.0]
  got = part_weights(parts, seed=1, n_pairs=200_000)
  for weight, vectors in zip(got, parts):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = (unit @ unit.T)[~np.eye(60, dtype=bool)]  # every ordered pair of two users
    assert weight == pytest.approx(cosines.std() ** -0.5, rel=0.02)
  assert part_weights(parts[:1]).tolist() == [1.0]


@pytest.mark.parametrize("b,t,seed", [(1, 1, 0), (3, 6, 1), (8, 30, 2), (2, 0, 3)])
def test_distinct_counts_match_numpy_reference(b, t, seed):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, 5, size=(b, t))
  usable = rng.random((b, t)) < 0.8
  cols, counts, first = (x.numpy() for x in distinct_counts(tf.constant(rows, tf.int64),
                                                             tf.constant(usable)))
  for r in range(b):
    ref_cols, ref_counts = np.unique(rows[r][usable[r]], return_counts=True)
    assert cols[r][first[r]].tolist() == ref_cols.tolist()
    assert counts[r][first[r]].tolist() == ref_counts.tolist()


def test_new_users_are_placed_where_the_indexed_users_are():
  # Every part places a user from their tracks alone: the lsa projection is the
  # indexed vector up to scale, the ALS fold-in re-solves the user's last
  # ALS step, the centroid is the same mean (cosine ~ 1 for each).
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(40), 12)
  items = rng.integers(0, 90, size=len(users))
  plays = rng.integers(1, 4, size=len(users)).astype(float)
  item_ids = np.array([f"t{i}" for i in range(90)])
  tracks = TrackVectors(item_ids, rng.normal(size=(90, 5)).astype(np.float32),
                        np.ones(90, bool), "test")
  rows = {"all": (users, items, plays), "centroid": (users, items, plays)}
  blended, placed, taste, by_part = fit_parts(
      ("lsa", "als", "centroid"), rows, 40, item_ids, tracks, lsa_dim=8, als_rank=4,
      als_reg=1.0, als_alpha=10.0, seed=0)
  assert placed.all() and blended.shape == (40, 8 + 4 + 5)
  # A track played n times is listed n times (repeats are plays).
  histories = [np.repeat(items[users == u], plays[users == u].astype(int)) for u in range(40)]
  query, known = taste.queries(histories)
  assert known.all()
  cosine = (query * blended).sum(1) / np.linalg.norm(query, axis=1) / np.linalg.norm(
      blended, axis=1)
  assert cosine.min() > 0.99, cosine.min()
  _, known = taste.queries([np.array([-1, -1]), np.zeros(0, np.int64)])
  assert known.tolist() == [False, False]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("n,d,k", [(7, 3, 3), (50, 8, 10), (200, 16, 25)])
def test_top_k_matches_numpy_reference(metric, n, d, k):
  rng = np.random.default_rng(n)
  vectors = rng.normal(size=(n, d)).astype(np.float32)
  ids = [f"u{i}" for i in range(n)]
  index = SimilarityIndex(ids, vectors, metric=metric)
  for row in (0, n // 2, n - 1):
    ref = np.array([index.score_pairs([ids[row]], [ids[j]])[0] for j in range(n)])
    ref[row] = -np.inf
    order = np.argsort(-ref, kind="stable")[:k]
    got = index.most_similar(ids[row], k)
    assert got["user"].tolist() == [ids[j] for j in order]
    np.testing.assert_allclose(got["score"], ref[order], rtol=1e-5)


def test_similarity_metrics_by_hand():
  # Positives [3, 2], negatives [1, 2]: pairs (3>1, 3>2, 2>1, 2=2 half) -> 3.5 / 4.
  assert sim.pair_auc([3, 2], [1, 2]) == 0.875
  assert sim.spearman([1, 2, 3, 4], [10, 20, 30, 100]) == pytest.approx(1.0)
  assert sim.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  links = pd.DataFrame({"user_id": ["a", "b", "a", "x"], "other_user_id": ["b", "a", "c", "a"]})
  pairs = sim.friend_pairs(links, ["a", "b", "c"])  # x unknown; a-b listed twice
  assert [tuple(p) for p in pairs] == [("a", "b"), ("a", "c")]
  top = {"a": ["c", "d"], "b": ["d", "e"], "c": ["a", "b"]}
  out = sim.friend_in_top_k(lambda ids, k: np.array([top[i][:k] for i in ids]), pairs, k=2)
  # a: c is a friend (hit); b: no friend in [d, e]; c: a is a friend (hit) -> 2/3.
  assert out["friend_in_top2"] == pytest.approx(2 / 3) and out["users_with_friends"] == 3
  with pytest.raises(ValueError, match="`negative_scores` should not be empty"):
    sim.pair_auc([1.0], [])


# ----------------------------------------------------------------- family
def test_family_finds_friends_and_similar_artists(fitted, catalogue):
  family, job = fitted
  metrics = family.evaluate(EvalContext(oracle=catalogue.oracle))
  model, oracle = metrics["model"], metrics["oracle"]
  assert model["test/all/friend_pairs"] > 50
  assert 0.6 < model["test/all/friend_auc"] <= oracle["test/all/friend_auc"] + 0.05
  assert model["test/all/oracle_spearman"] > 0.3 and oracle["test/all/oracle_spearman"] == pytest.approx(1.0)
  assert 0 < model["test/all/friend_in_top10"] <= 1
  table = family.most_similar_users("u00005", 5)
  assert len(table) == 5 and "u00005" not in table["user"].tolist()
  assert table["score"].is_monotonic_decreasing
  # Similar artists come out similar: an artist's nearest artist shares its
  # parent genre far more often than a random artist does.
  artists = family.model.artists
  items = family.prepared.items.drop_duplicates("artist").set_index("artist")["parent_genre"]
  genre = items.reindex(artists.ids).to_numpy()
  nearest = items.reindex(artists.top_ids(artists.ids, 1)[:, 0]).to_numpy()
  same = np.mean(genre == nearest)
  base = np.mean(genre[:, None] == genre[None, :])
  assert same > base + 0.25, (same, base)
  # Unlike artists (different parent genre) score lower than like ones on average.
  matrix = artists.pairwise(artists.ids)
  like = genre[:, None] == genre[None, :]
  np.fill_diagonal(like, False)
  unlike = genre[:, None] != genre[None, :]
  assert matrix[like].mean() > matrix[unlike].mean()
  # The track scorer (centroid before the split vs every track) ranks held-out
  # tracks far above chance: mean rank percentile of the test targets.
  test = family.prepared.test
  scores = family.score_fn()("test")(test["user_id"].to_numpy())
  assert scores.shape == (len(test), family.prepared.n_items) and np.isfinite(scores).all()
  target = scores[np.arange(len(test)), family.prepared.item_index(test["item_id"])]
  assert np.mean((scores < target[:, None]).mean(1)) > 0.6
  valid = family.validation_metrics()
  assert set(valid) == {"valid/all/friend_auc", "valid/all/friend_pairs"}
  assert valid["valid/all/friend_auc"] == pytest.approx(model["valid/all/friend_auc"])
  assert (job / "heatmap_users.png").exists() and (job / "heatmap_artists.png").exists()
  assert (job / "logs" / "projector_users" / "projector_config.pbtxt").exists()


def test_builtin_heatmap_png(tmp_path):
  matrix = np.array([[np.nan, 1.0, 0.0], [1.0, np.nan, 0.5], [0.0, 0.5, np.nan]])
  files = similarity_heatmap(matrix, ["a", "b", "c"], str(tmp_path / "h.png"), cell=4,
                             use_matplotlib=False)
  image = decode_png((tmp_path / "h.png").read_bytes())
  assert image.shape == (12, 12, 3)
  assert image[0, 4].tolist() == [253, 231, 37]  # max -> viridis yellow
  assert image[0, 8].tolist() == [68, 1, 84]  # min -> viridis purple
  assert image[0, 0].tolist() == [128, 128, 128]  # NaN (self) -> grey
  assert "1\tb" in open(files[1], encoding="utf-8").read()


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="`metric` should be 'euclidean' or 'cosine'"):
    UserSimilarityFamily.make_config("tiny", {"metric": "manhattan"})
  with pytest.raises(ValueError, match="`track_vectors` should be one of"):
    UserSimilarityFamily.make_config("tiny", {"track_vectors": "lyrics"})
  for parts in ((), ("lsa", "lsa"), ("svd",)):
    with pytest.raises(ValueError, match=r"`parts` should be distinct values of \('lsa', 'als', "
                                         r"'centroid'\) \(at least one\)\. Received: `parts` = "):
      UserSimilarityFamily.make_config("tiny", {"parts": parts})


def test_collaborative_parts_alone_need_no_track_vectors(catalogue, tmp_path):
  prepared = prepare(catalogue.tables, PrepareConfig(**UserSimilarityFamily.prepare_overrides))
  family = UserSimilarityFamily(UserSimilarityFamily.make_config("tiny", {"parts": ("lsa",)}),
                                prepared)
  summary = family.fit(str(tmp_path))
  assert "track_vectors" not in summary and family.model.tracks is None
  assert family.model.artists is None and summary["part_dims"] == {"lsa": 16}
  metrics = family.evaluate(EvalContext(oracle=catalogue.oracle))["model"]
  assert metrics["test/all/friend_auc"] > 0.6
  history = family.history[family.history["user_id"] == "u00003"]["item_id"].tolist()
  assert family.model.similar_to_tracks(history, 3)["user"].iloc[0] == "u00003"
  with pytest.raises(ValueError, match="fit with 'centroid' in `parts`"):
    family.score_fn()


def test_export_round_trip_in_fresh_process(fitted, tmp_path):
  family, _ = fitted
  path = export_versioned(family.save, str(tmp_path / "exp"), family.name)
  users = family.model.users
  queries = ["u00005", users.ids[17], "unknown-user"]
  ref_ids, ref_scores = users.top_k(users.vectors[users.rows(queries[:2])], 10,
                                    exclude_rows=users.rows(queries[:2]))
  history = family.history[family.history["user_id"] == "u00007"]["item_id"].tolist()
  new_user = family.model.similar_to_tracks(history, 10)
  repeats = history[:2] * 2 + history[2:3]  # a track listed twice counts as two plays
  repeated_user = family.model.similar_to_tracks(repeats, 10)
  assert family.model.parts.names == ("lsa", "als", "centroid")
  out = json.loads(run_python(f"""
import json, numpy as np, tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for scann/
from tfrec_music.models.user_similarity import UserSimilarity
out = {{}}
for name, folder in (("exact", {path!r}), ("scann", {path!r} + "/scann")):
  m = tf.saved_model.load(folder)
  r = m.signatures["serving_default"](user_id=tf.constant({queries!r}))
  rows = [{history!r} + [""], ["nope"] + [""] * {len(history)},
          {repeats!r} + [""] * {len(history) + 1 - len(repeats)}]
  t = m.signatures["similar_to_tracks"](track_ids=tf.constant(rows))
  out[name] = {{"ids": r["user_ids"].numpy().astype(str).tolist(),
               "scores": r["scores"].numpy().tolist(), "known": r["known"].numpy().tolist(),
               "t_ids": t["user_ids"].numpy().astype(str).tolist(),
               "t_scores": t["scores"].numpy().tolist(), "t_known": t["known"].numpy().tolist()}}
lib = UserSimilarity.load({os.path.dirname(path)!r})
out["lib"] = lib.most_similar_users("u00005", 10)["user"].tolist()
print(json.dumps(out))
""").strip().splitlines()[-1])
  exact = out["exact"]
  assert exact["known"] == [True, True, False]
  assert exact["ids"][:2] == ref_ids.tolist()
  np.testing.assert_allclose(exact["scores"][:2], ref_scores, rtol=2e-3)
  assert exact["ids"][2] == [""] * 10 and exact["scores"][2] == [0.0] * 10
  assert exact["t_known"] == [True, False, True]
  assert exact["t_ids"][0] == new_user["user"].tolist()
  np.testing.assert_allclose(exact["t_scores"][0], new_user["score"], rtol=2e-3)
  assert exact["t_ids"][2] == repeated_user["user"].tolist()
  np.testing.assert_allclose(exact["t_scores"][2], repeated_user["score"], rtol=2e-3)
  # ScaNN is approximate; on 200 users it searches nearly everything.
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(out["scann"]["ids"][:2],
                                                               exact["ids"][:2])])
  assert recall >= 0.9 and out["scann"]["known"] == [True, True, False]
  assert "u00005" not in out["scann"]["ids"][0]
  assert out["lib"] == ref_ids[0].tolist()


def _cli(args, cwd, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True,
                        timeout=timeout, cwd=cwd, env=env)


@pytest.mark.slow
def test_task_and_similar_clis_on_tiny(tmp_path):
  proc = _cli(["trainer.task", "--model", "user_similarity", "--preset", "tiny",
               "--job-dir", str(tmp_path / "job"), "--export-dir", str(tmp_path / "exp")],
              tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "friend_auc" in proc.stdout and "model (user_similarity)" in proc.stdout
  version = tmp_path / "exp" / "user_similarity" / "1"
  metrics = json.loads((version / "metrics.json").read_text())
  assert metrics["model"]["test/all/friend_auc"] > 0.55
  assert (version / "scann" / "saved_model.pb").exists()
  card = json.loads((version / "model_card.json").read_text())
  assert card["fit"]["track_vectors"] == "two_tower"
  artist = (version / "vectors" / "artists" / "ids.txt").read_text().splitlines()[0]
  proc = _cli(["trainer.similar", "--export-dir", str(tmp_path / "exp"), "--user", "u00003",
               "--k", "4", "--artist", artist, "--heatmap", str(tmp_path / "h.png"),
               "--users", "u00001,u00002,u00003"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == "Users most similar to u00003 (cosine):"
  assert lines[1].split() == ["rank", "user", "score"] and lines[2].split()[0] == "1"
  assert f"Artists most similar to {artist}" in proc.stdout
  assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
  proc = _cli(["trainer.similar", "--export-dir", str(tmp_path / "exp"), "--user", "nobody"],
              tmp_path)
  assert proc.returncode == 2 and "Unknown user 'nobody'" in proc.stderr
