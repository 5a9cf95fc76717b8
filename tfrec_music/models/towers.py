"""Query and candidate towers of the two-tower retrieval model.

Both towers are plain Keras models over *encoded* features (see
`tfrec_music.models.features`), so each can be exported alone behind its
encoder. They share the track-id embedding: the query tower pools the user's
recent tracks through it, which is what lets a user never seen in training
get personal recommendations from their history.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.features import ItemFeatureSpec
from tfrec_music.models.features import TEXT_VECTOR_COLUMN


def embedding_mean(table: tf.Tensor, ids: tf.Tensor,
                   weights: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Mean of the `table` rows of each row's ids, padding (id 0) left out.

  Without `weights`, the plain mean of the rows of a row's non-0 ids; with
  [B, L] `weights`, sum(w e) / max(sum(w), 1e-9) over them. Rows with no
  valid id give zeros. This is the mean of `tf.gather(table, ids)` [B, L, d]
  with the padding masked, up to float rounding, but computed on the valid
  entries only and without the [B, L, d] tensor: one sparse segment mean
  (weighted: one sparse-dense matmul), whose gradient for `table` is one
  dense [V, d] tensor built from the valid entries, where a gather gives
  [B x L, d] rows that the optimizer then has to sum into the table.

  Args:
    table: [V, d] embedding table (a variable or its value).
    ids: [B, L] row indices into `table`; 0 is padding.
    weights: Optional [B, L] weight of each position (padding's is ignored).

  Returns:
    [B, d].
  """
  coords = tf.where(tf.not_equal(ids, 0))
  rows, values = coords[:, 0], tf.gather_nd(ids, coords)
  if weights is None:
    return tf.sparse.segment_mean(table, values, rows, num_segments=tf.shape(ids)[0])
  entries = tf.SparseTensor(
      tf.stack([rows, values], axis=1), tf.gather_nd(weights, coords),
      tf.stack([tf.shape(ids, out_type=tf.int64)[0], tf.shape(table, out_type=tf.int64)[0]]))
  total = tf.sparse.sparse_dense_matmul(entries, table)
  valid = tf.cast(tf.not_equal(ids, 0), weights.dtype)
  return total / tf.maximum(tf.reduce_sum(weights * valid, axis=1, keepdims=True), 1e-9)


_TABLE = tf.TensorSpec([None, None], tf.float32)
_IDS = tf.TensorSpec([None, None], tf.int64)


@tf.function(jit_compile=True, input_signature=[_TABLE, _IDS])
def _padded_mean(table: tf.Tensor, ids: tf.Tensor):
  """XLA: the masked mean of [B, L] ids' rows, and each position's weight (1 / count or 0)."""
  valid = tf.cast(tf.not_equal(ids, 0), table.dtype)
  weights = valid / tf.maximum(tf.reduce_sum(valid, axis=1, keepdims=True), 1.0)
  return tf.einsum("bl,bld->bd", weights, tf.gather(table, ids)), weights


@tf.function(jit_compile=True, input_signature=[_TABLE, _TABLE, _IDS, _TABLE])
def _padded_mean_grad(table: tf.Tensor, upstream: tf.Tensor, ids: tf.Tensor,
                      weights: tf.Tensor) -> tf.Tensor:
  """XLA: the dense [V, d] gradient of `_padded_mean` for `table`: one scatter-add."""
  rows = weights[:, :, tf.newaxis] * upstream[:, tf.newaxis, :]
  return tf.tensor_scatter_nd_add(tf.zeros_like(table), tf.reshape(ids, [-1, 1]),
                                  tf.reshape(rows, [-1, tf.shape(table)[1]]))


@tf.custom_gradient
def padded_mean(table: tf.Tensor, ids: tf.Tensor):
  """`embedding_mean(table, ids)` (unweighted) as two XLA kernels: the training step's pooling.

  The forward gathers the [B, L, d] rows and takes the masked mean; the
  gradient for `table` is one dense [V, d] scatter-add of the B x L
  weighted rows (padding adds 0 to row 0). The shapes are fixed by the batch,
  not by how many ids are valid, so XLA compiles once per batch shape; on CPU
  the compiled scatter is 3-4x faster than TF's per-row `scatter_nd` /
  segment-sum kernels (a 1,024 x 50 history into a 9,074 x 64 table: forward
  and backward ~4.5 against ~7 ms). Inference keeps `embedding_mean`, so
  exports hold no XLA functions and take any batch size without a compile.

  Args:
    table: [V, d] embedding table (the variable's value).
    ids: [B, L] row indices into `table`; 0 is padding.

  Returns:
    [B, d], rows with no valid id zeros.
  """
  out, weights = _padded_mean(table, ids)

  def grad(upstream):
    return _padded_mean_grad(table, upstream, ids, weights), None
  return out, grad


