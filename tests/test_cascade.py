"""Retrieve then rank: config checks, history pair features, hard negatives, evaluation beside
retrieval, export round trip."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.models.cascade import CascadeConfig
from tfrec_music.models.cascade import CascadeFamily
from tfrec_music.models.cascade import HardNegativeDCN
from tfrec_music.models.rerank_features import HistoryFeatures
from tfrec_music.models.rerank_features import causal_rows
from tfrec_music.models.family import EvalContext
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalogue():
  return synthetic.generate("tiny", seed=0)


@pytest.fixture(scope="module")
def trained(catalogue, tmp_path_factory):
  prepared = prepare(catalogue.tables, PrepareConfig(**CascadeFamily.prepare_overrides))
  family = CascadeFamily(CascadeFamily.make_config("tiny", {}), prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  export = str(tmp_path_factory.mktemp("export") / "1")
  signatures = family.save(export)
  return family, export, signatures


@pytest.mark.parametrize("overrides,match", [
    ({"top_k": 20, "candidates": 10}, "`top_k`"),
    ({"hard_negatives": 0, "random_negatives": 0}, "needs negatives"),
    ({"blend_weights": (0.5, -1.0)}, "`blend_weights`"),
    ({"candidates": 0}, "`candidates`"),
    ({"recent_positives": -1}, "`recent_positives`"),
    ({"recent_share": 1.5}, r"`recent_share` should be in \[0, 1\]"),
    ({"recent_share": -0.1}, r"`recent_share` should be in \[0, 1\]"),
    ({"history_features": ("artist", "tempo")}, "`history_features`"),
    ({"rankers": 0}, "`rankers`"),
])
def test_config_rejects_bad_values(overrides, match):
  with pytest.raises(ValueError, match=match):
    CascadeConfig(**overrides)


def test_history_features_golden_numbers():
  items = pd.DataFrame({"item_id": ["t0", "t1", "t2", "t3"],
                        "artist": ["a", "a", "b", "b"],
                        "album": ["x", "y", "z", ""],
                        "genre": ["rock", "rock", "rock", "jazz"]})
  counts = np.array([3.0, 0.0, 7.0, 1.0])
  features = HistoryFeatures(items, counts, ("artist", "album", "genre", "popularity"), length=4)
  assert features.names == ("artist_share", "album_share", "genre_share", "history_fill",
                            "popularity")
  history = np.array([[-1, 0, 1, 2],    # 3 tracks: artists a a b, albums x y z, all rock
                      [-1, -1, -1, -1],  # no history
                      [-1, -1, 3, 3]])   # t3 twice: artist b, album missing, jazz
  candidates = np.array([1, 0, 3])
  own = np.array([True, False, False])
  got = features.numpy(history, candidates, own)["dense"]
  scale = 1.0 / np.log1p(7.0)  # the most played track: 7 plays
  want = [
      # t1 (artist a: t0, t1 of 3; album y: t1 of 3; rock: 3 of 3); 3 of 4 slots;
      # own play: max(0 - 1, 0) = 0 other plays.
      [2 / 3, 1 / 3, 3 / 3, 3 / 4, 0.0],
      # Empty history: shares 0 (no division by zero); t0 has 3 plays by others.
      [0.0, 0.0, 0.0, 0.0, np.log1p(3.0) * scale],
      # t3 against t3 t3: artist 2/2; its album is missing, which never matches; jazz 2/2.
      [1.0, 0.0, 1.0, 2 / 4, np.log1p(1.0) * scale]]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Unknown candidates (-1) match nothing and have no plays.
  np.testing.assert_allclose(features.numpy(history[:1], np.array([-1]))["dense"],
                             [[0.0, 0.0, 0.0, 3 / 4, 0.0]], atol=1e-7)


def test_causal_rows_hold_the_tracks_strictly_before_each_row():
  frame = pd.DataFrame({"user_id": ["u", "u", "u", "v", "v"]})
  rows = causal_rows(frame, np.array([5, 6, 7, 8, 9]), length=2)
  # u: [], [5], [5, 6]; v starts afresh: [], [8]. Padding -1 in front.
  assert rows.tolist() == [[-1, -1], [-1, 5], [5, 6], [-1, -1], [-1, 8]]


def test_presets_follow_the_retrieval_preset():
  assert CascadeFamily.make_config("tiny", {}).retrieval_preset == "tiny"
  assert CascadeFamily.make_config("default", {}).retrieval_preset == "default"
  config = CascadeFamily.make_config("tiny", {"retrieval_overrides": {"epochs": 1}})
  assert config.retrieval_overrides == (("epochs", 1),)
  assert config.ranker_config().labels == "implicit"


def test_hard_negatives_come_from_retrieved_tracks_the_user_never_had(trained):
  family, _, _ = trained
  ranker = family.ranker
  prepared = family.prepared
  frame = prepared.train.head(200)
  n_pos = len(frame)
  encoded_item = ranker.encoded_items["item_id"]  # catalogue row -> item lookup index
  seen = set(zip(ranker.pair_features(prepared.train["user_id"].to_numpy(),
                                      np.zeros(len(prepared.train), np.int64))["user_id"],
                 encoded_item[prepared.item_index(prepared.train["item_id"])]))

  def negatives(hard, uniform):
    ranker.hard, ranker.uniform = hard, uniform
    try:
      rows = ranker._implicit_rows(frame, seed=3)  # pylint: disable=protected-access
    finally:
      ranker.hard, ranker.uniform = family.config.hard_negatives, family.config.random_negatives
    labels = rows["label"]
    assert labels[:n_pos].tolist() == [1.0] * n_pos and not labels[n_pos:].any()
    return rows["user_id"][n_pos:], rows["item_id"][n_pos:]

  # Only hard negatives: every one is among the user's retrieved candidates and
  # none is a track the user had in training.
  users, items = negatives(8, 0)
  assert len(items) > 0 and not any((u, i) in seen for u, i in zip(users, items))
  by_user = dict(zip(ranker.pair_features(frame["user_id"].to_numpy(),
                                          np.zeros(n_pos, np.int64))["user_id"],
                     frame["user_id"].astype(str)))
  raw_users = np.array([by_user[u] for u in users])
  pools = encoded_item[family._training_candidates()(raw_users)]  # pylint: disable=protected-access
  assert (pools == items[:, None]).any(axis=1).all()
  # Only uniform negatives: most fall outside the 50 retrieved of 220 tracks.
  users, items = negatives(0, 8)
  pools = encoded_item[family._training_candidates()(np.array([by_user[u] for u in users]))]  # pylint: disable=protected-access
  assert (pools == items[:, None]).any(axis=1).mean() < 0.5
  assert not any((u, i) in seen for u, i in zip(users, items))


def test_ranker_ensemble_scores_with_the_mean_logit_in_python_and_in_the_export(catalogue,
                                                                              tmp_path):
  """`rankers=2`: two re-rankers with their own seeds; the cascade and its export score a
  candidate with the mean of their logits; a finished re-ranker is restored, not retrained.

  One epoch per re-ranker (this test fits six): what it checks does not depend on training
  length.
  """
  prepared = prepare(catalogue.tables, PrepareConfig(**CascadeFamily.prepare_overrides))
  family = CascadeFamily(CascadeFamily.make_config("tiny", {"rankers": 2, "epochs": 1}), prepared)
  summary = family.fit(str(tmp_path / "job"))
  assert [r.config.seed for r in family.rankers] == [0, 1000] and len(summary["rankers"]) == 2
  users = prepared.test["user_id"].astype(str).to_numpy()[:4]
  candidates = family.retrieve(users, "test")[0]
  mean = family._candidate_logits(users, candidates, "test")  # pylint: disable=protected-access
  rankers = family.rankers
  singles = []
  for ranker in rankers:
    family.rankers = [ranker]
    singles.append(family._candidate_logits(users, candidates, "test"))  # pylint: disable=protected-access
  family.rankers = rankers
  assert np.abs(singles[0] - singles[1]).max() > 1e-3  # two different fits
  np.testing.assert_allclose(mean, (singles[0] + singles[1]) / 2, rtol=1e-5, atol=1e-5)
  # The export serves the Python cascade's final scores (mean logit + blend * retrieval).
  family.save(str(tmp_path / "export"))
  served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"](
      user_id=tf.constant(users))
  index = prepared.item_index(served["item_ids"].numpy().astype(str).reshape(-1)).reshape(4, -1)
  logits = family._candidate_logits(users, index, "test")  # pylint: disable=protected-access
  query = family.retrieval.query_embeddings(users, "test")
  retrieval = np.einsum("bd,bkd->bk", query, family.retrieval.item_embeddings()[index])
  want = family._final(logits, retrieval, family.blend)  # pylint: disable=protected-access
  np.testing.assert_allclose(served["scores"].numpy(), want, rtol=1e-4, atol=1e-4)

  # A finished re-ranker is checkpointed; a rerun restores the same weights.
  def fresh():
    return family._new_ranker(1, family._training_candidates())  # pylint: disable=protected-access
  backup = str(tmp_path / "again" / "backup")
  first, second = fresh(), fresh()
  assert "restored" not in family._fit_or_restore(first, "ranker_1", str(tmp_path / "again"),  # pylint: disable=protected-access
                                                  backup)
  assert family._fit_or_restore(second, "ranker_1", str(tmp_path / "again"), backup)["restored"]  # pylint: disable=protected-access
  # A rerun whose cascade trains its re-rankers otherwise (here: on other positives)
  # trains the stage afresh instead of restoring it.
  other = CascadeFamily(CascadeFamily.make_config("tiny", {"rankers": 2, "epochs": 1,
                                                               "recent_share": 0.0}),
                        prepared)
  other.retrieval = family.retrieval
  retrained = other._new_ranker(1, other._training_candidates())  # pylint: disable=protected-access
  assert "restored" not in other._fit_or_restore(retrained, "ranker_1",  # pylint: disable=protected-access
                                                 str(tmp_path / "again"), backup)
  family.rankers = [first]
  want = family._candidate_logits(users, candidates, "test")  # pylint: disable=protected-access
  family.rankers = [second]
  np.testing.assert_allclose(family._candidate_logits(users, candidates, "test"), want,  # pylint: disable=protected-access
                             rtol=1e-6)
  family.rankers = rankers
  # A whole rerun: a run killed after its first re-ranker finished left that stage's
  # checkpoint; the rerun restores it (before the finished stages' folders are removed)
  # and trains the second.
  job = str(tmp_path / "killed")
  rerun = CascadeFamily(CascadeFamily.make_config("tiny", {"rankers": 2, "epochs": 1}), prepared)
  rerun._fit_or_restore(rerun.retrieval, "retrieval", job, job + "/backup")  # pylint: disable=protected-access
  finished = rerun._new_ranker(0, rerun._training_candidates())  # pylint: disable=protected-access
  rerun._fit_or_restore(finished, "ranker", job, job + "/backup")  # pylint: disable=protected-access
  summary = rerun.fit(job)
  assert summary["retrieval"]["restored"] and summary["rankers"][0]["restored"]
  assert "restored" not in summary["rankers"][1]
  assert not os.path.exists(job + "/backup")
  rerun.rankers = [finished]
  want = rerun._candidate_logits(users, candidates, "test")  # pylint: disable=protected-access
  rerun.rankers = [rerun.ranker]
  np.testing.assert_allclose(rerun._candidate_logits(users, candidates, "test"), want,  # pylint: disable=protected-access
                             rtol=1e-6)


def test_training_rows_carry_the_history_before_the_positive(trained):
  """A positive's history is what its user played before it (never itself), its
  negatives share it, and its own play is left out of its popularity."""
  family, _, _ = trained
  ranker = family.ranker
  features = ranker.history_features
  assert features is not None and ranker.config.labels == "implicit"
  train = family.prepared.train
  rows = ranker.training_features(0)
  positives = int(rows["label"].sum())
  # Each user's last max(recent_positives, ceil(recent_share x their rows)) rows.
  config = family.config
  want_rows = []
  for _, rows_of_user in train.groupby("user_id", sort=False):
    n = max(config.recent_positives, int(np.ceil(config.recent_share * len(rows_of_user))))
    want_rows.append(rows_of_user.tail(n))
  recent = pd.concat(want_rows).sort_index()
  np.testing.assert_array_equal(ranker.positive_rows(), recent.index.to_numpy())
  assert positives == len(recent)
  item = family.prepared.item_index(recent["item_id"])
  history = causal_rows(train, family.prepared.item_index(train["item_id"]),
                        features.length)[recent.index.to_numpy()]
  assert not (history == item[:, None]).any()
  # The pooled history ids are the re-ranker's lookup indices of exactly those tracks.
  encoded = np.append(ranker.encoded_items["item_id"], 0)
  np.testing.assert_array_equal(rows["history_item_id"][:positives], encoded[history])
  want = features.numpy(history, item, np.ones(len(item), bool))["dense"]
  np.testing.assert_allclose(rows["dense"][:positives], want, rtol=1e-6)
  pop = features.names.index("popularity")
  counts = family.prepared.item_train_counts[item]
  scale = 1.0 / np.log1p(family.prepared.item_train_counts.max())
  np.testing.assert_allclose(want[:, pop], np.log1p(counts - 1.0) * scale, rtol=1e-5)
  # Each negative shares its positive's history: the shares are computed against it.
  negatives = rows["dense"][positives:]
  assert len(negatives) > 0 and (negatives[:, features.names.index("history_fill")] > 0).any()


def test_heavy_listeners_train_the_reranker_on_their_recent_share(trained):
  """Positives: each user's last max(recent, ceil(share x rows)) training rows, in time
  order; share 0 keeps the last `recent` of everyone."""
  family, _, _ = trained
  prepared = family.prepared

  def positives(share):
    ranker = HardNegativeDCN(family.config.ranker_config(), prepared, lambda u: None, 1, 1, 3,
                             recent_share=share)
    return ranker.positive_rows()

  sizes = prepared.train.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
  from_end = prepared.train.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
  np.testing.assert_array_equal(positives(0.0), np.flatnonzero(from_end < 3))
  shared = positives(0.5)
  np.testing.assert_array_equal(shared, np.flatnonzero(from_end < np.maximum(3, np.ceil(
      0.5 * sizes))))
  # The share matters on this catalogue: it widens the positives of users with more than 6
  # rows (ceil(0.5 x 7) = 4 > 3) and not of the others (6 rows: ceil(3) = 3).
  assert (sizes > 6).any() and (sizes <= 6).any() and len(shared) > len(positives(0.0))


def test_shared_histories_give_the_rows_of_the_full_history_inputs(trained):
  """`with_history` over M distinct histories and each row's index into them holds the
  values `HistoryFeatures.numpy` gives for the [N, H] rows; `RowGather` slices like them."""
  family, _, _ = trained
  ranker = family.ranker
  users = family.prepared.valid["user_id"].astype(str).to_numpy()[:7]
  history = family.history_rows(users, "valid")
  rows = np.random.default_rng(0).integers(0, len(users), size=40)
  items = np.random.default_rng(1).integers(0, family.prepared.n_items, size=40)
  own = np.arange(40) % 3 == 0
  got = ranker.with_history({}, history, items, own, rows=rows, chunk=16)
  want = ranker.history_features.numpy(history[rows], items, own)
  assert set(got) == set(want)
  np.testing.assert_array_equal(got["dense"], want["dense"])
  for key in want:
    if key != "dense":
      assert got[key].shape == want[key].shape and got[key].dtype == want[key].dtype
      np.testing.assert_array_equal(np.asarray(got[key]), want[key])
      np.testing.assert_array_equal(got[key][5:9], want[key][5:9])
      np.testing.assert_array_equal(got[key][np.array([3, 0, 39])], want[key][[3, 0, 39]])


def test_a_left_retrieval_fit_is_restored_not_refitted(trained, tmp_path):
  """`leave_retrieval`: a second cascade on the same data restores the first's two-tower
  fit as its finished retrieval stage; a differently configured one is not left."""
  family, _, _ = trained
  other = CascadeFamily(family.config, family.prepared)
  assert other.leave_retrieval(family.retrieval, str(tmp_path))
  backup = os.path.join(str(tmp_path), "backup")
  summary = other._fit_or_restore(other.retrieval, "retrieval", str(tmp_path), backup)  # pylint: disable=protected-access
  assert summary["restored"]
  users = family.prepared.test["user_id"].astype(str).to_numpy()[:20]
  np.testing.assert_allclose(other.retrieval.scorer("test")(users),
                             family.retrieval.scorer("test")(users), rtol=1e-6)
  changed = CascadeFamily(CascadeFamily.make_config(
      "tiny", {"retrieval_overrides": {"epochs": 1}}), family.prepared)
  assert not changed.leave_retrieval(family.retrieval, str(tmp_path / "changed"))


def test_retrieval_without_history_is_refused(trained):
  family, _, _ = trained
  config = CascadeFamily.make_config(
      "tiny", {"retrieval_overrides": {"history_length": 0, "user_id_dropout": 0.0}})
  with pytest.raises(ValueError, match="re-ranker reads the user's recent tracks"):
    CascadeFamily(config, family.prepared)


def test_cascade_reorders_only_the_retrieved_candidates(trained):
  family, _, _ = trained
  users = family.prepared.test["user_id"].astype(str).to_numpy()[:40]
  scores = family.scorer("test")(users)
  candidates, _ = family.retrieve(users, "test")
  excluded = family.exclusions("test")
  for row, user in enumerate(users):
    s = scores[row].copy()
    s[excluded.get(user, [])] = -np.inf
    top10 = np.argsort(-s, kind="stable")[:10]
    assert set(top10) <= set(candidates[row])


def test_evaluation_reports_cascade_and_retrieval_on_the_same_users(trained, catalogue):
  family, _, _ = trained
  metrics = family.evaluate(EvalContext(oracle=catalogue.oracle))
  assert list(metrics)[:2] == ["model", "two_tower"]
  assert {"popularity", "oracle"} <= set(metrics)
  for key in ("test/all/count", "valid/all/count", "test/cold_user/count"):
    assert metrics["model"][key] == metrics["two_tower"][key]
  hr = family.fit_summary["valid_hr@10_by_blend"]
  # Both stages went through the shared fit loop (checkpoints, resume, validation stopping).
  for stage in ("retrieval", "ranker"):
    assert family.fit_summary[stage]["resumed_from_step"] == 0
    assert family.fit_summary[stage]["epochs_run"] == len(family.fit_summary[stage]["history"])
  assert family.blend == max(family.config.blend_weights, key=lambda w: hr[str(w)])
  # What each re-ranker fit bought, on validation: "0" is the retrieval order
  # (the two-tower's own validation HR@10), the last is the chosen blend's.
  by_rankers = family.fit_summary["valid_hr@10_by_rankers"]
  assert list(by_rankers) == [str(n) for n in range(family.config.rankers + 1)]
  assert by_rankers["0"] == pytest.approx(metrics["two_tower"]["valid/all/hr@10"])
  assert by_rankers[str(family.config.rankers)] == pytest.approx(hr[str(family.blend)])
  assert set(family.fit_summary["stage_seconds"]) == {"retrieval", "ranker"} | {
      f"ranker_{i}" for i in range(1, family.config.rankers)}
  # The blend was chosen by validation HR@10: the reported validation HR@10 of
  # the cascade is that choice's (same candidates, same ranking rule).
  assert metrics["model"]["valid/all/hr@10"] == pytest.approx(hr[str(family.blend)])
  assert metrics["model"]["test/all/hr@10"] > metrics["popularity"]["test/all/hr@10"]


def test_export_round_trip_in_fresh_process(trained):
  family, export, signatures = trained
  assert set(signatures) == {"serving_default", "recommend"}
  known = [str(u) for u in family.prepared.test["user_id"].astype(str).unique()[:8]]
  users = known + ["nobody"]
  module = tf.saved_model.load(export)
  expected = module.signatures["serving_default"](user_id=tf.constant(users))
  out = run_python(f"""
