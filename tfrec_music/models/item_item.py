"""Item-to-item scoring shared by the neighbourhood models (`itemknn`, `ease`).

A user's scores are their history vector times an item x item matrix W:
score(u, j) = sum_i x_ui W_ij, with x_ui = 1 (binary) or a transform of the
play count. The history is what the evaluation protocol allows at each split:
training rows for `valid`, training and validation rows for `test` (and for
the export), the held-out history for `cold_user`. Users without a history
get the popularity ranking, in evaluation and in the export.
"""

from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.evaluation.protocol import evaluation_rows
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.export import retrieval
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.prepare.prepared import PreparedData

WEIGHTINGS = ("binary", "log1p", "raw")
WEIGHT_COLUMN = "weight"
# The protocol's history at each split (`tfrec_music.evaluation.protocol`).
HISTORY_SPLITS = {"valid": ("train",), "test": ("train", "valid"),
                  "cold_user": ("cold_user_history",)}
HISTORY_SIGNATURE = {"history": tf.TensorSpec([None, None], tf.string, name="history"),
                     "weights": tf.TensorSpec([None, None], tf.float32, name="weights")}


def history_frame(prepared: PreparedData, split: str) -> pd.DataFrame:
  """The rows a user's history holds when `split` is scored."""
  if split not in HISTORY_SPLITS:
    raise ValueError(f"`split` should be one of {tuple(HISTORY_SPLITS)}. "
                     f"Received: `split` = {split!r}.")
  return pd.concat([getattr(prepared, name) for name in HISTORY_SPLITS[split]],
                   ignore_index=True)


def raw_weights(frame: pd.DataFrame) -> np.ndarray:
  """[N] play counts of the rows (1 without a `weight` column; negatives and NaN -> 0 / 1)."""
  if WEIGHT_COLUMN not in frame.columns:
    return np.ones(len(frame), np.float32)
  weights = pd.to_numeric(frame[WEIGHT_COLUMN], errors="coerce").fillna(1.0)
  return np.maximum(weights.to_numpy(np.float32), 0.0)


def transform(weights: np.ndarray, weighting: str) -> np.ndarray:
  """x_ui of each row: 1 (`binary`), log(1 + w) (`log1p`) or w (`raw`)."""
  if weighting == "binary":
    return np.ones(len(weights), np.float32)
  return np.log1p(weights).astype(np.float32) if weighting == "log1p" else weights


def user_item_matrix(prepared: PreparedData, frame: pd.DataFrame, weighting: str
                     ) -> Tuple[pd.Index, sp.csr_matrix]:
  """(user ids, [U, n_items] float32 CSR of x_ui) of the rows of `frame`.

  Rows are the users of `frame` in order of appearance; items outside the
  catalogue are left out; a pair listed twice is summed (1 when binary).
  """
  items = prepared.item_index(frame["item_id"]) if len(frame) else np.zeros(0, np.int64)
  keep = items >= 0
  users = frame["user_id"].astype(str).to_numpy()[keep]
  index = pd.Index(pd.unique(users))
  values = transform(raw_weights(frame)[keep], weighting)
  matrix = sp.csr_matrix((values, (index.get_indexer(users), items[keep])),
                         shape=(len(index), prepared.n_items), dtype=np.float32)
  matrix.sum_duplicates()
  if weighting == "binary":
    matrix.data[:] = 1.0
  return index, matrix


def rows_scorer(index: pd.Index, score_rows: Callable[[np.ndarray], np.ndarray],
                popularity: np.ndarray, has_history: np.ndarray):
  """A batched `user ids [B] -> [B, n_items]` function over rows of a matrix.

  Args:
    index: User id of each row.
    score_rows: Row numbers [R] -> [R, n_items] scores.
    popularity: [n_items] scores of users without a history.
    has_history: [len(index)] bool, False for rows with no item.
  """
  def score(user_ids: Sequence[str]) -> np.ndarray:
    rows = index.get_indexer(pd.Series(np.asarray(user_ids)).astype(str))
    found = rows >= 0
    found[found] = has_history[rows[found]]
    if found.all():
      return score_rows(rows)
    out = np.array(np.broadcast_to(popularity, (len(rows), len(popularity))))
    if found.any():
      out[found] = score_rows(rows[found])
    return out
  return score


