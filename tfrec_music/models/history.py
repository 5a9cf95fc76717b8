"""Recent-history features: the last tracks a user played, as id-lookup indices.

Training rows get the tracks played *before* them (causal), so the model never
sees its own target in the history; evaluation and serving use the last tracks
before the split (train for `valid`, train + valid for `test`, the held-out
history for cold users).
"""

from typing import Dict, List

import numpy as np
import pandas as pd

from tfrec_music.pipeline.lookups import lookup_indices


def causal_history(frame: pd.DataFrame, vocabulary: List[str], length: int) -> np.ndarray:
  """[N, length] indices of the tracks each row's user played before that row.

  Args:
    frame: Interactions sorted by user, then time (as `prepare` returns them).
    vocabulary: Track-id vocabulary.
    length: Tracks kept (most recent last; padded with 0 at the front).

  Returns:
    int64 array aligned with `frame` rows.
  """
  items = lookup_indices(frame["item_id"], vocabulary)
  return causal_window(frame["user_id"].to_numpy(), items, length, pad=0)


def causal_window(users: np.ndarray, values: np.ndarray, length: int, pad: int) -> np.ndarray:
  """[N, length] the `values` of each row's user's previous rows (most recent last).

  Args:
    users: [N] user of each row; rows sorted by user, then time.
    values: [N] int value of each row (a lookup index, a catalogue row).
    length: Previous rows kept.
    pad: Value of the slots before a user's first row.

  Returns:
    int64 array aligned with the rows; a row's own value is never in it.
  """
  n = len(users)
  block_start = np.ones(n, dtype=bool)
  block_start[1:] = users[1:] != users[:-1]
  first = np.flatnonzero(block_start)
  position = np.arange(n) - first[np.cumsum(block_start) - 1]
  history = np.full((n, length), pad, dtype=np.int64)
  for offset in range(1, length + 1):
    rows = np.flatnonzero(position >= offset)
    history[rows, length - offset] = values[rows - offset]
  return history


def others_window(users: np.ndarray, values: np.ndarray, length: int, pad: int) -> np.ndarray:
  """[N, length] up to `length` of the *other* rows' values of each row's user.

  For data without timestamps, where a user's rows have no order: a training
  row's history is the rest of the user's items (as at serving time, where
  the history is the user's whole profile), not the random prefix before it.
  Row `p` of a user's block of `n` rows takes the rows `p + 1, ..., p + length`
  (wrapping around the block; a row's own value is never in it), so every row
  sees a different window when the user has more than `length` other rows.

  Args:
    users: [N] user of each row; rows grouped by user (in a seeded random order).
    values: [N] int value of each row.
    length: Other rows kept.
    pad: Value of the unused slots (users with fewer than `length` other rows).

  Returns:
    int64 array aligned with the rows.
  """
  n = len(users)
  block_start = np.ones(n, dtype=bool)
  block_start[1:] = users[1:] != users[:-1]
  block = np.cumsum(block_start) - 1
  first = np.flatnonzero(block_start)
  size = np.diff(np.append(first, n))[block]
  position = np.arange(n) - first[block]
  history = np.full((n, length), pad, dtype=np.int64)
  for offset in range(1, length + 1):
    rows = np.flatnonzero(offset < size)
    source = first[block[rows]] + (position[rows] + offset) % size[rows]
    history[rows, length - offset] = values[source]
  return history


def training_history(frame: pd.DataFrame, vocabulary: List[str], length: int) -> np.ndarray:
  """[N, length] history of each training row: causal with timestamps, the other rows without.

  With timestamps a row sees the tracks played before it (`causal_history`);
  without, order means nothing, so it sees the user's other tracks
  (`others_window`), which is what serving gives a user: their profile.
  """
  if "timestamp" in frame.columns:
    return causal_history(frame, vocabulary, length)
  items = lookup_indices(frame["item_id"], vocabulary)
  return others_window(frame["user_id"].to_numpy(), items, length, pad=0)


def last_items(frame: pd.DataFrame, length: int) -> Dict[str, List[str]]:
  """User id -> their last `length` track ids in `frame` (time order kept)."""
  if len(frame) == 0:
    return {}
  ordered = frame
  if "timestamp" in frame.columns:
    ordered = frame.sort_values(["user_id", "timestamp"], kind="stable")
  tail = ordered.groupby("user_id", sort=False).tail(length)
  return {u: g.tolist() for u, g in tail.groupby("user_id", sort=False)["item_id"]}


def history_matrix(user_ids, histories: Dict[str, List[str]], length: int) -> np.ndarray:
  """[B, length] string matrix of each user's last tracks, padded with "" in front."""
  out = np.full((len(user_ids), length), "", dtype=object)
  for row, user in enumerate(user_ids):
    items = histories.get(user, [])[-length:]
    if items:
      out[row, length - len(items):] = items
  return out


def seen_matrix(user_ids, frame: pd.DataFrame) -> np.ndarray:
  """[U, E] every item id of each user in `frame` (padded with ""; E = the longest).

  Exports store it for known users so `serving_default` excludes what the
  evaluation excluded (the whole history up to the test point).
  """
  longest = max(int(frame.groupby("user_id").size().max()) if len(frame) else 1, 1)
  return history_matrix(user_ids, last_items(frame, longest), longest)
