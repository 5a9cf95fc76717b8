"""The shared Keras fit loop: NaN guard keeps the last good checkpoint; early stopping state."""

import glob
import os

import numpy as np
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from tfrec_music.fit_loop import fit_with_validation


def _model():
  tf.keras.utils.set_random_seed(0)
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(3,))])
  model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
  return model


def _dataset(nan_batch=None, batches=10):
  x = np.random.default_rng(0).normal(size=(batches * 4, 3)).astype(np.float32)
  if nan_batch is not None:
    x[nan_batch * 4] = np.nan
  y = x.sum(axis=1, keepdims=True)
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  model = _model()
  with pytest.raises(FloatingPointError, match=r"at epoch 1, by step 8\..*learning rate"):
    fit_with_validation(model, _dataset(nan_batch=6), epochs=3, validate=lambda e: 0.0,
                        patience=5, job_dir=str(tmp_path), name="toy", checkpoint_every=2,
                        nan_advice="Lower the learning rate.")
  # The loss is read where checkpoints are written (every 2 steps): the bad step 7
  # is caught at step 8, before its checkpoint; the step-6 one stays, finite.
  index = glob.glob(str(tmp_path / "backup" / "toy" / "**" / "*.index"), recursive=True)
  assert index, os.listdir(tmp_path)
  reader = tf.train.load_checkpoint(os.path.dirname(index[0]))
  values = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "kernel" in k and "optimizer" not in k.lower()]
  assert values and all(np.isfinite(v).all() for v in values)


def test_early_stopping_keeps_the_best_weights_and_cleans_up(tmp_path):
  model = _model()
  seen = []

  def validate(epoch):  # best at epoch 2, then worse: stops after `patience` epochs
    seen.append(model.get_weights()[0].copy())
    return {1: 0.1, 2: 0.5}.get(epoch, 0.2)

  summary = fit_with_validation(model, _dataset(), epochs=10, validate=validate, patience=2,
                                job_dir=str(tmp_path), name="toy")
  assert summary["best_epoch"] == 2 and summary["epochs_run"] == 4
  np.testing.assert_array_equal(model.get_weights()[0], seen[1])
  assert not (tmp_path / "backup").exists()  # a finished run leaves no backup


def test_a_backup_resumes_only_the_same_configuration(tmp_path):
  def interrupted(fingerprint):
    with pytest.raises(FloatingPointError):
      fit_with_validation(_model(), _dataset(nan_batch=6), epochs=3, validate=lambda e: 0.0,
                          patience=5, job_dir=str(tmp_path), name="toy", checkpoint_every=2,
                          fingerprint=fingerprint)

  interrupted("config-a")
  resumed = fit_with_validation(_model(), _dataset(), epochs=1, validate=lambda e: 0.0,
                                patience=5, job_dir=str(tmp_path), name="toy",
                                checkpoint_every=2, fingerprint="config-a")
  assert resumed["resumed_from_step"] == 6
  interrupted("config-a")
  fresh = fit_with_validation(_model(), _dataset(), epochs=1, validate=lambda e: 0.0,
                              patience=5, job_dir=str(tmp_path), name="toy",
                              checkpoint_every=2, fingerprint="config-b")
  assert fresh["resumed_from_step"] == 0


def test_several_steps_per_call_train_the_same_steps(tmp_path):
  # Epoch checkpoints and a dataset of known size with >= 4 x 32 batches (130 an epoch):
  # 32 steps per call, the same weights as one step per call. Step checkpoints, a dataset of
  # unknown size or a short epoch (13 batches): one step per call.
  from tfrec_music.fit_loop import STEPS_PER_EXECUTION
  weights = {}
  for name, kwargs, data in (("one", {"steps_per_execution": 1}, _dataset(batches=130)),
                             ("many", {}, _dataset(batches=130)),
                             ("step_checkpoints", {"checkpoint_every": 50}, _dataset(batches=130)),
                             ("unknown_size", {}, _dataset(batches=130).filter(lambda x, y: True)),
                             ("short", {}, _dataset(batches=13))):
    model = _model()
    fit_with_validation(model, data, epochs=2, validate=lambda e: float(e), patience=5,
                        job_dir=str(tmp_path / name), name="toy", **kwargs)
    if name not in ("unknown_size", "short"):  # (Keras counts one more when it finds the end)
      assert int(model.optimizer.iterations) == 260, name
    expected = STEPS_PER_EXECUTION if name == "many" else 1
    assert int(model.steps_per_execution) == expected, name
    weights[name] = model.get_weights()
  for name in ("many", "step_checkpoints"):
    for got, want in zip(weights[name], weights["one"]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_averaged_weights_are_validated_kept_and_training_goes_on_from_the_raw_ones(tmp_path):
  from tfrec_music.models.two_tower.network import FusedAdam
  tf.keras.utils.set_random_seed(0)
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(3,))])
  momentum = 0.8
  model.compile(optimizer=FusedAdam(0.05, use_ema=True, ema_momentum=momentum), loss="mse")
  start = model.get_weights()[0].copy()
  seen, raw = [], []

  def validate(epoch):  # best at epoch 2: the weights kept are that epoch's average
    seen.append(model.get_weights()[0].copy())
    return {1: 0.1, 2: 0.5}.get(epoch, 0.2)

  class Raw(tf.keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      raw.append(self.model.get_weights()[0].copy())

  # The average by hand: warmed-up momentum min(m, (1 + t) / (10 + t)) after step t.
  summary = fit_with_validation(model, _dataset(), epochs=10, validate=validate, patience=2,
                                job_dir=str(tmp_path), name="toy", callbacks=[Raw()])
  assert summary["best_epoch"] == 2
  average, expected = start.astype(np.float64), []
  for step, weights in enumerate(raw):
    m = min(momentum, (1.0 + step) / (10.0 + step))
    average = m * average + (1 - m) * weights
    expected.append(average.copy())
  for epoch, weights in enumerate(seen):  # 10 steps an epoch
    np.testing.assert_allclose(weights, expected[10 * epoch + 9], rtol=1e-4, atol=1e-6)
    assert not np.allclose(weights, raw[10 * epoch + 9])
  np.testing.assert_array_equal(model.get_weights()[0], seen[1])
  # Epoch 2's first step starts from epoch 1's last raw weights, not from their average.
  assert np.abs(raw[10] - raw[9]).max() < np.abs(raw[10] - seen[0]).max()