class ItemItemScorer:
  """The protocol's scorer (split -> score_fn) for `history x W`.

  Args:
    prepared: Prepared data.
    weighting: One of `WEIGHTINGS`.
    product: CSR histories [B, n_items] -> dense [B, n_items] scores.
  """

  def __init__(self, prepared: PreparedData, weighting: str,
               product: Callable[[sp.csr_matrix], np.ndarray]):
    self.prepared = prepared
    self.weighting = weighting
    self.product = product
    self.popularity = PopularityModel.fit(prepared).item_scores
    self._histories: Dict[str, Tuple[pd.Index, sp.csr_matrix]] = {}

  def with_product(self, product: Callable[[sp.csr_matrix], np.ndarray]) -> "ItemItemScorer":
    """The same histories (cache shared) scored with another product."""
    other = ItemItemScorer(self.prepared, self.weighting, product)
    other._histories = self._histories  # pylint: disable=protected-access
    return other

  def histories(self, split: str) -> Tuple[pd.Index, sp.csr_matrix]:
    """(user ids, CSR history vectors) of `split` (cached)."""
    if split not in self._histories:
      self._histories[split] = user_item_matrix(
          self.prepared, history_frame(self.prepared, split), self.weighting)
    return self._histories[split]

  def __call__(self, split: str):
    index, matrix = self.histories(split)
    return rows_scorer(index, lambda rows: np.asarray(self.product(matrix[rows]), np.float32),
                       self.popularity, np.diff(matrix.indptr) > 0)


SEARCHES = ("full", "local")


def choose_value(values: Sequence, hr: Callable[[Any], float], search: str = "full"):
  """The value of `values` with the best `hr(value)`.

  Args:
    values: Candidate values.
    hr: value -> validation HR@10 (called once per value tried).
    search: `full` tries every value (the first best wins ties); `local`
      sorts them, starts at the middle one and walks towards the better
      neighbour while HR@10 strictly improves (one peak along the grid: 3 or
      4 values tried instead of all).
  """
  if search == "full":
    results = [hr(v) for v in values]
    return values[int(np.argmax(results))]
  grid = sorted(values)
  seen = {}

  def at(i):
    if i not in seen:
      seen[i] = hr(grid[i])
    return seen[i]

  best = len(grid) // 2
  neighbours = [i for i in (best - 1, best + 1) if 0 <= i < len(grid)]
  better = [i for i in neighbours if at(i) > at(best)]
  if better:
    step = max(better, key=at) - best
    while 0 <= best + step < len(grid) and at(best + step) > at(best):
      best += step
  return grid[best]


def select_on_validation(prepared: PreparedData, name: str, values: Sequence,
                         scorer_for: Callable, search: str = "full"
                         ) -> Tuple[object, Dict[str, float]]:
  """Picks the value of `name` with the best validation HR@10 (`choose_value`).

  Args:
    prepared: Prepared data.
    name: Hyperparameter name (for the keys).
    values: Candidate values.
    scorer_for: value -> the protocol's scorer (split -> score_fn).
    search: `full` or `local` (see `choose_value`).

  Returns:
    `(best value, {"select/<name>=<v>/valid/hr@10": ... for each value tried,
    "select/chosen_<name>": best})`.
  """
  users, targets, exclude, _ = evaluation_rows(prepared, "valid")
  results = {}

  def hr(value):
    metrics = evaluate_retrieval(scorer_for(value)("valid"), users, targets,
                                 n_items=prepared.n_items, exclude=exclude, ks=(10,),
                                 lists=False)
    results[value] = metrics.get("all/hr@10", 0.0)
    return results[value]

  best = choose_value(list(values), hr, search)
  out = {f"select/{name}={value:g}/valid/hr@10": results[value] for value in values
         if value in results}
  out[f"select/chosen_{name}"] = best
  return best, out


