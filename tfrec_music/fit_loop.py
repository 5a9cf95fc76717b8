"""Keras training with validation early stopping, step checkpoints and resume.

The recommender idea: a ranking metric on held-out users (validation HR@10,
RMSE, ...) decides when to stop and which weights to keep, not the training
loss. This loop runs one `model.fit` over all epochs with three callbacks:

- `NaNGuard` stops on a non-finite loss with a clear message, checked at
  every step a checkpoint is written and at each epoch's end, before the
  checkpoint, so the last good checkpoint stays.
- `tf.keras.callbacks.BackupAndRestore` saves weights, optimizer state and
  the epoch/step counters every `checkpoint_every` steps (or every epoch) in
  `<job_dir>/backup`; a killed job rerun with the same command resumes there
  (mid-epoch included) instead of starting afresh.
- `ValidationStopping` scores the validation split after each epoch, keeps
  the best weights and stops after `patience` epochs without gain. Its state
  (history, best epoch, best weights) is saved beside the backup, so a resumed
  run keeps the best weights seen before the kill.

A run that finishes deletes its backup; only an interrupted run leaves one.

Under a parameter-server strategy the chief coordinates: the workers read the
training rows from the backup folder (`tfrec_music.coordinator`), the
backup is written at epoch ends, and validation runs on the chief.
"""

import contextlib
import dataclasses
import io as io_lib
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import coordinator
from tfrec_music import distribute
from tfrec_music import io
from tfrec_music.optimizers import moving_average

__all__ = ["NaNGuard", "ValidationStopping", "config_fingerprint", "fit_with_validation",
           "use_steps_per_execution", "STEPS_PER_EXECUTION"]

# Training steps per call into the compiled train function when a fit checkpoints at epoch
# ends. Keras' per-call Python work (callbacks, logs, dispatch) took ~2–3 ms of a ~12 ms
# two-tower step on 2 CPU cores; 32 steps a call gave 1.2–1.3x the examples/s (8: ~1.2x).
STEPS_PER_EXECUTION = 32


class NaNGuard(tf.keras.callbacks.Callback):
  """Raises `FloatingPointError` when the training loss is no longer finite.

  The loss is read at every step where `BackupAndRestore` saves (every
  `check_every` batches since training began, as its counter) and at each
  epoch's end (the epoch mean, NaN if any batch was), always before the
  backup callback runs. A NaN step makes every later loss NaN, so no
  checkpoint is ever written after one; reading the loss only there keeps
  the steps between free of a device-to-host sync. Raising (instead of
  `stop_training`) skips `on_train_end`, so `BackupAndRestore` keeps the
  last checkpoint written before the bad step.

  Args:
    advice: What to change, appended to the message.
    check_every: Batches between checks (the checkpoint frequency); 0 checks
      at epoch ends only.
  """

  def __init__(self, advice: str, check_every: int = 1):
    super().__init__()
    self._supports_tf_logs = True  # Batch logs stay tensors: no sync on unchecked steps.
    self.advice = advice
    self.check_every = int(check_every)
    self.epoch = 0
    self._batches = 0

  def on_train_begin(self, logs=None):
    self._batches = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def _check(self, logs, where: str) -> None:
    loss = (logs or {}).get("loss")
    if loss is not None and not np.isfinite(float(loss)):
      raise FloatingPointError(
          f"Training loss became {float(loss)} {where}. "
          f"{self.advice} The last good checkpoint is kept in the job dir's backup folder.")

  def on_train_batch_end(self, batch, logs=None):
    if self.check_every <= 0:
      return
    self._batches += 1
    if self._batches % self.check_every == 0:
      self._check(logs, f"at epoch {self.epoch + 1}, by step {batch + 1}")

  def on_epoch_end(self, epoch, logs=None):
    self._check(logs, f"at epoch {epoch + 1}")


