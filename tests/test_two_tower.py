"""Two-tower retrieval: training quality, export round trip, ScaNN, fallbacks, bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import make_toy_tables
from conftest import run_python
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.evaluation.protocol import fixed_scorer
from tfrec_music.export.retrieval import load_candidates
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.two_tower import TwoTowerConfig
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.models.towers import embedding_mean
from tfrec_music.models.towers import recency_ranks
from tfrec_music.models.towers import recency_weights
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  prepared = prepare(make_toy_tables(), PrepareConfig(cold_user_share=0.1))
  config = TwoTowerFamily.make_config("tiny", {"epochs": 6, "top_k": 10})
  family = TwoTowerFamily(config, prepared)
  job = tmp_path_factory.mktemp("job")
  family.fit(str(job))
  export = tmp_path_factory.mktemp("export") / "1"
  signatures = family.save(str(export))
  return family, prepared, str(job), str(export), signatures


def test_beats_popularity_overall_and_for_cold_users(trained):
  family, prepared, _, _, _ = trained
  model = evaluate_scorer(family.score_fn(), prepared)
  popular = evaluate_scorer(fixed_scorer(PopularityModel.fit(prepared).score_fn()), prepared)
  assert model["test/all/hr@10"] > 1.5 * popular["test/all/hr@10"]
  assert model["test/cold_user/hr@10"] > popular["test/cold_user/hr@10"]
  for key in ("test/cold/hr@10", "test/warm/ndcg@10", "test/all/recall@50", "valid/all/mrr"):
    assert key in model


def test_early_stopping_keeps_best_weights(trained):
  family, _, _, _, _ = trained
  summary = family.fit_summary
  best = max(h["valid_hr@10"] for h in summary["history"])
  assert summary["best_valid_hr@10"] == best
  assert summary["history"][summary["best_epoch"] - 1]["valid_hr@10"] == best


def test_tensorboard_logs_and_projector(trained):
  _, prepared, job, _, _ = trained
  projector = os.path.join(job, "logs", "projector")
  assert os.path.exists(os.path.join(projector, "projector_config.pbtxt"))
  lines = open(os.path.join(projector, "metadata.tsv")).read().splitlines()
  assert lines[0] == "item_id\ttitle\tartist" and len(lines) == prepared.n_items + 1
  assert os.listdir(os.path.join(job, "logs", "two_tower", "train"))


def test_export_layout_and_candidates(trained):
  family, prepared, _, export, signatures = trained
  for sub in ("saved_model.pb", "scann/saved_model.pb", "query_tower/saved_model.pb",
              "candidate_tower/saved_model.pb", "candidates/embeddings.npy"):
    assert os.path.exists(os.path.join(export, sub)), sub
  ids, vectors = load_candidates(os.path.join(export, "candidates"))
  assert ids.tolist() == prepared.item_ids.tolist()
  np.testing.assert_allclose(vectors, family.item_embeddings(), rtol=1e-6)
  assert "recommend" in signatures


def test_round_trip_scann_rest_and_fallbacks_in_fresh_process(trained):
  family, prepared, _, export, _ = trained
  users = prepared.vocabularies["user_id"][:40]
  # Expected top-10 for known users, computed in memory with numpy: scores of the
  # query tower (test-time history) against all tracks, every track played up to the
  # test point excluded (train + valid: more than the stored history for heavy users).
  queries = family.query_embeddings(users, "test")
  scores = queries @ family.item_embeddings().T
  seen = pd.concat([prepared.train, prepared.valid])
  for row, user in enumerate(users):
    scores[row, prepared.item_index(seen.loc[seen.user_id == user, "item_id"])] = -np.inf
  expected = prepared.item_ids[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
  popular = PopularityModel.fit(prepared).top_k(10)[0].tolist()
  cold = prepared.cold_user_history.groupby("user_id")["item_id"].apply(list)
  cold_user, cold_hist = cold.index[0], cold.iloc[0][-10:]
  body = {"signature_name": "recommend", "instances": [
      {"user_id": cold_user, "history": cold_hist, "country": "", "exclude": cold_hist[:2]}]}
  out = run_python(f"""
