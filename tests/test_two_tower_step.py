"""Two-tower training step: sparse and XLA history pooling, dense bags, the fused in-batch loss, history off."""

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music.models import towers
from tfrec_music.models.towers import BAG_SUFFIX
from tfrec_music.models.towers import dense_bag
from tfrec_music.models.towers import embedding_mean
from tfrec_music.models.two_tower import TwoTowerConfig
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.models.two_tower.core import play_weights
from tfrec_music.models.two_tower.network import EXAMPLE_WEIGHT
from tfrec_music.models.two_tower.network import in_batch_softmax_loss
from tfrec_music.prepare import prepare


def _dense_mean(table, ids, weights):
  """The pooling as it was: gather [B, L, d], mask the padding, weighted mean."""
  embedded = tf.gather(table, ids)
  weight = weights * tf.cast(tf.not_equal(ids, 0), tf.float32)
  total = tf.reduce_sum(embedded * weight[..., tf.newaxis], axis=1)
  return total / tf.maximum(tf.reduce_sum(weight, axis=1, keepdims=True), 1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_embedding_mean_is_the_masked_dense_mean_and_its_gradient(weighted):
  rng = np.random.default_rng(0)
  table = tf.Variable(rng.normal(size=(40, 8)).astype(np.float32))
  ids = rng.integers(1, 40, (16, 12))
  ids[rng.random(ids.shape) < 0.4] = 0
  ids[3] = 0                                       # a row with no valid id: zeros
  ids[5, :3] = ids[5, 3]                           # a track repeated in one row
  ids = tf.constant(ids, tf.int64)
  weights = tf.constant(rng.uniform(0.1, 2.0, ids.shape).astype(np.float32) if weighted
                        else np.ones(ids.shape, np.float32))
  upstream = tf.constant(rng.normal(size=(16, 8)).astype(np.float32))
  results = []
  for pool in (lambda: embedding_mean(table, ids, weights if weighted else None),
               lambda: _dense_mean(table, ids, weights)):
    with tf.GradientTape() as tape:
      tape.watch(weights)
      out = pool()
      loss = tf.reduce_sum(out * upstream)
    grad_table, grad_weights = tape.gradient(loss, [table, weights])
    results.append((out.numpy(), tf.convert_to_tensor(grad_table).numpy(),
                    None if grad_weights is None else grad_weights.numpy()))
  (out, grad, grad_w), (want, want_grad, want_grad_w) = results
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  assert not out[3].any()
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  if weighted:
    valid = ids.numpy() != 0
    np.testing.assert_allclose(grad_w[valid], want_grad_w[valid], rtol=1e-4, atol=1e-6)


def test_padded_mean_is_the_masked_mean_and_its_gradient_at_any_batch_shape():
  rng = np.random.default_rng(3)
  layer = tf.keras.layers.Embedding(40, 8, embeddings_initializer=tf.keras.initializers.Constant(
      rng.normal(size=(40, 8)).astype(np.float32)))
  layer.build(None)
  table = layer.embeddings
  step = tf.function(lambda ids, up: _mean_and_gradient(
      lambda: towers.layer_mean(layer, ids, training=True), table, up))
  for batch, length in ((16, 12), (7, 12), (16, 3)):          # one function, three shapes
    ids = rng.integers(1, 40, (batch, length))
    ids[rng.random(ids.shape) < 0.4] = 0
    ids[1] = 0                                                 # no valid id: zeros
    ids[2, :2] = ids[2, 2]                                     # a track repeated in one row
    ids = tf.constant(ids, tf.int64)
    upstream = tf.constant(rng.normal(size=(batch, 8)).astype(np.float32))
    want, want_grad = _mean_and_gradient(
        lambda: _dense_mean(table, ids, tf.ones(ids.shape)), table, upstream)
    for out, grad in (step(ids, upstream),
                      _mean_and_gradient(lambda: towers.padded_mean(table.value(), ids), table,
                                         upstream)):
      np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(grad.numpy(), want_grad.numpy(), rtol=1e-5, atol=1e-6)
      assert not out.numpy()[1].any() and not grad.numpy()[0].any()   # padding row: no update
  # Inference pools with `embedding_mean` (the same values, any batch size, no XLA).
  np.testing.assert_allclose(towers.layer_mean(layer, ids).numpy(), want.numpy(), rtol=1e-5,
                             atol=1e-6)


def _mean_and_gradient(pool, table, upstream):
  with tf.GradientTape() as tape:
    out = pool()
    loss = tf.reduce_sum(out * upstream)
  return out, tf.convert_to_tensor(tape.gradient(loss, table))


def test_dense_bags_pool_as_the_ids_do_and_only_small_vocabularies_get_one(toy_tables):
  rng = np.random.default_rng(2)
  table = tf.Variable(rng.normal(size=(30, 8)).astype(np.float32))
  ids = rng.integers(0, 30, (20, 6))
  ids[4] = 0                                       # no valid id: zeros
  ids[7, :3] = ids[7, 3]                           # a word repeated in one row
  upstream = tf.constant(rng.normal(size=(20, 8)).astype(np.float32))
  results = []
  for pool in (lambda: embedding_mean(table, tf.constant(ids)),
               lambda: tf.linalg.matmul(tf.constant(dense_bag(ids, 30)), table)):
    with tf.GradientTape() as tape:
      out = pool()
      loss = tf.reduce_sum(out * upstream)
    results.append((out.numpy(), tf.convert_to_tensor(tape.gradient(loss, table)).numpy()))
  (out, grad), (want, want_grad) = results[1], results[0]
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  assert not out[4].any()
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  assert towers.use_dense_bag(10_000, 1024) and not towers.use_dense_bag(10_000, 1025)
  assert not towers.use_dense_bag(20_000, 1000)     # 20M entries: over the 64 MiB budget

  # The family trains from the bags; its track vectors match the towers read from the ids,
  # which is what the exported track tower does.
  family = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {}), prepare(toy_tables))
  catalogue = family.model.catalogue
  assert {"tags" + BAG_SUFFIX, "title" + BAG_SUFFIX} <= set(catalogue)
  assert "tags" not in catalogue and "title" not in catalogue
  index = tf.range(family.prepared.n_items, dtype=tf.int64)
  from_ids = family.candidate_tower({k: tf.gather(v, index) for k, v in family.catalogue.items()})
  np.testing.assert_allclose(family.item_embeddings(), from_ids.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mixed_negatives", [0, 5])
def test_in_batch_softmax_loss_is_tfrs_retrieval(mixed_negatives):
  rng = np.random.default_rng(1)
  queries = tf.constant(rng.normal(size=(12, 4)).astype(np.float32))
  candidates = tf.constant(rng.normal(size=(12 + mixed_negatives, 4)).astype(np.float32))
  ids = tf.constant(rng.integers(0, 6, 12 + mixed_negatives), tf.int64)   # many hits
  probability = tf.constant(rng.uniform(1e-8, 0.5, 12 + mixed_negatives).astype(np.float32))
  task = tfrs.tasks.Retrieval(
      loss=tf.keras.losses.CategoricalCrossentropy(
          from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
      temperature=0.1, remove_accidental_hits=True)
  results = []
  for loss_fn in (
      lambda q, c: task(q, c, candidate_sampling_probability=probability, candidate_ids=ids,
                        compute_metrics=False),
      lambda q, c: in_batch_softmax_loss(
          q, c, ids, tf.math.log(tf.clip_by_value(probability, 1e-6, 1.0)), 0.1, True)):
    with tf.GradientTape() as tape:
      tape.watch([queries, candidates])
      loss = tf.function(loss_fn)(queries, candidates)
    results.append([loss.numpy()] + [g.numpy() for g in tape.gradient(loss,
                                                                      [queries, candidates])])
  for ours, theirs in zip(*results):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_row_weights_weigh_each_query_as_tfrs_sample_weight():
  rng = np.random.default_rng(4)
  queries = tf.constant(rng.normal(size=(10, 4)).astype(np.float32))
  candidates = tf.constant(rng.normal(size=(10, 4)).astype(np.float32))
  ids = tf.constant(rng.integers(0, 5, 10), tf.int64)
  weights = tf.constant([0.0, 0.5, 1.0, 2.0, 4.0, 1.0, 0.0, 3.0, 1.5, 1.0], tf.float32)
  task = tfrs.tasks.Retrieval(
      loss=tf.keras.losses.CategoricalCrossentropy(
          from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
      temperature=0.1, remove_accidental_hits=True)
  want = task(queries, candidates, sample_weight=weights, candidate_ids=ids,
              compute_metrics=False)
  got = in_batch_softmax_loss(queries, candidates, ids, None, 0.1, True, weights)
  np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)
  unweighted = in_batch_softmax_loss(queries, candidates, ids, None, 0.1, True)
  assert got.numpy() != pytest.approx(unweighted.numpy())


def test_play_weights_are_log1p_plays_with_mean_one_and_reach_training(toy_tables):
  train = pd.DataFrame({"user_id": ["u", "u", "v", "v"], "item_id": ["a", "b", "a", "c"],
                        "weight": [1.0, 3.0, 0.0, 99.0]})
  want = np.log1p([1.0, 3.0, 0.0, 99.0])
  np.testing.assert_allclose(play_weights(train, "log1p"), want / want.mean(), rtol=1e-6)
  assert play_weights(train, "none") is None
  assert play_weights(train.drop(columns="weight"), "log1p") is None
  assert play_weights(train.assign(weight=0.0), "log1p") is None      # no plays: unweighted
  with pytest.raises(ValueError, match="play_weight"):
    TwoTowerConfig(play_weight="linear")

  prepared = prepare(toy_tables)
  assert "weight" in prepared.train.columns
  family = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {}), prepared)
  features = family.training_features()
  np.testing.assert_allclose(features[EXAMPLE_WEIGHT],
                             play_weights(prepared.train, "log1p"), rtol=1e-6)
  assert features[EXAMPLE_WEIGHT].mean() == pytest.approx(1.0, rel=1e-5)
  unweighted = TwoTowerFamily(TwoTowerFamily.make_config("tiny", {"play_weight": "none"}),
                              prepared)
  assert EXAMPLE_WEIGHT not in unweighted.training_features()
  # The weight is a loss input, never a query feature: zero weights, zero training loss.
  assert EXAMPLE_WEIGHT not in family.query_signature()
  batch = {k: tf.constant(v[:64]) for k, v in features.items()}
  assert float(family.model.compute_loss(batch, training=True)) > 0
  batch[EXAMPLE_WEIGHT] = tf.zeros([64])
  assert float(family.model.compute_loss(batch, training=True)) == 0.0


