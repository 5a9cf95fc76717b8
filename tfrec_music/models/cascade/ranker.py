"""`HardNegativeDCN`: the cascade's re-ranker, a DCN trained on retrieval mistakes.

Positives are each user's most recent training plays; each one's negatives
are tracks drawn from the retrieval's own top candidates for the user (hard)
and uniform tracks. With history features the network also reads the
(history, candidate) pair features and pools the embeddings of the history's
tracks (`HistoryDCNRanker`).
"""

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.dcn import DCNConfig
from tfrec_music.models.dcn import DCNFamily
from tfrec_music.models.dcn import DCNModel
from tfrec_music.models.dcn import optimizer
from tfrec_music.models.rerank_features import HistoryDCNRanker
from tfrec_music.models.rerank_features import HistoryFeatures
from tfrec_music.models.rerank_features import causal_rows
from tfrec_music.prepare.prepared import PreparedData


class HardNegativeDCN(DCNFamily):
  """The DCN family with negatives drawn from retrieval candidates plus uniform ones.

  Trained through the DCN's `fit` (the shared fit loop: step checkpoints,
  resume, NaN guard, early stopping on the validation log loss) under its own
  backup name.

  Args:
    config: Implicit-label `DCNConfig`.
    prepared: Prepared data.
    candidates_of: user id -> [C] catalogue indices of the user's retrieved
      tracks (training tracks already excluded).
    hard: Hard negatives per positive.
    uniform: Uniform negatives per positive.
    recent: Positives are each user's last `recent` training rows (0: all).
    recent_share: With `recent`, a user's positives are the last
      max(`recent`, ceil(`recent_share` x the user's training rows)).
    history_features: `HistoryFeatures` of (history, candidate) pairs fed to
      the network as its `dense` input (None: none). A training positive's
      history is the `length` tracks its user played strictly before it, and
      its negatives share that history; a validation row's is `history_of`.
    pooled: Columns whose embeddings (the network's own) of the history's
      tracks the network mean-pools into x0 (`HistoryDCNRanker`); needs
      `history_features`.
    history_of: user ids [N] -> [N, length] catalogue rows of each user's
      history before validation (the retrieval's; needed with
      `history_features`).
  """

  def __init__(self, config: DCNConfig, prepared: PreparedData,
               candidates_of: Callable[[np.ndarray], np.ndarray], hard: int, uniform: int,
               recent: int = 0, history_features: Optional[HistoryFeatures] = None,
               pooled: Sequence[str] = (), user_id: bool = True,
               history_of: Optional[Callable[[np.ndarray], np.ndarray]] = None,
               recent_share: float = 0.0):
    super().__init__(config, prepared)
    if history_features is not None and history_of is None:
      raise ValueError("`history_features` needs `history_of` (the users' history rows).")
    self.candidates_of = candidates_of
    self.history_of = history_of
    self.hard, self.uniform, self.recent = hard, uniform, recent
    self.recent_share = float(recent_share)
    # The network reads the pair features as its `dense` input (beside the
    # embeddings) and pools the embeddings of the history's tracks.
    self.history_features = history_features
    if history_features is not None and pooled:
      history_features.pool(self.encoded_items, pooled)
      tf.keras.utils.set_random_seed(config.seed)
      self.ranker = HistoryDCNRanker(self.encoder.vocab_sizes(), len(self.spec.numeric), config,
                                     pooled=tuple(history_features.pooled), user_id=user_id,
                                     name="dcn_ranker")
      self.model = DCNModel(self.ranker, config.labels)
      self.model.compile(optimizer=optimizer(config))

  fit_name = "two_tower_dcn_ranker"

  def training_features(self, epoch: int = 0) -> Dict[str, np.ndarray]:
    """Positives (`positive_rows`) with fresh negatives every epoch (seeded by the epoch)."""
    train = self.prepared.train
    history = None
    if self.history_features is not None:
      if not hasattr(self, "_train_history"):
        self._train_history = causal_rows(train, self.prepared.item_index(train["item_id"]),
                                          self.history_features.length)
      history = self._train_history
    rows = self.positive_rows()
    if history is not None:
      history = history[rows]
    return self._implicit_rows(train.iloc[rows], self.config.seed * 1000 + epoch, history,
                               own_positives=True)

  def positive_rows(self) -> np.ndarray:
    """Positions in the training rows of the positives: each user's last
    max(`recent`, ceil(`recent_share` x the user's rows)), or all rows (`recent` 0)."""
    train = self.prepared.train
    if not self.recent:
      return np.arange(len(train))
    # `prepare` keeps each user's rows in time order.
    users = train.groupby("user_id", sort=False)
    from_end = users.cumcount(ascending=False).to_numpy()
    size = users["item_id"].transform("size").to_numpy()
    return np.flatnonzero(from_end < np.maximum(self.recent,
                                                np.ceil(self.recent_share * size)))

  def with_history(self, features: Dict[str, np.ndarray], history: np.ndarray,
                   candidates: np.ndarray, own: Optional[np.ndarray] = None,
                   rows: Optional[np.ndarray] = None, chunk: int = 65_536
                   ) -> Dict[str, np.ndarray]:
    """`features` plus the history inputs of (history, candidate [N]) rows.

    The same values as `HistoryFeatures.numpy` of the [N, H] history: `dense`
    [N, P] float32, and `history_<column>` [N, H] int32 lookup indices as
    `RowGather`s of their M distinct histories' rows (a history is shared by a
    positive's negatives, or by a user's candidates: N rows hold M << N of them).

    Args:
      features: Encoded pair features, updated in place.
      history: [M, H] catalogue rows of the distinct histories (-1: none).
      candidates: [N] catalogue rows of the candidates.
      own: [N] bool, True for a training play of the row's user (see `HistoryFeatures`).
      rows: [N] row of `history` of each candidate (None: row i, M = N).
      chunk: Rows of `dense` computed per call.
    """
    features_of = self.history_features
    if features_of is None:
      return features
    n = len(candidates)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    own = np.zeros(n, bool) if own is None else np.asarray(own)
    dense = [features_of(tf.constant(history[rows[s:s + chunk]]),
                         tf.constant(candidates[s:s + chunk]),
                         tf.constant(own[s:s + chunk])).numpy() for s in range(0, n, chunk)]
    features["dense"] = (np.concatenate(dense) if dense
                         else np.zeros((0, features_of.size), np.float32))
    for key, table in features_of.history_indices(tf.constant(history, tf.int64)).items():
      # int32 indices: half the memory, as `HistoryFeatures.numpy` keeps them.
      features[key] = RowGather(table.numpy().astype(np.int32), rows)
    return features

  def _pair_codes(self, user_ids, item_index: np.ndarray) -> np.ndarray:
    """[N] int64 code of each (user, catalogue item) pair (users outside training share -1)."""
    if not hasattr(self, "_user_codes"):
      self._user_codes = pd.Index(np.unique(self.prepared.train["user_id"].astype(str)))
    users = self._user_codes.get_indexer(np.asarray(user_ids).astype(str)).astype(np.int64)
    return (users + 1) * (self.prepared.n_items + 1) + np.asarray(item_index, np.int64)

  def _implicit_rows(self, frame: pd.DataFrame, seed: int,
                     history: Optional[np.ndarray] = None,
                     own_positives: bool = False) -> Dict[str, np.ndarray]:
    """Positives of `frame`, `hard` retrieved and `uniform` random negatives each (label 0).

    `history` ([N, H] catalogue rows aligned with `frame`): each positive's
    history, shared by its negatives (default: `history_of`, the users'
    history before validation). `own_positives`: `frame` holds training rows (their plays leave
    the popularity feature).
    """
    rng = np.random.default_rng(seed)
    users = frame["user_id"].to_numpy().astype(str)
    pos = self.prepared.item_index(frame["item_id"])
    parts_users, parts_items, parts_rows = [], [], []
    row = np.arange(len(users))
    if self.hard:
      pools = self.candidates_of(users)  # [N, C]
      pick = rng.integers(0, pools.shape[1], size=(len(users), self.hard))
      parts_users.append(np.repeat(users, self.hard))
      parts_items.append(np.take_along_axis(pools, pick, axis=1).reshape(-1))
      parts_rows.append(np.repeat(row, self.hard))
    if self.uniform:
      parts_users.append(np.repeat(users, self.uniform))
      parts_items.append(rng.integers(0, self.prepared.n_items, size=len(users) * self.uniform))
      parts_rows.append(np.repeat(row, self.uniform))
    neg_users, neg = np.concatenate(parts_users), np.concatenate(parts_items)
    neg_rows = np.concatenate(parts_rows)
    # A negative that is one of the user's own tracks is no negative: drop it.
    train = self.prepared.train
    known = np.concatenate([self._pair_codes(train["user_id"], self.prepared.item_index(
        train["item_id"])), self._pair_codes(users, pos)])
    keep = ~np.isin(self._pair_codes(neg_users, neg), known)
    neg_users, neg, neg_rows = neg_users[keep], neg[keep], neg_rows[keep]
    items = np.concatenate([pos, neg])
    features = self.pair_features(np.concatenate([users, neg_users]), items)
    if self.history_features is not None:
      if history is None:
        history = self.history_of(users)
      # A training positive is one of its user's own plays: its popularity
      # counts the other listeners only, like any held-out track's.
      own = np.concatenate([np.full(len(pos), own_positives), np.zeros(len(neg), bool)])
      self.with_history(features, history, items, own, rows=np.concatenate([row, neg_rows]))
    features["label"] = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    return features


class RowGather:
  """`table[index]` [N, ...], gathered only where it is read (`x[rows]`, `x[a:b]`).

  A re-ranker's history inputs repeat one history per positive for each of
  its negatives, or one per user for each candidate; holding them as [N, H]
  arrays copied ~1 GB per training epoch on the default preset. Training
  batches (`epoch_batches`) and `predict_encoded` slice their inputs, so the
  rows are gathered per batch; `np.asarray` gives the whole array.

  Args:
    table: [M, ...] distinct rows.
    index: [N] row of `table` of each row.
  """

  def __init__(self, table: np.ndarray, index: np.ndarray):
    self.table, self.index = table, np.asarray(index)

  @property
  def shape(self):
    """(N,) + the table's row shape."""
    return (len(self.index),) + self.table.shape[1:]

  @property
  def dtype(self):
    """The table's dtype."""
    return self.table.dtype

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, key) -> np.ndarray:
    return self.table[self.index[key]]

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    del copy  # always a new array
    out = self.table[self.index]
    return out if dtype is None else out.astype(dtype)
