"""User similarity: golden scores, numpy reference, metrics, export round trip, CLIs."""

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
from tfrec_music.models.user_similarity import UserSimilarityFamily
from tfrec_music.models.user_similarity import recent_rows
from tfrec_music.models.user_similarity import taste_centroids
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def catalog():
  return synthetic.generate("tiny", seed=0)


@pytest.fixture(scope="module")
def fitted(catalog, tmp_path_factory):
  prepared = prepare(catalog.tables, PrepareConfig(**UserSimilarityFamily.prepare_overrides))
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
def test_family_finds_friends_and_similar_artists(fitted, catalog):
  family, job = fitted
  metrics = family.evaluate(EvalContext(oracle=catalog.oracle))
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


def test_export_round_trip_in_fresh_process(fitted, tmp_path):
  family, _ = fitted
  path = export_versioned(family.save, str(tmp_path / "exp"), family.name)
  users = family.model.users
  queries = ["u00005", users.ids[17], "unknown-user"]
  ref_ids, ref_scores = users.top_k(users.vectors[users.rows(queries[:2])], 10,
                                    exclude_rows=users.rows(queries[:2]))
  history = family.history[family.history["user_id"] == "u00007"]["item_id"].tolist()
  new_user = family.model.similar_to_tracks(history, 10)
  out = json.loads(run_python(f"""
import json, numpy as np, tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for scann/
from tfrec_music.models.user_similarity import UserSimilarity
out = {{}}
for name, folder in (("exact", {path!r}), ("scann", {path!r} + "/scann")):
  m = tf.saved_model.load(folder)
  r = m.signatures["serving_default"](user_id=tf.constant({queries!r}))
  rows = [{history!r} + [""], ["nope"] + [""] * {len(history)}]
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
  assert exact["t_known"] == [True, False]
  assert exact["t_ids"][0] == new_user["user"].tolist()
  np.testing.assert_allclose(exact["t_scores"][0], new_user["score"], rtol=2e-3)
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
  assert lines[0] == "Users most similar to u00003 (euclidean):"
  assert lines[1].split() == ["rank", "user", "score"] and lines[2].split()[0] == "1"
  assert f"Artists most similar to {artist}" in proc.stdout
  assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
  proc = _cli(["trainer.similar", "--export-dir", str(tmp_path / "exp"), "--user", "nobody"],
              tmp_path)
  assert proc.returncode == 2 and "Unknown user 'nobody'" in proc.stderr