def test_history_off_trains_exports_and_reloads(toy_tables, tmp_path):
  with pytest.raises(ValueError, match="`history_length` should be a non-negative integer"):
    TwoTowerConfig(history_length=-1)
  for name, value in (("history_pooling", "recency"), ("history_content", True)):
    with pytest.raises(ValueError, match=f"`{name}` = .* needs a history"):
      TwoTowerConfig(history_length=0, user_id_dropout=0.0, **{name: value})
  with pytest.raises(ValueError, match="Set `user_id_dropout=0` with `history_length=0`"):
    TwoTowerConfig(history_length=0, user_id_dropout=0.5)
  config = TwoTowerFamily.make_config("tiny", {"history_length": 0, "user_id_dropout": 0.0,
                                               "epochs": 2})
  with pytest.raises(ValueError, match="`--stream` .* needs `history_length` >= 1"):
    TwoTowerFamily.stream_train(str(tmp_path / "no_data"), config, str(tmp_path / "stream"))
  prepared = prepare(toy_tables)
  family = TwoTowerFamily(config, prepared)
  assert "history" not in family.training_features()
  assert "history" not in family.query_signature()
  assert family.query_encoder.history_lookup is None
  family.fit(str(tmp_path / "job"))
  assert family.fit_summary["best_valid_hr@10"] > 0
  family.save(str(tmp_path / "export"))
  users = prepared.vocabularies["user_id"][:5]
  raw = {k: tf.constant(v) for k, v in family.raw_query_features(users, "test").items()}
  assert set(raw) == {"user_id", "country"}
  query_tower = tf.saved_model.load(str(tmp_path / "export" / "query_tower"))
  served = query_tower.signatures["serving_default"](**raw)
  np.testing.assert_allclose(served["embedding"].numpy(),
                             family.query_embeddings(users, "test"), rtol=1e-5, atol=1e-6)
  exported = tf.saved_model.load(str(tmp_path / "export"))
  assert "history" not in exported.signatures["recommend"].structured_input_signature[1]
  known = exported.signatures["serving_default"](user_id=tf.constant(users))
  unknown = exported.signatures["recommend"](user_id=tf.constant(["nobody"]),
                                             exclude=tf.constant([[""]]),
                                             country=tf.constant([""]))
  assert not known["fallback"].numpy().any() and unknown["fallback"].numpy().all()
  seen = prepared.train[prepared.train.user_id == users[0]]["item_id"]
  assert not set(seen) & set(known["item_ids"].numpy()[0].astype(str))
