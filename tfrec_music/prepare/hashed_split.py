"""The 80/10/10 ratio split of rows streamed from shards: a hash of each (user, item) pair.

Streaming cannot shuffle the whole data set to split it, so a row's split is
a function of its ids alone: the same on every pass, in any shard layout.
"""

import numpy as np
import pandas as pd

# Split -> [low, high) bucket range.
SPLIT_BUCKETS = {"train": (0, 80), "valid": (80, 90), "test": (90, 100)}


def split_buckets(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
  """[N] bucket 0-99 of each (user, item) pair, stable across runs and shard layouts.

  Buckets 0-79 are training rows, 80-89 validation, 90-99 test.
  """
  keys = (pd.Series(np.asarray(user_ids).astype(str)) + "\t"
          + pd.Series(np.asarray(item_ids).astype(str)))
  return (pd.util.hash_array(keys.to_numpy(object)) % np.uint64(100)).astype(np.int64)


def split_mask(frame: pd.DataFrame, split: str) -> np.ndarray:
  """[N] bool: which rows of `frame` (`user_id`, `item_id`) belong to `split`."""
  bucket = split_buckets(frame["user_id"].to_numpy(), frame["item_id"].to_numpy())
  low, high = SPLIT_BUCKETS[split]
  return (bucket >= low) & (bucket < high)