import json, numpy as np, tfrec_music, tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for the scann/ variant
from tfrec_music.export import predict_rest
exact = tf.saved_model.load({export!r})
approx = tf.saved_model.load({export!r} + '/scann')
users = tf.constant({json.dumps(users)})
e = exact.signatures['serving_default'](user_id=users)
a = approx.signatures['serving_default'](user_id=users)
recall = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(e['item_ids'].numpy(), a['item_ids'].numpy())])
unknown = exact.signatures['serving_default'](user_id=tf.constant(['nobody']))
rest = predict_rest({export!r}, {{"instances": [{{"user_id": {users[0]!r}}}]}})
hist = predict_rest({export!r}, {json.dumps(body)!r})
empty = exact.signatures['recommend'](user_id=tf.constant(['nobody']), history=tf.constant([['', '']]),
                                     country=tf.constant(['']), exclude=tf.constant([['']]))
print(json.dumps({{"exact": e['item_ids'].numpy().astype(str).tolist(), "recall": float(recall),
                  "unknown": unknown['item_ids'].numpy().astype(str).tolist()[0],
                  "unknown_fallback": bool(unknown['fallback'].numpy()[0]),
                  "rest": rest['predictions'][0]['item_ids'], "hist": hist['predictions'][0],
                  "empty": empty['item_ids'].numpy().astype(str).tolist()[0]}}))
