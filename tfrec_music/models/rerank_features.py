"""History-aware pair features of the cascade's re-ranker (`--model two_tower_dcn`).

The recommender idea: a re-ranker that knows a user only through an id
embedding learnt from a few positives misses what the user played last; the
classic music re-ranking features say it directly: how much of the user's
recent history shares the candidate's artist, album, genre, parent genre and
mood, and how popular the candidate is among other listeners. `HistoryFeatures`
computes them with one TensorFlow implementation for training, evaluation and
the exported SavedModel; `causal_rows` gives each training row the history
strictly before it; `HistoryDCNRanker` also mean-pools the network's own
embeddings of the history's tracks into the DCN's input.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models import history as history_lib
from tfrec_music.models.dcn import DCNConfig
from tfrec_music.models.dcn import DCNRanker


# Catalogue columns whose share in the user's history is a pair feature, then
# the candidate's popularity among other listeners.
HISTORY_COLUMNS = ("artist", "album", "genre", "parent_genre", "mood")
HISTORY_FEATURES = HISTORY_COLUMNS + ("popularity",)


class HistoryFeatures(tf.Module):
  """Features of (user history, candidate track) pairs, the same in training and serving.

  For a candidate track and the user's recent history (catalogue rows, -1
  for padding or tracks outside the catalogue), per row:

  - for each catalogue column of `columns` (artist, album, genre, parent
    genre, mood): the share of the history's tracks with the candidate's
    value (0 when the candidate has none);
  - `history_fill`: history tracks / `length` (how much the shares rest on);
  - `popularity` (if asked): log(1 + the candidate's training plays by other
    listeners) / log(1 + the most plays of any track). A training positive's
    own play is not counted (`own`), so positives and held-out targets are
    measured alike.

  One TensorFlow implementation (`__call__`) serves the Python training and
  evaluation and the exported SavedModel.

  Args:
    items: The catalogue (catalogue-index order).
    train_counts: [n_items] training plays per track.
    names: Requested features (`HISTORY_FEATURES` subset).
    length: History length the shares are measured over (the retrieval's).
  """

  def __init__(self, items: pd.DataFrame, train_counts: np.ndarray, names: Sequence[str],
               length: int):
    super().__init__()
    self.columns = tuple(c for c in HISTORY_COLUMNS if c in names and c in items.columns)
    self.popularity = "popularity" in names
    self.length = int(length)
    self.n_items = len(items)
    codes = []
    for column in self.columns:
      values = items[column]
      missing = values.isna() | (values.astype(str) == "")
      code = pd.factorize(values.astype(str))[0].astype(np.int64)
      # The last row stands for "no track" (padding, unknown ids); -1 never matches.
      codes.append(np.append(np.where(missing, -1, code), -1))
    self.codes = tf.constant(np.stack(codes) if codes else np.zeros((0, self.n_items + 1),
                                                                     np.int64))
    counts = np.append(np.asarray(train_counts, np.float64), 0.0)
    self.counts = tf.constant(counts.astype(np.float32))
    self.pop_scale = tf.constant(float(1.0 / np.log1p(max(counts.max(), 1.0))), tf.float32)
    self.names = (tuple(f"{c}_share" for c in self.columns) + ("history_fill",)
                  + (("popularity",) if self.popularity else ()))
    self.pooled: Dict[str, tf.Tensor] = {}

  def pool(self, encoded_items: Dict[str, np.ndarray], columns: Sequence[str]) -> None:
    """Also hand the network the history's own lookup indices of `columns`.

    Args:
      encoded_items: Column -> [n_items] the re-ranker's lookup index of each
        catalogue track's value (its `encoded_items`).
      columns: Columns whose history embeddings the network pools
        (`history_<column>` [N, H] inputs; padding is index 0, "missing").
    """
    self.pooled = {c: tf.constant(np.append(np.asarray(encoded_items[c], np.int64), 0))
                   for c in columns if c in encoded_items}

  def history_indices(self, history: tf.Tensor) -> Dict[str, tf.Tensor]:
    """`history_<column>` [N, H] lookup indices of the history's tracks (0: padding)."""
    history = tf.cast(history, tf.int64)
    rows = tf.where(history >= 0, history, tf.constant(self.n_items, tf.int64))
    return {f"history_{c}": tf.gather(codes, rows) for c, codes in self.pooled.items()}

  @property
  def size(self) -> int:
    """Features per row P."""
    return len(self.names)

  def __call__(self, history: tf.Tensor, candidates: tf.Tensor,
               own: Optional[tf.Tensor] = None) -> tf.Tensor:
    """[N, P] float32 features.

    Args:
      history: [N, H] int64 catalogue rows of the history (-1: none).
      candidates: [N] int64 catalogue rows of the candidates (-1: none).
      own: [N] bool, True where the candidate is a training play of this user
        (training positives), whose own play leaves the popularity.
    """
    history = tf.cast(history, tf.int64)
    candidates = tf.cast(candidates, tf.int64)
    pad = tf.constant(self.n_items, tf.int64)
    present = history >= 0
    history = tf.where(present, history, pad)
    candidates = tf.where(candidates >= 0, candidates, pad)
    n = tf.reduce_sum(tf.cast(present, tf.float32), axis=1)
    out = []
    for k in range(len(self.columns)):
      codes = self.codes[k]
      mine = tf.gather(codes, candidates)[:, tf.newaxis]
      match = tf.equal(tf.gather(codes, history), mine) & (mine >= 0)
      out.append(tf.reduce_sum(tf.cast(match, tf.float32), axis=1) / tf.maximum(n, 1.0))
    out.append(n / float(self.length))
    if self.popularity:
      count = tf.gather(self.counts, candidates)
      if own is not None:
        count = tf.maximum(count - tf.cast(own, tf.float32), 0.0)
      out.append(tf.math.log1p(count) * self.pop_scale)
    return tf.stack(out, axis=1)

  def numpy(self, history: np.ndarray, candidates: np.ndarray,
            own: Optional[np.ndarray] = None, chunk: int = 65_536) -> Dict[str, np.ndarray]:
    """The network's history inputs of numpy rows, in chunks: `dense` [N, P] float32 and
    the `history_<column>` [N, H] indices of `history_indices`."""
    n = len(candidates)
    if own is None:
      own = np.zeros(n, bool)
    parts: Dict[str, list] = {}
    for s in range(0, n, chunk):
      rows = tf.constant(history[s:s + chunk])
      out = {"dense": self(rows, tf.constant(candidates[s:s + chunk]),
                           tf.constant(own[s:s + chunk]))}
      out.update(self.history_indices(rows))
      for key, value in out.items():
        value = value.numpy()
        # int32 indices: half the memory of the fresh rows drawn every epoch.
        parts.setdefault(key, []).append(value.astype(np.int32) if key != "dense" else value)
    if not parts:
      return {"dense": np.zeros((0, self.size), np.float32),
              **{f"history_{c}": np.zeros((0, history.shape[1]), np.int32)
                 for c in self.pooled}}
    return {k: np.concatenate(v) for k, v in parts.items()}


def causal_rows(frame: pd.DataFrame, item_index: np.ndarray, length: int) -> np.ndarray:
  """[N, length] catalogue rows of the tracks each row's user played before it (-1 pad).

  Args:
    frame: Interactions sorted by user, then time (as `prepare` returns them).
    item_index: [N] catalogue rows of `frame`'s tracks.
    length: Tracks kept (most recent last; padded with -1 at the front).
  """
  return history_lib.causal_window(frame["user_id"].to_numpy(), np.asarray(item_index),
                                   length, pad=-1)


class HistoryDCNRanker(DCNRanker):
  """The DCN with the user's history inside: mean-pooled history embeddings join x0.

  Beside the user's and the candidate's embeddings, x0 holds the mean of the
  network's own embeddings of the history's tracks (their ids, artists,
  genres: `history_<column>` [B, H] lookup indices, 0 for padding); the
  cross layers then multiply them with the candidate's (a learned
  candidate x history interaction), as the two-tower query tower pools its
  history, but crossed with every other feature.

  Args:
    pooled: Columns whose history embeddings are pooled.
    (others as `DCNRanker`)
  """

  def __init__(self, vocab_sizes: Dict[str, int], n_numeric: int, config: DCNConfig,
               output_bias: float = 0.0, pooled: Sequence[str] = (), user_id: bool = True,
               **kwargs):
    super().__init__(vocab_sizes, n_numeric, config, output_bias, **kwargs)
    self.pooled = tuple(pooled)
    self.use_user_id = user_id

  def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Encoded features plus `history_<column>` [B, H] -> [B] logits."""
    features = dict(features)
    if not self.use_user_id:
      # Every user reads one (missing-value) row: the user is their history.
      features["user_id"] = tf.zeros_like(features["user_id"])
    parts = [features.pop("dense")] if "dense" in features else []
    for column in self.pooled:
      index = features.pop(f"history_{column}")
      mask = tf.cast(index > 1, tf.float32)[:, :, tf.newaxis]  # "" and OOV pool as nothing
      total = tf.reduce_sum(self.embeddings[column](index) * mask, axis=1)
      parts.append(total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
    if parts:
      features["dense"] = tf.concat([tf.cast(p, tf.float32) for p in parts], axis=1)
    return super().call(features, training=training)
