"""Parameter-server training inputs: the rows every worker reads, and coordinator-safe callbacks.

Under `ParameterServerStrategy` the chief schedules training steps on the
workers, and each worker builds its own input pipeline. A family's
`tf.data.Dataset` is built on the chief (often from Python), so
`worker_dataset` writes one epoch of its rows once to a folder every task
sees; each worker reads them and reshuffles them with its own seed every pass,
so the workers do not train on the same batches in the same order.
"""

import logging
from typing import Tuple

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

__all__ = ["worker_dataset", "coordinator_callback"]


def _batch_rows(batch) -> int:
  return int(tf.shape(tf.nest.flatten(batch)[0])[0])


def worker_dataset(dataset: tf.data.Dataset, folder: str
                   ) -> Tuple[tf.keras.utils.experimental.DatasetCreator, int]:
  """One epoch of `dataset`'s rows, written to `folder`, as the workers' input.

  Args:
    dataset: The family's training batches (finite: one epoch). A family
      that draws new rows every epoch (fresh sampled negatives) is read once:
      its first epoch's rows are the ones reshuffled every pass.
    folder: Where the rows go (replaced); every worker must be able to read it
      (the job dir: a shared disk or `gs://`).

  Returns:
    `(creator, steps_per_epoch)`: the `DatasetCreator` for `model.fit` (rows
    shuffled with a per-worker seed, batched as `dataset` was, repeated) and
    the number of batches of `dataset`.

  Raises:
    ValueError: `dataset` is empty or infinite.
  """
  steps = int(dataset.cardinality())
  if steps == tf.data.INFINITE_CARDINALITY:
    raise ValueError("Parameter-server training needs a finite training dataset (one epoch); "
                     "the family's dataset repeats forever.")
  first = next(iter(dataset.take(1)), None)
  if first is None:
    raise ValueError("Parameter-server training got an empty training dataset.")
  batch_size = _batch_rows(first)
  # A static batch dimension means the family dropped the last partial batch.
  drop_remainder = tf.nest.flatten(dataset.element_spec)[0].shape[0] is not None
  if tf.io.gfile.exists(folder):
    tf.io.gfile.rmtree(folder)
  rows = dataset.unbatch()
  rows.save(folder)
  spec = rows.element_spec
  n_rows = int(tf.data.Dataset.load(folder, element_spec=spec).reduce(
      tf.constant(0, tf.int64), lambda count, _: count + 1))
  if steps < 0:  # unknown cardinality: as many batches as the rows make
    steps = -(-n_rows // batch_size)
  logging.info("Parameter server: %d training rows written to %s for the workers; %d steps "
               "per epoch of %d rows.", n_rows, folder, steps, batch_size)

  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    del context  # every worker reads all rows; the coordinator spreads the steps
    # No graph seed in this (traced) function: each worker's shuffle draws its own
    # seed when its pipeline starts, so the workers, and a worker restarted after a
    # failure, read the rows in different orders.
    tf.random.set_seed(None)
    data = tf.data.Dataset.load(folder, element_spec=spec).cache()
    data = data.shuffle(n_rows, reshuffle_each_iteration=True)
    return data.batch(batch_size, drop_remainder=drop_remainder).repeat().prefetch(
        tf.data.AUTOTUNE)

  return tf.keras.utils.experimental.DatasetCreator(dataset_fn), steps


class _CoordinatorCallback(tf.keras.callbacks.Callback):
  """Runs `callback` under a coordinator: its batch hooks get `logs=None`.

  Keras refuses batch-level callbacks under a parameter-server strategy unless
  they accept the batch logs as `RemoteValue`s (not yet computed when the hook
  runs); a hook that only counts or times batches works the same without them.
  """

  def __init__(self, callback: tf.keras.callbacks.Callback):
    super().__init__()
    self._supports_tf_logs = True
    self.callback = callback

  def set_model(self, model):
    super().set_model(model)
    self.callback.set_model(model)

  def set_params(self, params):
    super().set_params(params)
    self.callback.set_params(params)

  def on_train_begin(self, logs=None):
    self.callback.on_train_begin(logs)

  def on_train_end(self, logs=None):
    self.callback.on_train_end(logs)

  def on_epoch_begin(self, epoch, logs=None):
    self.callback.on_epoch_begin(epoch, logs)

  def on_epoch_end(self, epoch, logs=None):
    self.callback.on_epoch_end(epoch, logs)

  def on_train_batch_begin(self, batch, logs=None):
    del logs
    self.callback.on_train_batch_begin(batch, None)

  def on_train_batch_end(self, batch, logs=None):
    del logs
    self.callback.on_train_batch_end(batch, None)


def coordinator_callback(callback: tf.keras.callbacks.Callback) -> tf.keras.callbacks.Callback:
  """`callback` as `model.fit` under a parameter-server strategy accepts it.

  Callbacks that read batch logs as tensors, or have no batch hooks, are
  returned as they are; others get their batch hooks called without logs.
  """
  if getattr(callback, "_supports_tf_logs", False) or not (
      callback._implements_train_batch_hooks()):  # pylint: disable=protected-access
    return callback
  return _CoordinatorCallback(callback)
