"""Sharded TFRecord files: materialize large splits once, stream them after.

Writing takes an iterator of frames or column dicts (so a split never needs to
sit in memory whole) and rolls over to a new shard every `shard_rows` rows.
Columns are scalars or fixed-length lists (a 2-D array column, e.g. a
[rows, 20] history of track indices). Rows whose columns are all integers are
serialized with numpy (protobuf varints laid out for a whole chunk at once),
several times cheaper than building one `tf.train.Example` per row; other rows
go through the protobuf library. Reading interleaves shards in parallel
(`num_parallel_calls` readers), shuffles serialized rows in a bounded buffer,
batches them and only then parses the batch (one `parse_example` call per
batch, not per row), so memory stays flat as the data grows.
"""

import json
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.pipeline.dataset import without_autotuning

_SPEC_FILE = "features.json"
# Rows serialized at a time (bounds the encoder's temporary arrays).
_ENCODE_ROWS = 16_384
_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}


def _kind(values: np.ndarray) -> str:
  if values.dtype.kind in "iub":
    return "int64"
  if values.dtype.kind == "f":
    return "float32"
  return "string"


def _list_feature(kind: str, values) -> tf.train.Feature:
  if kind == "int64":
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  if kind == "float32":
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[str(v).encode("utf-8") for v in values]))