class ValidationStopping(tf.keras.callbacks.Callback):
  """Early stopping on a validation metric (higher is better) that keeps the best weights.

  Args:
    validate: epoch (1-based) -> validation metric of the current weights.
    patience: Epochs without gain before stopping.
    state_dir: Folder for the resumable state (None: not saved).
    name: Metric name for logs and TensorBoard.
    writer: Summary writer for the per-epoch metric (optional).
    on_epoch: Called with (epoch, loss, metric) after each validation.
  """

  def __init__(self, validate: Callable[[int], float], patience: int,
               state_dir: Optional[str], name: str = "valid_hr@10",
               writer=None, on_epoch: Optional[Callable[[int, float, float], None]] = None):
    super().__init__()
    self.validate = validate
    self.patience = patience
    self.state_dir = state_dir
    self.name = name
    self.writer = writer
    self.on_epoch = on_epoch
    self.history: List[Dict[str, float]] = []
    self.best_value = -np.inf
    self.best_epoch = 0
    self.best_weights: Optional[List[np.ndarray]] = None
    self.resumed_from_epoch = 0
    self.start_step = 0

  def _paths(self):
    return (io.join(self.state_dir, "validation_state.json"),
            io.join(self.state_dir, "best_weights.npz"))

  def on_train_begin(self, logs=None):
    # BackupAndRestore (earlier in the callback list) has restored the counters by now.
    self.start_step = int(self.model.optimizer.iterations.numpy())
    if self.start_step:
      logging.info("Resuming from the checkpoint at step %d.", self.start_step)
    if not self.state_dir:
      return
    state_path, weights_path = self._paths()
    if not (tf.io.gfile.exists(state_path) and tf.io.gfile.exists(weights_path)):
      return
    with tf.io.gfile.GFile(state_path) as f:
      state = json.load(f)
    with tf.io.gfile.GFile(weights_path, "rb") as f:
      arrays = np.load(io_lib.BytesIO(f.read()), allow_pickle=False)
      self.best_weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]
    self.history = state["history"]
    self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
    self.resumed_from_epoch = len(self.history)
    logging.info("Resuming: %d epochs validated before, best %s %.4f at epoch %d.",
                 len(self.history), self.name, self.best_value, self.best_epoch)

  def _save_state(self):
    if not self.state_dir:
      return
    tf.io.gfile.makedirs(self.state_dir)
    state_path, weights_path = self._paths()
    if self.best_weights is not None:
      buffer = io_lib.BytesIO()
      np.savez(buffer, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
      with tf.io.gfile.GFile(weights_path + ".tmp", "wb") as f:
        f.write(buffer.getvalue())
      tf.io.gfile.rename(weights_path + ".tmp", weights_path, overwrite=True)
    with tf.io.gfile.GFile(state_path + ".tmp", "w") as f:
      json.dump({"history": self.history, "best_value": self.best_value,
                 "best_epoch": self.best_epoch}, f)
    tf.io.gfile.rename(state_path + ".tmp", state_path, overwrite=True)

  def on_epoch_end(self, epoch, logs=None):
    loss = float((logs or {}).get("loss", np.nan))
    with averaged_weights(self.model):
      value = float(self.validate(epoch + 1))
      is_best = value > self.best_value
      if is_best:
        self.best_weights = self.model.get_weights()
    # A resumed run may redo the end of an epoch validated before the kill.
    self.history = [h for h in self.history if h["epoch"] < epoch + 1]
    self.history.append({"epoch": epoch + 1, "loss": loss, self.name: value})
    logging.info("epoch %d: loss %.4f, %s %.4f", epoch + 1, loss, self.name, value)
    if self.writer is not None:
      with self.writer.as_default():
        tf.summary.scalar(self.name, value, step=epoch + 1)
    if self.on_epoch is not None:
      self.on_epoch(epoch + 1, loss, value)
    if is_best:
      self.best_value, self.best_epoch = value, epoch + 1
    elif epoch + 1 - self.best_epoch >= self.patience:
      logging.info("Early stopping: no validation gain for %d epochs.", self.patience)
      self.model.stop_training = True
    self._save_state()

  def on_train_end(self, logs=None):
    if self.state_dir and tf.io.gfile.exists(self.state_dir):
      tf.io.gfile.rmtree(self.state_dir)


@contextlib.contextmanager
def averaged_weights(model: tf.keras.Model):
  """Within the block the model's trainable weights are the optimizer's moving average.

  Optimizers built with `use_ema` keep an average of each trainable
  variable; validation scores it and early stopping keeps it, while
  training goes on from the raw weights, put back when the block ends. A
  model whose optimizer keeps no average is left as it is.
  """
  optimizer = getattr(model, "optimizer", None)
  pairs = [(v, moving_average(optimizer, v)) for v in model.trainable_variables]
  pairs = [(v, a) for v, a in pairs if a is not None]
  raw = [v.read_value() for v, _ in pairs]
  for variable, average in pairs:
    variable.assign(average)
  try:
    yield
  finally:
    for (variable, _), value in zip(pairs, raw):
      variable.assign(value)


def _build(model: tf.keras.Model, dataset: tf.data.Dataset) -> None:
  """Creates the model's and optimizer's variables, so a checkpoint can restore into them."""
  if not model.built:
    batch = next(iter(dataset.take(1)))
    with model.distribute_strategy.scope():
      model.compute_loss(batch, training=False)
    model.built = True
  with model.distribute_strategy.scope():
    model.optimizer.build(model.trainable_variables)


def _discard_foreign_backup(path: str, fingerprint: str, folders: Sequence[str]) -> None:
  """Removes a backup written under another configuration; records this run's."""
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = f.read()
    if previous != fingerprint:
      logging.warning("The backup in %s was written by a run with another configuration; "
                      "starting afresh instead of resuming.", os.path.dirname(path))
      for folder in folders:
        if tf.io.gfile.exists(folder):
          tf.io.gfile.rmtree(folder)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(fingerprint)


def config_fingerprint(config: Any, **data: Any) -> str:
  """The `fingerprint` of `fit_with_validation` for a dataclass config and its data.

  `epochs` is left out, so a rerun asking for more epochs still resumes;
  `data` holds what identifies the training data (e.g. the prepared data's
  fingerprint).
  """
  return json.dumps({**dataclasses.asdict(config), "epochs": None, **data}, sort_keys=True,
                    default=str)


def _clean_up(config_file: str, rows_dir: str, *folders: str) -> None:
  """Removes a finished fit's backup files and empty folders. Every worker of a cluster runs
  it, so a path another worker removed first is skipped, not an error."""
  steps = [(config_file, tf.io.gfile.exists, tf.io.gfile.remove),
           (rows_dir, tf.io.gfile.exists, tf.io.gfile.rmtree)]
  steps += [(folder, lambda f: tf.io.gfile.isdir(f) and not tf.io.gfile.listdir(f),
             tf.io.gfile.rmtree) for folder in folders]  # BackupAndRestore emptied them
  for path, wanted, remove in steps:
    try:
      if wanted(path):
        remove(path)
    except tf.errors.NotFoundError:
      logging.info("Backup clean-up: another worker removed %s first.", path)


def use_steps_per_execution(model: tf.keras.Model, dataset: tf.data.Dataset, *,
                            checkpoint_every: int = 0, coordinated: bool = False,
                            steps_per_execution: int = STEPS_PER_EXECUTION) -> int:
  """Sets how many training steps `model.fit` runs per call on `dataset`; returns it.

  `steps_per_execution` with epoch checkpoints, no coordinator and at least
  4 x that many batches an epoch; otherwise 1 (see `fit_with_validation`).
  """
  # Keras needs the steps per epoch to run several per call: a dataset of unknown size
  # (streamed shards) runs one. Tracing the multi-step function costs ~0.4 s once; an epoch
  # of fewer than 4 calls' worth of steps (the tiny preset's 13) does not pay it back.
  steps = int(dataset.cardinality())
  several = (checkpoint_every <= 0 and not coordinated and steps >= 4 * steps_per_execution)
  value = steps_per_execution if several else 1
  model.steps_per_execution = value
  model.train_function = None  # Rebuilt by `fit` for the steps per execution set here.
  return value


def fit_with_validation(model: tf.keras.Model, dataset: tf.data.Dataset, *, epochs: int,
                        validate: Callable[[int], float], patience: int, job_dir: str,
                        name: str, checkpoint_every: int = 0,
                        backup_dir: Optional[str] = None, fingerprint: str = "",
                        callbacks: Sequence[tf.keras.callbacks.Callback] = (),
                        nan_advice: str = "Lower the learning rate.",
                        metric_name: str = "valid_hr@10",
                        steps_per_execution: int = STEPS_PER_EXECUTION) -> Dict[str, Any]:
  """Trains `model` with validation early stopping, checkpoints and resume.

  Args:
    model: A compiled Keras model.
    dataset: Training batches (global batch size).
    epochs: Maximum epochs.
    validate: epoch -> validation metric (higher is better).
    patience: Early-stopping patience in epochs.
    job_dir: Run folder (this worker's): logs and the validation state.
    name: Model name (backup sub-folder and log label).
    checkpoint_every: Checkpoint every this many steps; 0 = every epoch.
    backup_dir: Folder of the Keras backup, shared by all workers (default
      `<job_dir>/backup`); the checkpoint goes to `<backup_dir>/<name>`.
    fingerprint: The run's configuration as text. A backup left by a run
      with another configuration is discarded (with a warning) instead of
      being restored into a model it does not fit.
    callbacks: Extra callbacks (e.g. TensorBoard).
    nan_advice: Advice in the non-finite loss error.
    metric_name: Name of the validation metric in logs and the summary.
    steps_per_execution: Training steps run per call into the compiled
      train function (one Python round trip for that many steps, the same
      steps in the same order). Used only with epoch checkpoints, without a
      coordinator, on a dataset of known size with at least 4 x that many
      batches: step checkpoints (`checkpoint_every` > 0), parameter-server
      training, streamed data and short epochs run one step per call (Keras
      counts the steps between backups by calls and needs the epoch's size
      to run several; tracing the multi-step function costs ~0.4 s once).

  Returns:
    Summary: best epoch and value, epochs run, per-epoch history, and the
    epoch a resumed run started from (0 when it started afresh).

  Raises:
    FloatingPointError: the loss became NaN or infinite.
  """
  # The Keras backup must be one folder that every worker sees (the chief writes it, all
  # read it on resume); the validation state is each worker's own.
  shared_dir = backup_dir or io.join(job_dir, "backup")
  keras_dir = io.join(shared_dir, name)
  state_dir = io.join(job_dir, "backup", f"{name}_validation")
  rows_dir = io.join(shared_dir, f"{name}_worker_rows")
  _discard_foreign_backup(io.join(job_dir, "backup", f"{name}_config.json"), fingerprint,
                          (keras_dir, state_dir))
  coordinated = distribute.uses_coordinator(model.distribute_strategy)
  if coordinated and checkpoint_every > 0:
    logging.info("Parameter-server training checkpoints at epoch ends (Keras writes no step "
                 "checkpoints under a coordinator); `checkpoint_every` = %d is not used.",
                 checkpoint_every)
    checkpoint_every = 0
  backup = tf.keras.callbacks.BackupAndRestore(
      backup_dir=keras_dir, save_freq=checkpoint_every if checkpoint_every > 0 else "epoch")
  writer = tf.summary.create_file_writer(io.join(job_dir, "logs", name, "validation"))
  stopping = ValidationStopping(validate, patience, state_dir, name=metric_name, writer=writer)
  _build(model, dataset)
  use_steps_per_execution(model, dataset, checkpoint_every=checkpoint_every,
                          coordinated=coordinated, steps_per_execution=steps_per_execution)
  steps_per_epoch = None
  if coordinated:
    dataset, steps_per_epoch = coordinator.worker_dataset(dataset, rows_dir)
    callbacks = [coordinator.coordinator_callback(c) for c in callbacks]
  # NaNGuard first: it must raise before BackupAndRestore saves the bad step.
  model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
            callbacks=[NaNGuard(nan_advice, check_every=checkpoint_every), backup, stopping,
                       *callbacks])
  if stopping.best_weights is not None:
    model.set_weights(stopping.best_weights)
  _clean_up(io.join(job_dir, "backup", f"{name}_config.json"), rows_dir,
            keras_dir, io.join(job_dir, "backup"), shared_dir)
  return {"best_epoch": stopping.best_epoch, f"best_{metric_name}": stopping.best_value,
          "epochs_run": len(stopping.history), "history": stopping.history,
          "resumed_from_epoch": stopping.resumed_from_epoch,
          "resumed_from_step": stopping.start_step}
