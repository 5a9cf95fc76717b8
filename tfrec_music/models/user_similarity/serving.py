"""The export's modules: similar users for a user id, or for a new user from their tracks."""

from typing import Callable, Dict, Optional, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.export.saved_model import save_module
from tfrec_music.models.als import fold_in
from tfrec_music.models.user_similarity.index import ROUNDING
from tfrec_music.models.user_similarity.profiles import TasteParts


def distinct_counts(rows: tf.Tensor, usable: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Each row's distinct usable catalogue rows and how often each occurs.

  Args:
    rows: [B, T] catalogue rows.
    usable: [B, T] bool, entries to count.

  Returns:
    (cols [B, T] (sorted; 0 where not `first`), counts [B, T] float32 (the
    count of `cols` in its row), first [B, T] bool: one True per distinct
    usable row).
  """
  big = tf.int32.max
  cols = tf.sort(tf.where(usable, tf.cast(rows, tf.int32), big), axis=1)
  shape = tf.shape(cols)
  valid = cols != big
  new = tf.concat([tf.ones([shape[0], 1], tf.bool), cols[:, 1:] != cols[:, :-1]],
                  axis=1)[:, :shape[1]]
  segment = tf.cumsum(tf.cast(tf.reshape(new, [-1]), tf.int32)) - 1
  size = shape[0] * shape[1]
  per_segment = tf.math.unsorted_segment_sum(tf.ones([size]), segment, size)
  counts = tf.reshape(tf.gather(per_segment, segment), shape)
  first = new & valid
  return tf.where(first, cols, 0), counts, first


class TasteQueryModel(tf.Module):
  """A new user's track ids [B, T] -> their taste vectors [B, D] and `known` [B].

  The graph twin of `TasteParts.queries`: the centroid of the distinct tracks' vectors,
  the tf-idf projection (`lsa`) and the ALS fold-in (`als`), blended with the
  same weights.

  Args:
    parts: The fitted `TasteParts`.
  """

  def __init__(self, parts: TasteParts):
    super().__init__(name="taste_query_model")
    self.names = tuple(parts.names)
    self.weights = [float(w) for w in parts.weights]
    items = np.asarray(parts.item_ids).astype(str).astype(object)
    self.track_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(items, tf.string),
                                            tf.range(len(items), dtype=tf.int64)), default_value=-1)
    self.usable = tf.Variable(np.asarray(parts.usable, bool), trainable=False, name="usable")
    if parts.tracks is not None:
      self.track_vectors = tf.Variable(np.asarray(parts.tracks.vectors, np.float32),
                                       trainable=False, name="track_vectors")
      self.has_vector = tf.Variable(np.asarray(parts.tracks.has_vector, bool), trainable=False,
                                    name="has_vector")
    if parts.lsa_tracks is not None:
      self.lsa_tracks = tf.Variable(np.asarray(parts.lsa_tracks, np.float32), trainable=False,
                                    name="lsa_tracks")
    if parts.als is not None:
      self.als_params = parts.als.params
      self.als_items = tf.Variable(np.asarray(parts.als.item_factors, np.float32),
                                   trainable=False, name="als_items")
      self.als_gram = tf.Variable(parts.als.gram, trainable=False, name="als_gram")

  def __call__(self, track_ids: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """([B, D] taste vectors, [B] known: at least one usable track)."""
    rows = self.track_table.lookup(track_ids)
    safe = tf.maximum(rows, 0)
    usable = (rows >= 0) & tf.gather(self.usable, safe)
    blocks = []
    cols, counts, first = distinct_counts(safe, usable)
    for name in self.names:
      if name == "centroid":
        weights = tf.cast(first & tf.gather(self.has_vector, cols), tf.float32)[..., tf.newaxis]
        total = tf.reduce_sum(tf.gather(self.track_vectors, cols) * weights, axis=1)
        blocks.append(total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0))
      elif name == "lsa":
        scale = tf.math.log1p(counts) * tf.cast(first, tf.float32)
        blocks.append(tf.einsum("bt,btk->bk", scale, tf.gather(self.lsa_tracks, cols)))
      else:
        blocks.append(fold_in(self.als_items, self.als_gram, cols, counts, first,
                              self.als_params))
    if len(blocks) > 1:
      blocks = [w * tf.math.l2_normalize(b, axis=1) for w, b in zip(self.weights, blocks)]
    return tf.concat(blocks, axis=1), tf.reduce_any(usable, axis=1)


class SimilarUsersModule(tf.Module):
  """User id (or a new user's track ids) -> the k most similar users and scores.

  Args:
    user_ids: [U] indexed users.
    user_vectors: [U, d] their taste vectors.
    parts: What places a new user from their tracks (`TasteQueryModel`).
    metric: `euclidean` or `cosine`.
    epsilon: Distance offset of the euclidean score.
    k: Results per request (clamped to U - 1).
    index_kind: `exact` (brute force) or `scann`.
    scann_options: See `tfrec_music.export.retrieval.make_scann_index`.
  """

  def __init__(self, user_ids: np.ndarray, user_vectors: np.ndarray, parts: TasteParts,
               metric: str, epsilon: float, k: int, index_kind: str = "exact",
               scann_options: Optional[Dict[str, int]] = None):
    super().__init__()
    if index_kind not in ("exact", "scann"):
      raise ValueError("`index_kind` should be 'exact' or 'scann'. "
                       f"Received: `index_kind` = {index_kind!r}.")
    if len(user_ids) < 2:
      raise ValueError(f"Need at least 2 users to export similar users. Received: {len(user_ids)}.")
    self.metric, self.index_kind = metric, index_kind
    self.epsilon = float(epsilon)
    self.k = max(1, min(int(k), len(user_ids) - 1))
    ids = np.asarray(user_ids).astype(str).astype(object)
    vectors = np.asarray(user_vectors, np.float32)
    if metric == "cosine":
      vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    self.user_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="user_ids")
    self.user_vectors = tf.Variable(vectors, trainable=False, name="user_vectors")
    self.user_sq_norm = tf.Variable((vectors.astype(np.float64) ** 2).sum(1).astype(np.float32),
                                    trainable=False, name="user_sq_norm")
    self.user_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                            tf.range(len(ids), dtype=tf.int64)), default_value=-1)
    self.query_model = TasteQueryModel(parts)
    if index_kind == "scann":
      from tfrec_music.export.retrieval import make_scann_index  # pylint: disable=g-import-not-at-top
      self.fetch_k = min(len(ids), self.k + 1)
      self.index = make_scann_index(self._augmented(vectors), ids, self.fetch_k, scann_options)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      rows = self.user_table.lookup(user_id)
      known = rows >= 0
      queries = tf.gather(self.user_vectors, tf.maximum(rows, 0))
      return self._answer(queries, known, exclude=tf.where(known, rows, -1))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="track_ids")])
    def similar_to_tracks(track_ids):
      queries, known = self.query_model(track_ids)
      if self.metric == "cosine":
        queries = tf.math.l2_normalize(queries, axis=1)
      return self._answer(queries, known,
                          exclude=tf.fill([tf.shape(track_ids)[0]], tf.constant(-1, tf.int64)))

    self.serve = serve
    self.similar_to_tracks = similar_to_tracks

  def _augmented(self, vectors: np.ndarray) -> np.ndarray:
    """Candidates for a dot-product index whose order is the metric's order.

    Euclidean: `[2 v, -||v||^2] . [q, 1] = ||q||^2 - ||q - v||^2`.
    """
    if self.metric == "cosine":
      return vectors
    sq = (vectors.astype(np.float64) ** 2).sum(1, keepdims=True)
    return np.concatenate([2.0 * vectors, -sq], axis=1).astype(np.float32)

  def _to_score(self, dots, queries):
    """Index dot products [B, n] -> the metric's scores."""
    if self.metric == "cosine":
      return dots
    q_sq = tf.reduce_sum(queries * queries, axis=1, keepdims=True)
    sq = q_sq - dots
    # ||v||^2 = ||q||^2 - sq + ... is not at hand here; ||q||^2 bounds the scale.
    sq = tf.where(sq <= ROUNDING * 2.0 * q_sq, tf.zeros_like(sq), sq)
    return 1.0 / (tf.sqrt(sq) + self.epsilon)

  def _answer(self, queries, known, exclude):
    if self.index_kind == "exact":
      if self.metric == "cosine":
        dots = tf.matmul(queries, self.user_vectors, transpose_b=True)
      else:
        dots = 2.0 * tf.matmul(queries, self.user_vectors, transpose_b=True) \
            - self.user_sq_norm[tf.newaxis, :]
      n = tf.shape(self.user_vectors)[0]
      is_self = tf.equal(tf.range(n, dtype=tf.int64)[tf.newaxis, :], exclude[:, tf.newaxis])
      dots = tf.where(is_self, tf.constant(-np.inf, tf.float32), dots)
      top_dots, top = tf.math.top_k(dots, k=self.k)
      ids = tf.gather(self.user_ids, top)
    else:
      augmented = tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1) \
          if self.metric == "euclidean" else queries
      dots, fetched = self.index(augmented, k=self.fetch_k)
      self_ids = tf.gather(self.user_ids, tf.maximum(exclude, 0))
      is_self = tf.equal(fetched, self_ids[:, tf.newaxis]) & (exclude >= 0)[:, tf.newaxis]
      dots = tf.where(is_self, tf.constant(-np.inf, dots.dtype), dots)
      top_dots, top = tf.math.top_k(dots, k=self.k)
      ids = tf.gather(fetched, top, batch_dims=1)
    scores = self._to_score(top_dots, queries)
    use = known[:, tf.newaxis]
    return {"user_ids": tf.where(use, ids, tf.fill(tf.shape(ids), "")),
            "scores": tf.where(use, scores, tf.zeros_like(scores)),
            "known": known}

  def signatures(self) -> Dict[str, Callable]:
    """Signatures for `tf.saved_model.save`."""
    return {"serving_default": self.serve, "similar_to_tracks": self.similar_to_tracks}


def save_similar_users_module(module: SimilarUsersModule, directory: str) -> None:
  """Saves the module (ScaNN variants whitelist the `Scann` op namespace)."""
  save_module(module, directory, signatures=module.signatures(),
              scann_ops=module.index_kind == "scann")