import json, tfrec_music, tensorflow as tf
m = tf.saved_model.load({export!r})
r = m.signatures["serving_default"](user_id=tf.constant({users!r}))
print(json.dumps({{"ids": r["item_ids"].numpy().astype(str).tolist(),
                  "scores": r["scores"].numpy().tolist(),
                  "fallback": r["fallback"].numpy().tolist()}}))
""")
  got = json.loads(out.strip().splitlines()[-1])
  assert got["ids"] == expected["item_ids"].numpy().astype(str).tolist()
  np.testing.assert_allclose(got["scores"], expected["scores"].numpy(), rtol=1e-6)
  assert got["fallback"] == [False] * len(known) + [True]
  k = family.config.top_k
  assert np.array(got["ids"]).shape == (len(users), k)
  assert all(np.all(np.diff(s) <= 1e-6) for s in got["scores"])
  # The unknown user gets the popularity fallback, in popularity order.
  popular = family.prepared.item_ids[np.argsort(-family.prepared.item_train_counts,
                                                kind="stable")[:k]]
  assert got["ids"][-1] == [str(i) for i in popular]


def test_served_top_k_is_the_python_cascade_on_the_served_candidates(trained):
  family, export, _ = trained
  module = tf.saved_model.load(export)
  user = str(family.prepared.test["user_id"].iloc[0])
  history = family.retrieval.raw_query_features([user], "test")["history"]
  inputs = {"user_id": tf.constant([user]), "history": tf.constant(history.astype(str)),
            "exclude": tf.constant(history.astype(str))}
  for column in family.retrieval.user_features:
    inputs[column] = tf.constant(family.retrieval.raw_query_features([user], "test")[column]
                                 .astype(str))
  served = module.signatures["recommend"](**inputs)
  by_id = module.signatures["serving_default"](user_id=tf.constant([user]))
  np.testing.assert_array_equal(served["item_ids"].numpy(), by_id["item_ids"].numpy())
  # Recompute the final score of the served tracks in Python: DCN logit + blend * retrieval.
  ids = served["item_ids"].numpy().astype(str)[0]
  index = family.prepared.item_index(ids)
  logits = family._candidate_logits(np.array([user]), index[None, :], "test")[0]  # pylint: disable=protected-access
  query = family.retrieval.query_embeddings([user], "test")
  retrieval = (query @ family.retrieval.item_embeddings()[index].T)[0]
  want = family._final(logits, retrieval, family.blend)  # pylint: disable=protected-access
  np.testing.assert_allclose(served["scores"].numpy()[0], want, rtol=1e-4, atol=1e-4)


def test_served_reranking_reads_the_request_history(trained):
  """`recommend` computes the history features in the graph from the history it is sent:
  the same user and candidates with another history get other re-ranker scores."""
  family, export, _ = trained
  module = tf.saved_model.load(export)
  user = str(family.prepared.test["user_id"].iloc[0])
  raw = family.retrieval.raw_query_features([user], "test")
  history = raw["history"].astype(str)
  inputs = {"user_id": tf.constant([user, user]),
            "history": tf.constant(np.concatenate([history, history])),
            "exclude": tf.constant(np.concatenate([history, history]))}
  for column in family.retrieval.user_features:
    inputs[column] = tf.constant(np.repeat(raw[column].astype(str), 2))
  same = module.signatures["recommend"](**inputs)
  np.testing.assert_array_equal(same["item_ids"].numpy()[0], same["item_ids"].numpy()[1])
  # Python: the re-ranker logits of these candidates with the user's history, then with
  # the history of another user: they differ, so the history is really read.
  index = family.prepared.item_index(same["item_ids"].numpy().astype(str)[0])[None, :]
  own = family._candidate_logits(np.array([user]), index, "test")  # pylint: disable=protected-access
  features = family.ranker.pair_features(np.repeat([user], index.shape[1]), index[0])
  other = family.history_rows([str(family.prepared.test["user_id"].iloc[1])], "test")
  family.ranker.with_history(features, np.repeat(other, index.shape[1], axis=0), index[0])
  assert not np.allclose(own[0], family.ranker.predict_encoded(features))


@pytest.mark.slow
def test_cli_trains_and_exports_the_cascade(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--model", "two_tower_dcn", "--preset", "tiny",
       "--job-dir", str(tmp_path / "job"), "--export-dir", str(tmp_path / "export")],
      capture_output=True, text=True, cwd=REPO, timeout=400,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "two_tower_dcn" in proc.stdout and "two_tower " in proc.stdout
  metrics = json.load(open(tmp_path / "export" / "two_tower_dcn" / "1" / "metrics.json"))
  assert metrics["model"]["test/all/hr@10"] > 0 and "two_tower" in metrics


@pytest.mark.slow
def test_sigkill_during_the_reranker_then_rerun_resumes_both_stages(tmp_path):
  """Issue 9 for the cascade: a rerun restores the finished retrieval stage and resumes the
  re-ranker from its step checkpoint."""
  import subprocess
  import sys
  from conftest import REPO
  from conftest import kill_mid_training
  job, export = str(tmp_path / "job"), str(tmp_path / "export")
  args = [sys.executable, "-m", "trainer.task", "--model", "two_tower_dcn", "--preset", "tiny",
          "--batch-size", "64", "--epochs", "8", "--set", "hard_negatives=1",
          "--set", "random_negatives=1", "--checkpoint-every", "5", "--verbosity", "INFO",
          "--job-dir", job, "--export-dir", export]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  kill_mid_training(args, job, os.path.join(job, "ranker", "backup",
                                            "two_tower_dcn_ranker_validation",
                                            "validation_state.json"), env, timeout=150)
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=200, env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "restored the finished retrieval stage" in second.stderr
  fit = json.load(open(os.path.join(export, "two_tower_dcn", "1", "model_card.json")))["fit"]
  assert fit["retrieval"]["restored"] is True
  ranker = fit["ranker"]
  assert ranker["resumed_from_step"] > ranker["steps_per_epoch"], ranker  # mid-epoch 2 or later
  assert ranker["resumed_from_epoch"] >= 1
  assert [h["epoch"] for h in fit["ranker"]["history"]][0] == 1  # pre-kill epochs kept
  assert not os.path.exists(os.path.join(job, "backup"))  # finished: stage backups gone
  print(f"cascade resume evidence: re-ranker resumed at step "
        f"{fit['ranker']['resumed_from_step']} after {fit['ranker']['resumed_from_epoch']} "
        f"validated epochs ({fit['ranker']['steps_per_epoch']} steps/epoch); retrieval restored")