def _columns(frame: Union[pd.DataFrame, Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
  if isinstance(frame, pd.DataFrame):
    return {c: frame[c].to_numpy() for c in frame.columns}
  return {c: np.asarray(v) for c, v in frame.items()}


def _spec_of(columns: Dict[str, np.ndarray]) -> Dict[str, Union[str, List]]:
  """Column -> `"int64"` (scalar) or `["int64", length]` (fixed-length list)."""
  spec = {}
  for name, values in columns.items():
    if values.ndim == 1:
      spec[name] = _kind(values)
    elif values.ndim == 2:
      spec[name] = [_kind(values), int(values.shape[1])]
    else:
      raise ValueError(f"Column `{name}` should be 1-D (scalars) or 2-D (fixed-length lists). "
                       f"Received: shape {values.shape}.")
  return spec


def _rows_as_lists(columns: Dict[str, np.ndarray], spec) -> List[Tuple[str, str, list]]:
  """(name, kind, per-row value lists) with numpy converted to Python once per chunk."""
  out = []
  for name, kind in spec.items():
    values = columns[name]
    if isinstance(kind, list):
      kind = kind[0]
      rows = values.tolist()
    else:
      rows = [[v] for v in values.tolist()]
    out.append((name, kind, rows))
  return out


def _varint_count(x: np.ndarray) -> np.ndarray:
  """Protobuf varint byte counts of uint64 values."""
  count = np.ones(x.shape, dtype=np.int64)
  for k in range(1, 10):
    over = x >= np.uint64(1 << (7 * k))
    if not over.any():
      break
    count += over
  return count


def _varints(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Protobuf varint bytes [..., width] and byte counts [...] of int64 values (two's complement)."""
  x = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
  count = _varint_count(x)
  width = int(count.max()) if count.size else 1
  groups = np.empty(x.shape + (width,), dtype=np.uint8)
  for j in range(width):
    byte = ((x >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
    groups[..., j] = np.where(count - 1 > j, byte | np.uint8(0x80), byte)
  return groups, count


def _length_of_varint(values: np.ndarray) -> np.ndarray:
  return _varint_count(np.ascontiguousarray(values, dtype=np.int64).view(np.uint64))


def _encode_int_examples(columns: Dict[str, np.ndarray], spec) -> Tuple[np.ndarray, np.ndarray]:
  """Serialized `tf.train.Example`s of all-int64 rows, built with numpy (no per-row protos).

  Lays out, per row, every protobuf field as a column of integers (tags, lengths,
  key bytes, values), varint-encodes the matrix at once and cuts the bytes into
  records. Parses to the same Example as the protobuf library builds.

  Returns:
    (bytes [total], offsets [rows + 1]) of the records.
  """
  n = len(next(iter(columns.values())))
  parts: List[np.ndarray] = []          # [n, c] int64 column blocks, in wire order
  entry_lengths = []
  for name in spec:
    values = columns[name].astype(np.int64).reshape(n, -1)
    key = np.frombuffer(name.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    packed = _length_of_varint(values).sum(axis=1)                 # P
    list_len = 1 + _length_of_varint(packed) + packed              # Int64List
    feature_len = 1 + _length_of_varint(list_len) + list_len       # Feature
    entry_len = 1 + 1 + len(key) + 1 + _length_of_varint(feature_len) + feature_len
    const = lambda v: np.full((n, 1), v, dtype=np.int64)          # noqa: E731
    parts.append(np.concatenate([
        const(0x0A), entry_len[:, None], const(0x0A), const(len(key)),
        np.broadcast_to(key, (n, len(key))), const(0x12), feature_len[:, None],
        const(0x1A), list_len[:, None], const(0x0A), packed[:, None], values], axis=1))
    entry_lengths.append(1 + _length_of_varint(entry_len) + entry_len)
  features_len = np.sum(entry_lengths, axis=0)
  matrix = np.concatenate([np.full((n, 1), 0x0A, np.int64), features_len[:, None]] + parts,
                          axis=1)
  groups, count = _varints(matrix)
  mask = np.arange(groups.shape[-1]) < count[..., None]
  data = groups[mask]
  offsets = np.zeros(n + 1, dtype=np.int64)
  offsets[1:] = np.cumsum(count.sum(axis=1))
  return data, offsets


def write_shards(frames: Iterable[Union[pd.DataFrame, Mapping[str, np.ndarray]]],
                 directory: str, name: str, shard_rows: int = 1_000_000) -> List[str]:
  """Writes frames as `name-00000.tfrecord` shards of `tf.train.Example`s.

  Args:
    frames: Frames (or dicts of equal-length numpy arrays) with the same
      columns (e.g. chunks of a split). A 2-D array [rows, L] is written as a
      fixed-length list feature of length L; every chunk must use the same L.
    directory: Output folder (local or `tf.io.gfile` path).
    name: File prefix, e.g. `"train"`.
    shard_rows: Rows per shard.

  Returns:
    The shard paths, in order. A `<name>.features.json` beside them records
    the column types (and list lengths) for `read_shards`.

  Raises:
    ValueError: `shard_rows` is not positive, or a chunk's columns, types or
      list lengths differ from the first chunk's.
  """
  if shard_rows <= 0:
    raise ValueError(f"`shard_rows` should be positive. Received: `shard_rows` = {shard_rows}.")
  io.makedirs(directory)
  paths: List[str] = []
  spec: Dict[str, Union[str, List]] = {}
  writer = None
  in_shard = 0
  for number, frame in enumerate(frames):
    columns = _columns(frame)
    if not spec:
      spec = _spec_of(columns)
    elif _spec_of(columns) != spec:
      raise ValueError(f"Chunk {number} of `{name}` has columns {_spec_of(columns)}, but the "
                       f"first chunk had {spec}. Every chunk needs the same columns, types and "
                       "list lengths.")
    n_rows = len(next(iter(columns.values()))) if columns else 0
    all_int = all((k[0] if isinstance(k, list) else k) == "int64" for k in spec.values())
    for start in range(0, n_rows, _ENCODE_ROWS):
      stop = min(n_rows, start + _ENCODE_ROWS)
      part = {c: v[start:stop] for c, v in columns.items()}
      if all_int:
        data, offsets = _encode_int_examples(part, spec)
        data = data.tobytes()
        records = (data[offsets[i]:offsets[i + 1]] for i in range(stop - start))
      else:
        lists = _rows_as_lists(part, spec)
        records = (tf.train.Example(features=tf.train.Features(
            feature={c: _list_feature(k, rows[i]) for c, k, rows in lists})).SerializeToString()
                   for i in range(stop - start))
      for record in records:
        if writer is None or in_shard >= shard_rows:
          if writer is not None:
            writer.close()
          path = io.join(directory, f"{name}-{len(paths):05d}.tfrecord")
          paths.append(path)
          writer = tf.io.TFRecordWriter(path)
          in_shard = 0
        writer.write(record)
        in_shard += 1
  if writer is not None:
    writer.close()
  io.write_text(io.join(directory, f"{name}.{_SPEC_FILE}"), json.dumps(spec) + "\n")
  return paths


def feature_spec(directory: str, name: str) -> Dict[str, tf.io.FixedLenFeature]:
  """The `parse_example` spec of the shards `name` in `directory`."""
  kinds = json.loads(io.read_text(io.join(directory, f"{name}.{_SPEC_FILE}")))
  spec = {}
  for column, kind in kinds.items():
    if isinstance(kind, list):
      spec[column] = tf.io.FixedLenFeature([int(kind[1])], _DTYPES[kind[0]])
    else:
      spec[column] = tf.io.FixedLenFeature([], _DTYPES[kind])
  return spec


def read_shards(directory: str, name: str, batch_size: int, *, shuffle: bool = True,
                seed: int = 0, shuffle_buffer: int = 100_000, repeat: bool = False,
                lookup_fn: Optional[Callable] = None,
                num_parallel_calls: int = tf.data.AUTOTUNE,
                cycle_length: Optional[int] = None, deterministic: bool = True,
                drop_remainder: bool = False, block_rows: int = 0) -> tf.data.Dataset:
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
    num_parallel_calls: Shards read at once and parallelism of parsing and
      `lookup_fn` (default `tf.data.AUTOTUNE`).
    cycle_length: Shards interleaved (default: `num_parallel_calls`, or
      AUTOTUNE).
    deterministic: Keep a fixed element order for a given seed (False lets a
      slow shard be overtaken: faster, but the order varies run to run).
    drop_remainder: Drop the last partial batch.
    block_rows: When > 0, each shard is read in blocks of this many
      consecutive records, the blocks are shuffled (`shuffle_buffer` rows'
      worth) and re-cut into batches. tf.data then handles one element per
      block instead of one per row: several times the throughput. Rows keep
      their neighbours within a block, so use it when the writer already
      mixed the rows (as `two_tower.materialize.materialize` does per chunk).

  Returns:
    A `tf.data.Dataset` of dicts of [batch] (or [batch, L] for list columns)
    tensors.

  Raises:
    ValueError: no shard matches `name` in `directory`.
  """
  pattern = io.join(directory, f"{name}-*.tfrecord")
  if not tf.io.gfile.glob(pattern) or not io.exists(io.join(directory, f"{name}.{_SPEC_FILE}")):
    raise ValueError(f"No complete shards match {pattern!r} (with {name}.{_SPEC_FILE}). "
                     "Write them with `write_shards` first.")
  spec = feature_spec(directory, name)
  files = tf.data.Dataset.list_files(pattern, shuffle=shuffle, seed=seed)
  if block_rows > 0:
    read = lambda path: tf.data.TFRecordDataset(path).batch(block_rows)  # noqa: E731
    buffer = max(1, shuffle_buffer // block_rows)
  else:
    read, buffer = tf.data.TFRecordDataset, shuffle_buffer
  ds = files.interleave(read, cycle_length=cycle_length or num_parallel_calls,
                        num_parallel_calls=num_parallel_calls, deterministic=deterministic)
  if shuffle:
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  # Blocks are re-cut into batches of rows; single records are batched.
  cut = ds.rebatch if block_rows > 0 else ds.batch
  ds = cut(batch_size, drop_remainder=drop_remainder).map(
      lambda x: tf.io.parse_example(x, spec), num_parallel_calls=num_parallel_calls,
      deterministic=deterministic)
  if lookup_fn is not None:
    ds = ds.map(lookup_fn, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
  # Autotuning off as in `make_dataset` (read alone, 300k rows in blocks of 256: 0.24 s an
  # epoch against 0.31 s with it on).
  return without_autotuning(ds.prefetch(tf.data.AUTOTUNE))
