"""Query and candidate towers of the two-tower retrieval model.

Both towers are plain Keras models over *encoded* features (see
`tfrec_music.models.features`), so each can be exported alone behind its
encoder. They share the track-id embedding: the query tower pools the user's
recent tracks through it, which is what lets a user never seen in training
get personal recommendations from their history.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.features import ItemFeatureSpec
from tfrec_music.models.features import TEXT_VECTOR_COLUMN


def masked_mean(embedded: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
  """Mean of [B, T, d] embeddings over positions whose id is not 0 (padding).

  Rows with no valid position give zeros.
  """
  mask = tf.cast(tf.not_equal(ids, 0), embedded.dtype)[..., tf.newaxis]
  total = tf.reduce_sum(embedded * mask, axis=1)
  count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
  return total / count


def recency_ranks(ids: tf.Tensor) -> tf.Tensor:
  """[B, L] recency rank of each valid (non-0) history position: 1 = the most recent.

  The rank counts valid positions only, from the end of the row, so padding or
  unknown tracks anywhere in the row do not shift it. Padding positions get 0.
  """
  valid = tf.cast(tf.not_equal(ids, 0), tf.int32)
  return tf.cumsum(valid, axis=1, reverse=True) * valid


def recency_weighted_mean(embedded: tf.Tensor, ids: tf.Tensor,
                          logits: tf.Tensor) -> tf.Tensor:
  """Mean of [B, L, d] embeddings weighted by `exp(logits[rank - 1])` of each position.

  Args:
    embedded: [B, L, d] embeddings of a history.
    ids: [B, L] its ids (0 = padding).
    logits: [H] learned log-weight of the H most recent valid positions; older
      positions (rank > H) and padding get weight 0. All-zero logits give the
      plain mean of the last H valid positions.

  Returns:
    [B, d]; rows with no valid position give zeros.
  """
  rank = recency_ranks(ids)
  length = tf.shape(logits)[0]
  used = (rank > 0) & (rank <= length)
  weight = tf.where(used, tf.exp(tf.gather(logits, tf.clip_by_value(rank - 1, 0, length - 1))),
                    tf.zeros_like(logits[0]))
  weight = tf.cast(weight, embedded.dtype)[..., tf.newaxis]
  total = tf.reduce_sum(embedded * weight, axis=1)
  return total / tf.maximum(tf.reduce_sum(weight, axis=1), 1e-9)


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
    if self.tags is not None:
      parts.append(masked_mean(self.tags(features["tags"]), features["tags"]))
    for column, layer in self.text.items():
      parts.append(masked_mean(layer(features[column]), features[column]))
    if self.numeric is not None:
      parts.append(self.numeric(features["numeric"]))
    if self.text_vector is not None:
      parts.append(self.text_vector(features[TEXT_VECTOR_COLUMN]))
    out = self.mlp(tf.concat(parts, axis=1), training=training)
    return tf.math.l2_normalize(out, axis=1) if self.normalize else out

  def get_config(self):
    """Towers are rebuilt from the family config; SavedModels carry the weights."""
    return {"name": self.name}


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
  """

  def __init__(self, user_vocab_size: int, categorical_sizes: Dict[str, int],
               item_embedding: tf.keras.layers.Embedding, embedding_dim: int,
               layer_sizes: Sequence[int], feature_dim: int = 32, normalize: bool = True,
               history_content: Optional[Dict[str, Tuple[np.ndarray, tf.keras.layers.Layer]]] = None,
               recency_length: int = 0, **kwargs):
    super().__init__(**kwargs)
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
    """Encoded `user_id` [B], user features [B], `history` [B, H] -> [B, d]."""
    history = features["history"]
    parts = [self.user_embedding(features["user_id"]),
             self._pool(self.item_embedding(history), history)]
    for mapping, layer in self.history_content.values():
      # Padding (0) and unknown tracks (1) map to 0, which stays masked.
      ids = tf.gather(mapping, history)
      parts.append(self._pool(layer(ids), ids))
    for column, layer in self.categorical.items():
      parts.append(layer(features[column]))
    out = self.mlp(tf.concat(parts, axis=1), training=training)
    return tf.math.l2_normalize(out, axis=1) if self.normalize else out

  def _pool(self, embedded: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Plain or recency-weighted mean of a history's [B, L, d] embeddings."""
    if self.recency_logits is None:
      return masked_mean(embedded, ids)
    return recency_weighted_mean(embedded, ids, self.recency_logits)

  def get_config(self):
    """Towers are rebuilt from the family config; SavedModels carry the weights."""
    return {"name": self.name}
