"""The ALS export: query model and serving module of the retrieval contract."""

from typing import Callable, Dict, Optional, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.export import retrieval
from tfrec_music.models.als.factors import ALSFit
from tfrec_music.models.als.solver import fold_in

ALS_QUERY_SIGNATURE = {"history": tf.TensorSpec([None, None], tf.string, name="history"),
                       "weights": tf.TensorSpec([None, None], tf.float32, name="weights")}


class ALSQueryModel(tf.Module):
  """Raw (user_id, history, weights) -> query vectors, inside the SavedModel.

  Known users get their stored vector; others are folded in from their
  history (track ids; unknown ids and '' are ignored) and weights (ratings
  or play counts). Explicit fits with biases use augmented vectors, so the
  dot product is the predicted rating: query [x_u, 1, alpha + b_u] against
  candidates [y_i, b_i, 1].

  Args:
    user_ids: [U] known user ids.
    fit: The `ALSFit`.
    item_ids: [n_items] catalogue ids.
    user_vectors: [U, k] vectors served for the known users (default: the
      fit's training vectors).
    user_bias: [U] their biases (default: the fit's).
  """

  def __init__(self, user_ids: np.ndarray, fit: ALSFit, item_ids: np.ndarray,
               user_vectors: Optional[np.ndarray] = None,
               user_bias: Optional[np.ndarray] = None):
    super().__init__(name="als_query_model")
    self.params = fit.params
    self.augmented = not fit.params.implicit
    self.reg_bias = float(fit.reg_bias)
    self.offset = float(fit.offset)
    self._item_factors = np.asarray(fit.item_factors, np.float32)
    self._item_bias = np.asarray(fit.item_bias, np.float32)
    self.user_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(user_ids).astype(str).astype(object), tf.string),
            tf.range(len(user_ids), dtype=tf.int64)), default_value=-1)
    self.item_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(item_ids).astype(str).astype(object), tf.string),
            tf.range(len(item_ids), dtype=tf.int64)), default_value=-1)
    vectors = fit.user_factors if user_vectors is None else user_vectors
    biases = fit.user_bias if user_bias is None else user_bias
    self.user_factors = tf.Variable(np.asarray(vectors, np.float32), trainable=False,
                                    name="user_factors")
    self.user_bias = tf.Variable(np.asarray(biases, np.float32), trainable=False,
                                 name="user_bias")
    self.item_factors = tf.Variable(self._item_factors, trainable=False, name="item_factors")
    self.item_bias = tf.Variable(self._item_bias, trainable=False, name="item_bias")
    self.gram = tf.Variable(fit.gram, trainable=False, name="gram")

  def candidates(self) -> np.ndarray:
    """[n_items, k (+2)] candidate vectors of the index."""
    if not self.augmented:
      return self._item_factors
    ones = np.ones((len(self._item_factors), 1), np.float32)
    return np.hstack([self._item_factors, self._item_bias[:, None], ones])

  def fold(self, history: tf.Tensor, weights: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """([B, k] vectors, [B] biases) of users from their tracks and weights alone."""
    cols = self.item_table.lookup(history)
    mask = cols >= 0
    safe = tf.maximum(cols, 0)
    maskf = tf.cast(mask, tf.float32)
    values = tf.cast(weights, tf.float32)
    bias = tf.zeros([tf.shape(history)[0]], tf.float32)
    if self.augmented:
      residual = (values - self.offset - tf.gather(self.item_bias, safe)) * maskf
      if self.reg_bias > 0:
        bias = tf.reduce_sum(residual, 1) / (tf.reduce_sum(maskf, 1) + self.reg_bias)
      values = (residual - bias[:, tf.newaxis]) * maskf
    vectors = fold_in(self.item_factors, self.gram, safe, values, mask, self.params)
    return vectors, bias

  def __call__(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
    """[B, d] query vectors (see the class docstring)."""
    rows = self.user_table.lookup(features["user_id"])
    known = rows >= 0
    safe = tf.maximum(rows, 0)
    folded, folded_bias = self.fold(features["history"], features["weights"])
    vectors = tf.where(known[:, tf.newaxis], tf.gather(self.user_factors, safe), folded)
    if not self.augmented:
      return vectors
    bias = tf.where(known, tf.gather(self.user_bias, safe), folded_bias)
    ones = tf.ones_like(bias)
    return tf.concat([vectors, ones[:, tf.newaxis], (bias + self.offset)[:, tf.newaxis]], 1)


class ALSServingModule(retrieval.RetrievalServingModule):
  """The retrieval serving module, with the known users' seen tracks stored sparsely.

  `serving_default(user_id)` serves a known user's stored vector and
  excludes every track of their stored history (kept as a CSR of catalogue
  rows, so a long history costs no padding); `fold_in(history, weights)`
  places a new user.

  Args:
    query_model: The `ALSQueryModel`.
    item_ids: [n_items] catalogue ids.
    index_kind: `"exact"` or `"scann"`.
    known_users: [U] the query model's user ids.
    seen: (row_splits [U + 1], catalogue rows [E]) of each known user's
      excluded tracks.
    fallback_ids: [k] popularity fallback ids.
    fallback_scores: [k] their scores.
    k: Results per request.
  """

  def __init__(self, query_model: ALSQueryModel, item_ids: np.ndarray, index_kind: str,
               known_users: np.ndarray, seen: Tuple[np.ndarray, np.ndarray],
               fallback_ids: np.ndarray, fallback_scores: np.ndarray, k: int):
    super().__init__(query_model, ALS_QUERY_SIGNATURE, query_model.candidates(), item_ids,
                     index_kind, known_users, {}, fallback_ids, fallback_scores, k)
    self.seen_splits = tf.Variable(np.asarray(seen[0], np.int64), trainable=False,
                                   name="seen_splits")
    self.seen_items = tf.Variable(np.asarray(seen[1], np.int64), trainable=False,
                                  name="seen_items")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      rows = self.user_table.lookup(user_id)
      known = rows >= 0
      safe = tf.maximum(rows, 0)
      starts = tf.gather(self.seen_splits, safe)
      lengths = tf.where(known, tf.gather(self.seen_splits, safe + 1) - starts, 0)
      positions = tf.ragged.range(starts, starts + lengths)
      exclude = tf.gather(self.item_ids, tf.gather(self.seen_items, positions))
      # Known users are served their stored vector: no history to fold in.
      batch = tf.shape(user_id)[0]
      features = {"user_id": user_id, "history": tf.fill([batch, 0], ""),
                  "weights": tf.zeros([batch, 0])}
      return self._recommend(features, exclude.to_tensor(default_value=""), known)

    @tf.function(input_signature=[ALS_QUERY_SIGNATURE])
    def fold(inputs):
      history = inputs["history"]
      batch = tf.shape(history)[0]
      # An empty id is never a known user, so every row is folded in.
      features = {"user_id": tf.fill([batch], ""), "history": history,
                  "weights": inputs["weights"]}
      out = self._recommend(features, history, tf.zeros([batch], tf.bool))
      vectors, _ = self.query_model.fold(history, inputs["weights"])
      out["user_vector"] = vectors
      return out

    self.serve = serve
    self.fold_in = fold

  def signatures(self) -> Dict[str, Callable]:
    """`serving_default`, `recommend` and `fold_in`."""
    out = super().signatures()
    out["fold_in"] = self.fold_in
    return out
