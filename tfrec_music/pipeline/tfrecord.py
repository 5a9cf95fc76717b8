"""Sharded TFRecord files: materialize large splits once, stream them after.

Writing takes an iterator of frames (so a split never needs to sit in memory
whole) and rolls over to a new shard every `shard_rows` rows. Reading
interleaves shards in parallel and parses batches, so memory stays flat as the
data grows.
"""

import json
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io

_SPEC_FILE = "features.json"


def _kind(values: np.ndarray) -> str:
  if values.dtype.kind in "iub":
    return "int64"
  if values.dtype.kind == "f":
    return "float32"
  return "string"


def _feature(kind: str, value) -> tf.train.Feature:
  if kind == "int64":
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
  if kind == "float32":
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode("utf-8")]))


def write_shards(frames: Iterable[pd.DataFrame], directory: str, name: str,
                 shard_rows: int = 1_000_000) -> List[str]:
  """Writes frames of scalar columns as `name-00000.tfrecord` shards.

  Args:
    frames: Frames with the same columns (e.g. chunks of a split).
    directory: Output folder (local or `tf.io.gfile` path).
    name: File prefix, e.g. `"train"`.
    shard_rows: Rows per shard.

  Returns:
    The shard paths, in order. A `features.json` beside them records the
    column types for `read_shards`.
  """
  if shard_rows <= 0:
    raise ValueError(f"`shard_rows` should be positive. Received: `shard_rows` = {shard_rows}.")
  io.makedirs(directory)
  paths: List[str] = []
  kinds: Dict[str, str] = {}
  writer = None
  in_shard = 0
  for frame in frames:
    if not kinds:
      kinds = {c: _kind(frame[c].to_numpy()) for c in frame.columns}
    columns = {c: frame[c].to_numpy() for c in kinds}
    for i in range(len(frame)):
      if writer is None or in_shard >= shard_rows:
        if writer is not None:
          writer.close()
        path = io.join(directory, f"{name}-{len(paths):05d}.tfrecord")
        paths.append(path)
        writer = tf.io.TFRecordWriter(path)
        in_shard = 0
      example = tf.train.Example(features=tf.train.Features(
          feature={c: _feature(k, columns[c][i]) for c, k in kinds.items()}))
      writer.write(example.SerializeToString())
      in_shard += 1
  if writer is not None:
    writer.close()
  io.write_text(io.join(directory, f"{name}.{_SPEC_FILE}"), json.dumps(kinds) + "\n")
  return paths


def read_shards(directory: str, name: str, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, shuffle_buffer: int = 100_000, repeat: bool = False,
                lookup_fn: Optional[Callable] = None) -> tf.data.Dataset:
  """Streams the shards written by `write_shards` as batched feature dicts.

  Args:
    directory: Folder of the shards.
    name: File prefix given to `write_shards`.
    batch_size: Batch size.
    shuffle: Shuffle shard order and rows (bounded buffer) with `seed`.
    seed: Shuffle seed.
    shuffle_buffer: Rows held for shuffling (bounds memory).
    repeat: Repeat forever.
    lookup_fn: Batched map on the host: raw feature dict -> model inputs.

  Returns:
    A `tf.data.Dataset` of dicts of [batch] tensors.
  """
  kinds = json.loads(io.read_text(io.join(directory, f"{name}.{_SPEC_FILE}")))
  spec = {c: tf.io.FixedLenFeature([], {"int64": tf.int64, "float32": tf.float32,
                                        "string": tf.string}[k])
          for c, k in kinds.items()}
  files = tf.data.Dataset.list_files(io.join(directory, f"{name}-*.tfrecord"),
                                     shuffle=shuffle, seed=seed)
  ds = files.interleave(tf.data.TFRecordDataset, cycle_length=tf.data.AUTOTUNE,
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size).map(lambda x: tf.io.parse_example(x, spec),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if lookup_fn is not None:
    ds = ds.map(lookup_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)