class HistoryQueryModel(tf.Module):
  """Raw (history, weights) -> [B, n_items] scores, history vector x item matrix.

  Unknown track ids and "" are ignored, a track listed twice counts once
  (binary) or with its weights summed; a row with no catalogue track gets
  the popularity scores.

  Args:
    item_ids: [n_items] catalogue ids.
    product: Callable `(rows [E], cols [E], values [E], batch) -> [B, n_items]`
      of the history entries (a `tf.Module` holding the item x item matrix).
    weighting: One of `WEIGHTINGS`.
    popularity: [n_items] popularity scores.
  """

  def __init__(self, item_ids: np.ndarray, product: Callable, weighting: str,
               popularity: np.ndarray):
    super().__init__(name="history_query_model")
    ids = np.asarray(item_ids).astype(str).astype(object)
    self.n_items = len(ids)
    self.item_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                            tf.range(len(ids), dtype=tf.int64)), -1)
    self.product = product
    self.weighting = weighting
    self.popularity = tf.Variable(np.asarray(popularity, np.float32), trainable=False,
                                  name="popularity")

  def entries(self, history: tf.Tensor, weights: tf.Tensor):
    """(rows [E], cols [E], values [E]): one entry per distinct (row, catalogue track)."""
    cols = self.item_table.lookup(history)
    rows = tf.broadcast_to(tf.range(tf.shape(cols)[0], dtype=tf.int64)[:, tf.newaxis],
                           tf.shape(cols))
    valid = cols >= 0
    keys = tf.boolean_mask(rows * self.n_items + cols, valid)
    values = tf.boolean_mask(tf.maximum(tf.cast(weights, tf.float32), 0.0), valid)
    if self.weighting == "log1p":
      values = tf.math.log1p(values)
    unique, position = tf.unique(keys)
    values = tf.math.unsorted_segment_sum(values, position, tf.size(unique))
    if self.weighting == "binary":
      values = tf.ones_like(values)
    return unique // self.n_items, unique % self.n_items, values

  def __call__(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
    """[B, n_items] scores of each row's history (see the class docstring)."""
    history = features["history"]
    batch = tf.shape(history)[0]
    rows, cols, values = self.entries(history, features["weights"])
    scores = self.product(rows, cols, values, batch)
    has_history = tf.math.unsorted_segment_max(tf.ones_like(rows, tf.int32), rows, batch) > 0
    return tf.where(has_history[:, tf.newaxis], scores, self.popularity[tf.newaxis, :])


class HistoryServingModule(retrieval.RetrievalServingModule):
  """The retrieval contract for history x item-matrix models.

  `serving_default(user_id)` scores a known user from the history stored at
  export (training and validation rows: the history the test split was
  scored with) and excludes it; unknown users get the popularity fallback.
  `recommend(user_id, history, weights, exclude)` scores the history given.

  Args:
    product: The family's item x item product (see `HistoryQueryModel`).
    prepared: Prepared data.
    weighting: One of `WEIGHTINGS`.
    k: Results per request (clamped to the catalogue).
  """

  def __init__(self, product: Callable, prepared: PreparedData, weighting: str, k: int):
    popularity = PopularityModel.fit(prepared)
    item_ids = np.asarray(prepared.item_ids).astype(str)
    query_model = HistoryQueryModel(item_ids, product, weighting, popularity.item_scores)
    fallback_ids, fallback_scores = popularity.top_k(min(k, len(item_ids)))
    known, stored = user_item_matrix(prepared, history_frame(prepared, "test"), "raw")
    super().__init__(query_model, HISTORY_SIGNATURE, None, item_ids, "exact",
                     np.asarray(known), {}, fallback_ids, fallback_scores, k)
    # Histories as CSR (a padded [users, longest] matrix would be mostly padding).
    self.history_splits = tf.Variable(stored.indptr.astype(np.int64), trainable=False)
    self.history_items = tf.Variable(stored.indices.astype(np.int64), trainable=False)
    self.history_weights = tf.Variable(stored.data.astype(np.float32), trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      rows = self.user_table.lookup(user_id)
      known_rows = rows >= 0
      safe = tf.maximum(rows, 0)
      starts = tf.gather(self.history_splits, safe)
      lengths = tf.where(known_rows, tf.gather(self.history_splits, safe + 1) - starts, 0)
      positions = tf.ragged.range(starts, starts + lengths)
      items = tf.gather(self.history_items, positions).to_tensor(default_value=-1)
      weights = tf.gather(self.history_weights, positions).to_tensor(default_value=0.0)
      history = tf.where(items >= 0, tf.gather(self.item_ids, tf.maximum(items, 0)), "")
      features = {"user_id": user_id, "history": history, "weights": weights}
      return self._recommend(features, history, known_rows)

    self.serve = serve

  def _scores(self, queries):
    """The query model already returns [B, n_items] scores."""
    return queries


class ItemItemFamily(ModelFamily):
  """Glue shared by the history x item-matrix families (`itemknn`, `ease`).

  Flags, presets and search space come from the family's `config_module`
  (`ModelFamily`'s defaults); the metrics add the validation choice
  (`select/...`); the export is a `HistoryServingModule`. A family implements
  `fit` (which sets `self.selection`), `product` and `serving_module`.
  """

  def __init__(self, config: Any, prepared: PreparedData):
    super().__init__(config, prepared)
    self.selection: Dict[str, Any] = {}
    self.histories = ItemItemScorer(prepared, config.weighting, None)

  def product(self) -> Callable[[sp.csr_matrix], np.ndarray]:
    """CSR histories [B, n_items] -> [B, n_items] scores of the fitted model."""
    raise NotImplementedError

  def serving_module(self) -> HistoryServingModule:
    """The fitted model's serving module."""
    raise NotImplementedError

  def score_fn(self):
    """split -> scores of the split's histories (see `ItemItemScorer`)."""
    return self.histories.with_product(self.product())

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """The retrieval protocol; the model's row adds the validation choice."""
    metrics = super().evaluate(context)
    metrics["model"].update(self.selection)
    return metrics

  def save(self, directory: str) -> Dict[str, str]:
    """The exact-index SavedModel (the model and every user's history up to the test point)."""
    retrieval.save_retrieval_module(self.serving_module(), directory)
    return {"serving_default": "user_id [B] -> item_ids [B, k], scores [B, k], fallback [B] "
                               "(the user's training and validation tracks scored and "
                               "excluded; popularity for unknown users)",
            "recommend": "user_id [B], history [B, H] (track ids, padded with ''), weights "
                         "[B, H] (play counts), exclude [B, E] -> item_ids, scores, fallback "
                         f"(the history given is scored; {self.config.weighting} weights)"}
