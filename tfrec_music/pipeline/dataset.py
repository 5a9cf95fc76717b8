"""tf.data pipelines from prepared frames to batched feature dicts.

Features stay raw values (strings and numbers) in the frames; the lookups from
strings to indices run as a `map` on the host side of the pipeline
(`lookup_fn`), so the accelerator (TPU included) only ever sees integers. The
same lookup layers are placed inside the exported model for serving.
"""

from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


def frame_to_features(frame: pd.DataFrame, columns: Sequence[str]) -> Dict[str, np.ndarray]:
  """Columns of `frame` as numpy arrays ready for `from_tensor_slices`.

  Strings become `object` arrays of str, integers int64, floats float32.

  Raises:
    ValueError: a requested column is absent (names the column and the ones present).
  """
  out = {}
  for column in columns:
    if column not in frame.columns:
      raise ValueError(f"Column `{column}` is not in the data (columns present: "
                       f"{list(frame.columns)}). Drop it from the feature list "
                       "or add it to the input tables.")
    values = frame[column].to_numpy()
    if values.dtype.kind in "iu":
      out[column] = values.astype(np.int64)
    elif values.dtype.kind == "f":
      out[column] = values.astype(np.float32)
    else:
      out[column] = values.astype(str).astype(object)
  return out


def make_dataset(features: Mapping[str, np.ndarray], batch_size: int, *,
                 shuffle: bool = True, seed: int = 0, repeat: bool = False,
                 lookup_fn: Optional[Callable] = None,
                 drop_remainder: bool = False) -> tf.data.Dataset:
  """Builds a batched, prefetched dataset of feature dicts.

  The rows are held in memory as tensors once. Each epoch (each new iterator,
  as Keras makes one per epoch) draws one permutation of the row indices in a
  single op, cuts it into batches of indices and gathers each batch's rows in
  one op: per epoch the pipeline handles a few hundred batch elements, not
  every row through a shuffle buffer and a batcher (on a 2-core host that
  per-row work took ~0.3 s of a ~3 s two-tower epoch, competing with the
  training step). Every row appears once per epoch; a batch never spans two
  epochs.

  Args:
    features: Feature name -> [N, ...] array (all of equal length N).
    batch_size: Batch size; must be positive. A batch larger than N gives one
      (smaller) batch unless `drop_remainder`, in which case it is an error.
    shuffle: Shuffle rows each epoch: a seeded permutation, a new one for
      every epoch and every iterator (the same sequence of orders for the
      same seed).
    seed: Shuffle seed.
    repeat: Repeat forever (for step-based training), epoch after epoch.
    lookup_fn: Batched map on the host: raw feature dict -> model inputs.
    drop_remainder: Drop the last partial batch.

  Returns:
    A `tf.data.Dataset`.

  Raises:
    ValueError: bad `batch_size` or empty / ragged features.
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise ValueError("`batch_size` should be a positive integer. "
                     f"Received: `batch_size` = {batch_size!r}.")
  lengths = {name: len(v) for name, v in features.items()}
  if not lengths or len(set(lengths.values())) != 1:
    raise ValueError(f"Features must be non-empty and of equal length. Received lengths: {lengths}.")
  n = next(iter(lengths.values()))
  if n == 0:
    raise ValueError("No rows to build a dataset from: the split is empty.")
  if drop_remainder and batch_size > n:
    raise ValueError(f"`batch_size` = {batch_size} is larger than the {n} training rows, "
                     "so no full batch exists. Use a smaller `--batch-size`.")
  columns = {name: tf.constant(values) for name, values in features.items()}
  n_batches = n // batch_size if drop_remainder else -(-n // batch_size)
  rows_shape = [batch_size] if drop_remainder else [None]

  def batches(order: tf.Tensor) -> tf.data.Dataset:
    """One epoch: `order` [n] cut into `n_batches` batches of row indices."""
    def cut(b):
      rows = order[b * batch_size:(b + 1) * batch_size]
      rows.set_shape(rows_shape)
      return rows
    return tf.data.Dataset.range(n_batches).map(cut)

  if shuffle:
    # One int64 per epoch, different for each new iterator, seeded by `seed`.
    epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = (epoch_seeds if repeat else epoch_seeds.take(1)).flat_map(
        lambda epoch_seed: batches(tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, seed]))))
  else:
    ds = batches(tf.range(n, dtype=tf.int64))
    if repeat:
      ds = ds.repeat()
  if not repeat:
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
  ds = ds.map(lambda rows: {name: tf.gather(column, rows) for name, column in columns.items()},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if lookup_fn is not None:
    ds = ds.map(lookup_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return without_autotuning(ds.prefetch(tf.data.AUTOTUNE))


def without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` with tf.data's autotuning off: AUTOTUNE parallelism becomes the core count.

  The autotuning thread made deleting an epoch's iterator wait up to ~2.4 s
  (half of the 2.7 s default-preset two-tower epochs took exactly 5.12 s, at
  the same CPU time; Keras makes one iterator per epoch), and on 2 cores it
  competes with the training step.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)