def layer_mean(layer: tf.keras.layers.Embedding, ids: tf.Tensor,
               weights: Optional[tf.Tensor] = None, training: bool = False) -> tf.Tensor:
  """`embedding_mean` of an `Embedding` layer's table (the layer built on first use).

  In training, the unweighted mean runs as `padded_mean` (same values and
  gradient up to float rounding, faster on a training batch).
  """
  if not layer.built:
    # Creates the weights where `layer(ids)` used to, so initial values are unchanged.
    layer(ids[:0])
  if training and weights is None:
    return padded_mean(tf.convert_to_tensor(layer.embeddings), ids)
  return embedding_mean(layer.embeddings, ids, weights)


# A multi-valued item feature (tags, title words) is pooled in training from a
# precomputed dense [n_items, V] matrix of each track's mean weights when its
# vocabulary is this small and the matrix this small in entries (64 MiB).
DENSE_BAG_MAX_VOCAB = 1024
DENSE_BAG_MAX_ENTRIES = 1 << 24
# Catalogue key of a feature's dense bag: `<column>` + this.
BAG_SUFFIX = "/bag"


def dense_bag(ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """[N, vocab_size] float32 mean weights of each row's ids, padding (0) left out.

  `dense_bag(ids, V) @ table` is `embedding_mean(table, ids)` up to float
  rounding: on a small vocabulary the pooling and its gradient become two
  dense matmuls, which on CPU cost a fraction of the sparse segment mean's
  per-entry scatter (tags and two text features, vocabularies of 56-256, 1,024
  tracks, forward and backward: 0.9-1.4 against 3.0-3.6 ms).
  """
  ids = np.asarray(ids, np.int64).reshape(len(ids), -1)
  bag = np.zeros((len(ids), vocab_size), np.float32)
  rows, cols = np.nonzero(ids)
  np.add.at(bag, (rows, ids[rows, cols]), 1.0)
  return bag / np.maximum(bag.sum(axis=1, keepdims=True), 1.0)


def use_dense_bag(n_rows: int, vocab_size: int) -> bool:
  """Whether a feature of `vocab_size` over `n_rows` tracks is pooled from a dense bag."""
  return vocab_size <= DENSE_BAG_MAX_VOCAB and n_rows * vocab_size <= DENSE_BAG_MAX_ENTRIES


def recency_ranks(ids: tf.Tensor) -> tf.Tensor:
  """[B, L] recency rank of each valid (non-0) history position: 1 = the most recent.

  The rank counts valid positions only, from the end of the row, so padding or
  unknown tracks anywhere in the row do not shift it. Padding positions get 0.
  """
  valid = tf.cast(tf.not_equal(ids, 0), tf.int32)
  return tf.cumsum(valid, axis=1, reverse=True) * valid


def recency_weights(ids: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """[B, L] weight `exp(logits[rank - 1])` of each history position (0 if unused).

  Args:
    ids: [B, L] a history's ids (0 = padding).
    logits: [H] learned log-weight of the H most recent valid positions; older
      positions (rank > H) and padding get weight 0. All-zero logits give the
      plain mean of the last H valid positions (see `embedding_mean`).

  Returns:
    [B, L] float weights.
  """
  rank = recency_ranks(ids)
  length = tf.shape(logits)[0]
  used = (rank > 0) & (rank <= length)
  return tf.where(used, tf.exp(tf.gather(logits, tf.clip_by_value(rank - 1, 0, length - 1))),
                  tf.zeros_like(logits[0]))


def _mlp(layer_sizes: Sequence[int], output_dim: int, name: str) -> tf.keras.Sequential:
  layers = [tf.keras.layers.Dense(n, activation="relu") for n in layer_sizes]
  layers.append(tf.keras.layers.Dense(output_dim))
  return tf.keras.Sequential(layers, name=name)


class CandidateTower(tf.keras.Model):
  """Track tower: id, artist, album, genre, tags, title/lyrics text, audio, text vector.

  Args:
    spec: Item features to use (ids only when empty).
    lookup_sizes: Feature -> vocabulary size of the categorical lookups.
    text_vocab_sizes: Text feature -> token vocabulary size.
    item_embedding: The shared track-id embedding layer.
    embedding_dim: Output size [d].
    layer_sizes: Hidden layer sizes of the MLP over the concatenated features.
    feature_dim: Size of each content feature's embedding.
    normalize: L2-normalize the output (scores become cosines / temperature).
    id_keep: Optional [item_vocab_size] bool: False for track ids the tower
      treats as unknown (OOV), so those tracks are placed by their content
      alone (rarely played tracks, whose id embeddings are mostly noise).
  """

  def __init__(self, spec: ItemFeatureSpec, lookup_sizes: Dict[str, int],
               text_vocab_sizes: Dict[str, int], item_embedding: tf.keras.layers.Embedding,
               embedding_dim: int, layer_sizes: Sequence[int], feature_dim: int = 32,
               normalize: bool = True, id_keep: Optional[np.ndarray] = None, **kwargs):
    super().__init__(**kwargs)
    self.spec = spec
    self.id_keep = (tf.constant(np.asarray(id_keep, bool)) if id_keep is not None else None)
    self.item_embedding = item_embedding
    self.normalize = normalize
    self.categorical = {c: tf.keras.layers.Embedding(lookup_sizes[c], feature_dim, name=f"{c}_embedding")
                        for c in spec.categorical}
    self.tags = (tf.keras.layers.Embedding(lookup_sizes["tags"], feature_dim, name="tags_embedding")
                 if spec.tags else None)
    self.text = {c: tf.keras.layers.Embedding(text_vocab_sizes[c], feature_dim, name=f"{c}_embedding")
                 for c in spec.text}
    self.numeric = (tf.keras.layers.Dense(feature_dim, activation="relu", name="numeric_dense")
                    if spec.numeric else None)
    self.text_vector = (tf.keras.layers.Dense(feature_dim, activation="relu", name="text_vector_dense")
                        if spec.text_vector_dim else None)
    self.mlp = _mlp(layer_sizes, embedding_dim, "candidate_mlp")

  def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Encoded item features [B, ...] -> track embeddings [B, d]."""
    ids = features["item_id"]
    if self.id_keep is not None:
      ids = tf.where(tf.gather(self.id_keep, ids), ids, tf.ones_like(ids))
    parts = [self.item_embedding(ids)]
    for column, layer in self.categorical.items():
      parts.append(layer(features[column]))
    for column, layer in self._bags():
      parts.append(_bag_mean(layer, features, column))
    if self.numeric is not None:
      parts.append(self.numeric(features["numeric"]))
    if self.text_vector is not None:
      parts.append(self.text_vector(features[TEXT_VECTOR_COLUMN]))
    out = self.mlp(tf.concat(parts, axis=1), training=training)
    return tf.math.l2_normalize(out, axis=1) if self.normalize else out

  def _bags(self) -> List[Tuple[str, tf.keras.layers.Embedding]]:
    """(column, embedding) of the multi-valued features, in the order the tower pools them."""
    tags = [("tags", self.tags)] if self.tags is not None else []
    return tags + list(self.text.items())

  def dense_bags(self, catalogue: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The catalogue's dense bags (`dense_bag`) of the features small enough for one.

    Args:
      catalogue: Encoded item features, [n_items, L] ids for tags and text.

    Returns:
      `<column>` + `BAG_SUFFIX` -> [n_items, vocabulary] weights; given in the
      features instead of a column's ids, the tower pools with one matmul.
    """
    out = {}
    for column, layer in self._bags():
      ids = catalogue[column]
      if use_dense_bag(len(ids), layer.input_dim):
        out[column + BAG_SUFFIX] = dense_bag(ids, layer.input_dim)
    return out

  def get_config(self):
    """Towers are rebuilt from the family config; SavedModels carry the weights."""
    return {"name": self.name}


def _bag_mean(layer: tf.keras.layers.Embedding, features: Dict[str, tf.Tensor],
              column: str) -> tf.Tensor:
  """Mean embedding of a multi-valued feature: its dense bag's matmul, else its ids' mean."""
  bag = features.get(column + BAG_SUFFIX)
  if bag is None:
    return layer_mean(layer, features[column])
  if not layer.built:
    layer(tf.zeros([0], tf.int64))  # creates the weights where `layer_mean` would
  return tf.linalg.matmul(bag, layer.embeddings)


class QueryTower(tf.keras.Model):
  """User tower: user id, country (and other user columns), recent-history pooling.

  Args:
    user_vocab_size: Size of the user-id lookup (incl. mask and OOV).
    categorical_sizes: User feature -> lookup size (e.g. `country`).
    item_embedding: The shared track-id embedding layer (history pooling).
    embedding_dim: Output size [d].
    layer_sizes: Hidden layer sizes.
    feature_dim: Size of each user feature's embedding.
    normalize: L2-normalize the output.
    history_content: Optional feature -> (mapping [item_vocab_size] from a
      history track's lookup index to that track's feature index, the
      candidate tower's embedding layer of the feature). The user's recent
      artists, albums and genres are pooled through the embeddings the track
      tower uses, so taste for an artist reaches its rarely played tracks.
    recency_length: 0 pools the history with a plain mean; H > 0 learns one
      weight per recency rank (the most recent track, the one before, ...,
      the H-th most recent) and pools with those weights, so recent tracks
      can count more when tastes drift. Tracks older than the H-th are
      ignored. The weights start equal (a plain mean).
    use_history: False: no history input at all (`history_length` 0); the
      tower is the user id and user features alone.
  """

  def __init__(self, user_vocab_size: int, categorical_sizes: Dict[str, int],
               item_embedding: tf.keras.layers.Embedding, embedding_dim: int,
               layer_sizes: Sequence[int], feature_dim: int = 32, normalize: bool = True,
               history_content: Optional[Dict[str, Tuple[np.ndarray, tf.keras.layers.Layer]]] = None,
               recency_length: int = 0, use_history: bool = True, **kwargs):
    super().__init__(**kwargs)
    if not use_history and (history_content or recency_length):
      raise ValueError("History content and recency pooling need `use_history`.")
    self.use_history = use_history
    self.recency_logits = (self.add_weight(name="recency_logits", shape=(recency_length,),
                                           initializer="zeros")
                           if recency_length > 0 else None)
    self.history_content = {
        column: (tf.constant(np.asarray(mapping, np.int64)), layer)
        for column, (mapping, layer) in (history_content or {}).items()}
    self.user_embedding = tf.keras.layers.Embedding(user_vocab_size, embedding_dim,
                                                    name="user_id_embedding")
    self.categorical = {c: tf.keras.layers.Embedding(n, feature_dim, name=f"{c}_embedding")
                        for c, n in categorical_sizes.items()}
    self.item_embedding = item_embedding
    self.normalize = normalize
    self.mlp = _mlp(layer_sizes, embedding_dim, "query_mlp")

  def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Encoded `user_id` [B], user features [B], `history` [B, H] (if used) -> [B, d]."""
    parts = [self.user_embedding(features["user_id"])]
    if self.use_history:
      history = features["history"]
      parts.append(self._pool(self.item_embedding, history, training))
      for mapping, layer in self.history_content.values():
        # Padding (0) and unknown tracks (1) map to 0, which stays masked.
        parts.append(self._pool(layer, tf.gather(mapping, history), training))
    for column, layer in self.categorical.items():
      parts.append(layer(features[column]))
    out = self.mlp(tf.concat(parts, axis=1), training=training)
    return tf.math.l2_normalize(out, axis=1) if self.normalize else out

  def _pool(self, layer: tf.keras.layers.Embedding, ids: tf.Tensor,
            training: bool = False) -> tf.Tensor:
    """Plain or recency-weighted mean of `layer`'s embeddings of a history's [B, L] ids."""
    if self.recency_logits is None:
      return layer_mean(layer, ids, training=training)
    return layer_mean(layer, ids, recency_weights(ids, self.recency_logits))

  def get_config(self):
    """Towers are rebuilt from the family config; SavedModels carry the weights."""
    return {"name": self.name}
