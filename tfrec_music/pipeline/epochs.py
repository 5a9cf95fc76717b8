"""Per-epoch training batches drawn from in-memory feature arrays (a fixed step count)."""

from typing import Callable, Dict

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


def epoch_batches(draw: Callable[[int], Dict[str, np.ndarray]], steps: int,
                  epoch_of: Callable[[], int], seed: int,
                  signature: Dict[str, tf.TensorSpec]) -> tf.data.Dataset:
  """Exactly `steps` batches per epoch of the rows `draw(epoch)` returns, reshuffled each epoch.

  Keras' `BackupAndRestore` resumes mid-epoch only when the number of steps
  per epoch is known, so the rows are cut into exactly `steps` near-equal
  batches (`np.array_split`) whatever their count that epoch (hard negatives
  that hit a user's own track are dropped, so the count varies a little).
  Rows are sliced from the arrays on demand: no copy is made, which matters
  when implicit labels draw millions of fresh negatives every epoch.

  Args:
    draw: epoch -> feature arrays [N, ...] with a `label` [N].
    steps: Batches per epoch.
    epoch_of: Which epoch an iteration is for, read when the iteration starts
      (the optimizer's step count // `steps`: after a resumed run restored
      its counters, the resumed epoch; so the rows and order depend on the
      epoch, not on how many times the run was started).
    seed: Shuffle seed (plus the epoch).
    signature: Feature name -> `tf.TensorSpec` of one batch.

  Returns:
    A `tf.data.Dataset` of known cardinality `steps`.
  """

  def _batches():
    epoch = int(epoch_of())
    features = draw(epoch)
    n = len(features["label"])
    order = np.random.default_rng(seed + epoch).permutation(n)
    for rows in np.array_split(order, steps):
      rows = np.sort(rows)
      yield {k: v[rows] for k, v in features.items()}

  dataset = tf.data.Dataset.from_generator(_batches, output_signature=signature)
  return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


def feature_signature(features: Dict[str, np.ndarray]) -> Dict[str, tf.TensorSpec]:
  """`tf.TensorSpec`s of batches of `features` (any number of rows)."""
  return {k: tf.TensorSpec((None,) + v.shape[1:], tf.as_dtype(v.dtype))
          for k, v in features.items()}
