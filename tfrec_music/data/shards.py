"""Canonical Parquet shards read a batch at a time (data larger than memory)."""

from typing import Iterator, List, Sequence

import pandas as pd

# Interaction shards are `interactions*.parquet` (e.g. `interactions-00000-of-00004.parquet`).
SHARD_PREFIX = "interactions"


def interaction_shards(names: Sequence[str]) -> List[str]:
  """The interaction shard names among a folder's entries, in their given order."""
  return [n for n in names if n.startswith(SHARD_PREFIX) and n.endswith(".parquet")]


def parquet_batches(paths: Sequence[str], columns: Sequence[str],
                    rows: int) -> Iterator[pd.DataFrame]:
  """Frames of at most `rows` rows of `columns`, file after file.

  Local files are memory-mapped by Arrow; `gs://` and other `tf.io.gfile`
  paths are read through a GFile handle (Parquet needs random access, which
  it has).
  """
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  for path in paths:
    if "://" in path:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      source = tf.io.gfile.GFile(path, "rb")
    else:
      source = path
    for batch in pq.ParquetFile(source).iter_batches(batch_size=rows, columns=list(columns)):
      yield batch.to_pandas()