""")
  result = json.loads(out.strip().splitlines()[-1])
  assert result["exact"] == expected.tolist()          # same top-k as in memory
  assert result["recall"] >= 0.95                      # ScaNN vs exact, recall@10
  assert result["unknown"] == popular and result["unknown_fallback"]
  assert result["empty"] == popular
  assert result["rest"] == expected[0].tolist()
  assert result["hist"]["fallback"] is False
  assert not set(cold_hist[:2]) & set(result["hist"]["item_ids"])   # exclusions honoured
  assert result["hist"]["item_ids"] != popular                       # personal from history


def test_bad_input_messages(toy_tables):
  prepared = prepare(toy_tables)
  with pytest.raises(ValueError, match="batch_size.*larger than the"):
    TwoTowerFamily(TwoTowerConfig(batch_size=10**7, epochs=1), prepared).fit("/tmp/unused")
  with pytest.raises(ValueError, match="Unknown hyperparameter"):
    TwoTowerFamily.make_config("tiny", {"embeding_dim": 8})
  with pytest.raises(ValueError, match="`features` should be 'all' or 'ids'"):
    TwoTowerConfig(features="some")
  with pytest.raises(ValueError, match="`temperature` should be a positive number"):
    TwoTowerConfig(temperature=0)


def test_k_above_catalogue_is_clamped(toy_tables, tmp_path):
  prepared = prepare(toy_tables)
  family = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {"epochs": 1, "top_k": 10**6}),
                          prepared)
  family.fit(str(tmp_path / "job"))
  family.save(str(tmp_path / "export"))
  loaded = tf.saved_model.load(str(tmp_path / "export"))
  out = loaded.signatures["serving_default"](user_id=tf.constant(["u1"]))
  assert out["item_ids"].shape[1] == prepared.n_items


def test_unknown_feature_columns_are_ignored_and_reported(toy_tables):
  toy_tables.items["mystery"] = 1.0
  toy_tables.users["shoe_size"] = "44"
  prepared = prepare(toy_tables)
  family = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {}), prepared)
  assert family.ignored_columns == {"items": ["mystery"], "users": ["shoe_size"]}
  ids_only = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {"features": "ids"}), prepared)
  assert "artist" in ids_only.ignored_columns["items"]
  assert ids_only.user_features == ()


def test_history_content_pools_artists_through_the_track_tower(toy_tables, tmp_path):
  prepared = prepare(toy_tables)
  family = TwoTowerFamily(
      TwoTowerFamily.make_config("tiny", {"epochs": 1, "history_content": True}), prepared)
  assert set(family.query_tower.history_content) == {"artist", "album", "genre"}
  mapping, layer = family.query_tower.history_content["artist"]
  assert layer is family.candidate_tower.categorical["artist"]      # shared embedding
  # A history track's artist index equals the one the track tower encodes for it.
  row = prepared.item_index([prepared.vocabularies["item_id"][0]])[0]
  assert int(mapping.numpy()[2]) == int(family.catalogue["artist"][row])
  assert int(mapping.numpy()[0]) == 0 and int(mapping.numpy()[1]) == 0
  family.fit(str(tmp_path))
  assert family.query_embeddings(["u1"], "test").shape == (1, 32)


def test_cold_users_are_scored_like_unknown_users_at_serving(trained):
  family, prepared, _, _, _ = trained
  cold = prepared.cold_user_test["user_id"].to_numpy()[:3]
  assert not set(cold) & set(prepared.vocabularies["user_id"])
  raw = family.raw_query_features(cold, "cold_user")
  raw["user_id"] = np.array(["never-seen-id"] * len(cold), dtype=object)
  encoded = family.query_encoder({k: tf.constant(v) for k, v in raw.items()})
  assert encoded["user_id"].numpy().tolist() == [1, 1, 1]        # the OOV bucket
  np.testing.assert_allclose(family.query_embeddings(cold, "cold_user"),
                             family.query_tower(encoded).numpy(), rtol=1e-5, atol=1e-6)


def test_recency_ranks_and_weighted_mean_by_hand():
  ids = tf.constant([[0, 0, 5, 6, 7], [3, 0, 4, 9, 0], [0, 0, 0, 0, 0]], tf.int64)
  # Ranks count valid positions from the end; padding anywhere does not shift them.
  assert recency_ranks(ids).numpy().tolist() == [[0, 0, 3, 2, 1], [3, 0, 2, 1, 0],
                                                 [0, 0, 0, 0, 0]]
  table = tf.reshape(tf.range(20, dtype=tf.float32), [10, 2])    # row i = [2i, 2i + 1]
  # Equal logits: the plain mean of the last 2 valid tracks; older ones and padding ignored.
  np.testing.assert_allclose(
      embedding_mean(table, ids, recency_weights(ids, tf.zeros([2]))).numpy(),
      [[13, 14], [13, 14], [0, 0]])
  # The most recent track weighs 1, the one before 3: (3 * e[-2] + e[-1]) / 4.
  np.testing.assert_allclose(
      embedding_mean(table, ids, recency_weights(ids, tf.constant([0.0, np.log(3.0)]))).numpy(),
      [[12.5, 13.5], [10.5, 11.5], [0, 0]], rtol=1e-6)
  with pytest.raises(ValueError, match="`history_pooling` should be 'mean' or 'recency'"):
    TwoTowerConfig(history_pooling="last")


def test_recency_pooling_trains_and_serves_whatever_the_padding(toy_tables, tmp_path):
  prepared = prepare(toy_tables)
  family = TwoTowerFamily(
      TwoTowerFamily.make_config("tiny", {"epochs": 2, "history_pooling": "recency"}),
      prepared)
  logits = family.query_tower.recency_logits
  assert logits.shape == (family.config.history_length,)
  family.fit(str(tmp_path / "job"))
  assert np.ptp(logits.numpy()) > 0                  # the rank weights were trained
  family.save(str(tmp_path / "export"))
  history = prepared.train["item_id"].to_numpy()[:3].tolist()
  user = tf.constant(["never-seen-id"])
  extra = {c: tf.constant([""]) for c in family.user_features}
  in_memory = family.query_tower(family.query_encoder(
      {"user_id": user, "history": tf.constant([history]), **extra})).numpy()
  # Reloaded: a request padded on the left or on the right embeds like the in-memory
  # tower with no padding (the ranks count real tracks only).
  tower = tf.saved_model.load(str(tmp_path / "export" / "query_tower"))
  for padded in (["", ""] + history, history + ["", ""], [history[0], ""] + history[1:]):
    out = tower.signatures["serving_default"](user_id=user, history=tf.constant([padded]),
                                              **extra)["embedding"].numpy()
    np.testing.assert_allclose(out, in_memory, rtol=1e-5, atol=1e-6)


def test_fused_adam_is_keras_adam_on_dense_and_sparse_gradients():
  from tfrec_music.models.two_tower.network import FusedAdam
  rng = np.random.default_rng(0)
  start = rng.normal(size=(6, 3)).astype(np.float32)
  steps = [(rng.normal(size=(4, 3)).astype(np.float32), np.array([0, 2, 2, 5])),
           (rng.normal(size=(2, 3)).astype(np.float32), np.array([1, 1]))]
  results = []
  for optimizer in (tf.keras.optimizers.Adam(0.01), FusedAdam(0.01)):
    dense, table = tf.Variable(start), tf.Variable(start)
    for values, rows in steps * 2:
      sparse = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant([6, 3]))
      optimizer.apply_gradients([(tf.convert_to_tensor(sparse), dense), (sparse, table)])
    results.append((dense.numpy(), table.numpy()))
  (keras_dense, keras_table), (fused_dense, fused_table) = results
  np.testing.assert_allclose(fused_dense, keras_dense, rtol=1e-5, atol=1e-6)
  # Rows without a gradient in a step still move (Adam's moments decay everywhere).
  np.testing.assert_allclose(fused_table, keras_table, rtol=1e-5, atol=1e-6)


def test_make_dataset_epochs_are_seeded_permutations():
  from tfrec_music.pipeline.dataset import make_dataset
  rng = np.random.default_rng(1)
  features = {"user_id": rng.integers(0, 9, 53), "history": rng.integers(0, 20, (53, 4)),
              "name": np.array([f"t{i}" for i in range(53)], dtype=object)}
  names = {row: i for i, row in enumerate(features["name"].tolist())}

  def epochs(ds, n_epochs):
    """Row indices of each epoch: 7 batches of 8, 8, ..., 5 (53 rows)."""
    batches = [b for b in ds.take(7 * n_epochs)]
    out = []
    for e in range(n_epochs):
      rows = []
      for b, batch in enumerate(batches[7 * e:7 * (e + 1)]):
        assert len(batch["name"]) == (5 if b == 6 else 8)     # batches stay within an epoch
        idx = [names[x] for x in batch["name"].numpy().astype(str)]
        for name in ("user_id", "history"):                    # every column's rows agree
          np.testing.assert_array_equal(batch[name].numpy(), features[name][idx])
        rows += idx
      out.append(rows)
    return out

  a = epochs(make_dataset(features, 8, seed=7, repeat=True), 3)
  assert a == epochs(make_dataset(features, 8, seed=7, repeat=True), 3)   # seeded
  assert a != epochs(make_dataset(features, 8, seed=8, repeat=True), 3)
  assert all(sorted(rows) == list(range(53)) for rows in a)            # each row once an epoch
  assert a[0] != a[1] != a[2] and a[0] != list(range(53))              # reshuffled every epoch
  once = make_dataset(features, 8, seed=7)                               # one epoch per iterator
  first, second = epochs(once, 1), epochs(once, 1)
  assert first == [a[0]] and second != first
  assert once.cardinality() == 7
  fixed = make_dataset(features, 8, shuffle=False, drop_remainder=True)
  assert fixed.element_spec["user_id"].shape[0] == 8 and fixed.cardinality() == 6
  assert [names[x] for b in fixed for x in b["name"].numpy().astype(str)] == list(range(48))


def test_cosine_lr_decay_reaches_zero_after_the_configured_epochs(toy_tables, tmp_path):
  from tfrec_music.models.two_tower.network import optimizer
  config = TwoTowerConfig(epochs=4, learning_rate=0.01, lr_decay="cosine")
  opt = optimizer(config, steps_per_epoch=5)
  schedule = opt._learning_rate  # pylint: disable=protected-access
  rates = [float(schedule(step)) for step in (0, 10, 20, 25)]
  np.testing.assert_allclose(rates, [0.01, 0.005, 0.0, 0.0], atol=1e-7)
  assert float(optimizer(TwoTowerConfig(learning_rate=0.01), steps_per_epoch=5).learning_rate) \
      == pytest.approx(0.01)
  with pytest.raises(ValueError, match="lr_decay"):
    TwoTowerConfig(lr_decay="linear")
  # The family sizes the decay from its training rows and batch: after fit the
  # optimizer's rate is what the schedule gives at its step count.
  prepared = prepare(toy_tables, PrepareConfig())
  family = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {"lr_decay": "cosine", "epochs": 2,
                                                              "early_stopping_patience": 5}),
                          prepared)
  family.fit(str(tmp_path / "job"))
  model_opt = family.model.optimizer
  steps = -(-len(prepared.train) // family.config.batch_size)
  assert int(model_opt.iterations) == 2 * steps
  assert float(model_opt._learning_rate(model_opt.iterations)) == pytest.approx(0.0, abs=1e-9)
