"""The playlist MF training model: playlist and track towers of ids and content, and its loss."""

from typing import Dict, Optional

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music.models.playlist_mf.config import PlaylistMFConfig


class Bag(tf.keras.layers.Layer):
  """Mean vector and bias of a row's codes (a track's title words, a playlist's name tokens).

  Args:
    codes: [N, L] codes of each row, -1 for padding (a row without codes
      gives zeros).
    vocab_size: Number of codes.
    dim: Vector size.
    stddev: Standard deviation of the initial vectors.
    seed: Initializer seed.
  """

  def __init__(self, codes: np.ndarray, vocab_size: int, dim: int, stddev: float, seed: int,
               **kwargs):
    super().__init__(**kwargs)
    codes = np.asarray(codes, np.int64).reshape(len(codes), -1)
    present = (codes >= 0).astype(np.float32)
    # Row `vocab_size` is the padding row: its weight is 0, so it is never trained.
    self.codes = tf.constant(np.where(codes >= 0, codes, vocab_size))
    self.weights_of_rows = tf.constant(present / np.maximum(present.sum(1, keepdims=True), 1.0))
    self.vectors = tf.keras.layers.Embedding(
        vocab_size + 1, dim, name=f"{self.name}_vectors",
        embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=stddev, seed=seed))
    self.bias = tf.keras.layers.Embedding(vocab_size + 1, 1, name=f"{self.name}_bias",
                                          embeddings_initializer="zeros")

  def call(self, rows: tf.Tensor):
    """Rows [N] -> (mean vectors [N, dim], mean biases [N])."""
    code = tf.gather(self.codes, rows)
    weight = tf.gather(self.weights_of_rows, rows)
    vector = tf.reduce_sum(self.vectors(code) * weight[..., tf.newaxis], axis=-2)
    bias = tf.reduce_sum(tf.squeeze(self.bias(code), -1) * weight, axis=-1)
    return vector, bias

  def table(self) -> np.ndarray:
    """[vocab_size, dim + 1]: each code's [vector, bias] (the padding row left out)."""
    return np.concatenate([self.vectors.embeddings.numpy()[:-1],
                           self.bias.embeddings.numpy()[:-1]], axis=1)


class PlaylistMFModel(tfrs.Model):
  """Playlist and track towers, each an id's own vector and bias plus its content's.

  A playlist is p = e_playlist + mean(name token vectors); a track is
  t = e_track + e_artist + e_album + mean(title word vectors) + mean(tag
  vectors) + e_genre (the `item_features` the items have), each with a
  bias built the same way. The loss (`config.loss`) is the softmax of the
  playlist's tracks among the catalogue's (exact up to `softmax_negatives`
  tracks, sampled with the logQ correction beyond) or binary cross-entropy
  against `negatives` sampled tracks per positive; the L2 penalty covers
  every vector part of the example.

  Args:
    n_playlists: Training playlists (indices 0..n-1).
    n_items: Catalogue tracks (catalogue indices).
    negative_probability: [n_items] sampling distribution of negatives.
    config: `PlaylistMFConfig`.
    item_bags: Feature name -> ([n_items, L] codes, vocabulary size).
    name_bag: ([n_playlists, L] name token codes, vocabulary size) or None.
  """

  def __init__(self, n_playlists: int, n_items: int, negative_probability: np.ndarray,
               config: PlaylistMFConfig, item_bags: Optional[Dict[str, tuple]] = None,
               name_bag: Optional[tuple] = None):
    super().__init__()
    self.config = config
    self.n_items = int(n_items)
    d = config.embedding_dim
    init = tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed)
    init_t = tf.keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed + 1)
    self.playlist_embedding = tf.keras.layers.Embedding(n_playlists, d, embeddings_initializer=init,
                                                        name="playlist_vectors")
    self.playlist_bias = tf.keras.layers.Embedding(n_playlists, 1, embeddings_initializer="zeros",
                                                   name="playlist_bias")
    self.track_embedding = tf.keras.layers.Embedding(n_items, d, embeddings_initializer=init_t,
                                                     name="track_vectors")
    self.track_bias = tf.keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros",
                                                name="track_bias")
    self.item_bag_names = sorted(item_bags or {})
    self.item_bags = [Bag(*item_bags[n], d, config.init_stddev, config.seed + 2 + i, name=n)
                      for i, n in enumerate(self.item_bag_names)]
    self.name_bag = (Bag(*name_bag, d, config.init_stddev, config.seed + 9, name="name")
                     if name_bag is not None else None)
    self.uniform = config.negative_sampling == "uniform"
    self.log_q = tf.constant(np.log(np.maximum(negative_probability, 1e-30)).astype(np.float32))
    self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))

  def track(self, item: tf.Tensor, content_only: bool = False,
            keep: Optional[tf.Tensor] = None):
    """Track vectors [N, d], biases [N] and L2 penalties [N] of track indices [N].

    With `content_only`, the track's own vector and bias are left out (the
    artist, album and title parts only); `keep` ([n_items] 0/1) keeps the
    own part of the tracks marked 1 only (`own_dropout` in training).
    """
    if content_only:
      t = tf.zeros([tf.shape(item)[0], self.config.embedding_dim])
      bias = tf.zeros([tf.shape(item)[0]])
    else:
      t = self.track_embedding(item)
      bias = tf.squeeze(self.track_bias(item), -1)
      if keep is not None:
        kept = tf.gather(keep, item)
        t, bias = t * kept[:, tf.newaxis], bias * kept
    penalty = tf.reduce_sum(t * t, -1)
    for bag in self.item_bags:
      vector, b = bag(item)
      t, bias = t + vector, bias + b
      penalty = penalty + tf.reduce_sum(vector * vector, -1)
    return t, bias, penalty

  def query(self, playlist: tf.Tensor):
    """Playlist vectors [N, d], biases [N] and L2 penalties [N] of playlist indices [N]."""
    p = self.playlist_embedding(playlist)
    bias = tf.squeeze(self.playlist_bias(playlist), -1)
    penalty = tf.reduce_sum(p * p, -1)
    if self.name_bag is not None:
      vector, b = self.name_bag(playlist)
      p, bias = p + vector, bias + b
      penalty = penalty + tf.reduce_sum(vector * vector, -1)
    return p, bias, penalty

  def track_table(self, content_only: bool = False):
    """(vectors [n_items, d], bias [n_items]) of the whole catalogue."""
    t, bias, _ = self.track(tf.range(self.n_items, dtype=tf.int64), content_only)
    return t.numpy(), bias.numpy()

  def playlist_table(self, n_playlists: int):
    """(vectors [P, d], bias [P]) of the training playlists."""
    p, bias, _ = self.query(tf.range(n_playlists, dtype=tf.int64))
    return p.numpy(), bias.numpy()

  def _draw(self, n: tf.Tensor) -> tf.Tensor:
    if self.uniform:
      return tf.random.uniform([n], 0, self.n_items, dtype=tf.int64)
    return tf.random.categorical(self.log_q[tf.newaxis, :], n, dtype=tf.int64)[0]

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """The loss of a batch of positives (`playlist`, `item` [B])."""
    playlist, item = inputs["playlist"], inputs["item"]
    keep = None
    if training and self.config.own_dropout > 0:
      # One draw per batch for the whole catalogue: a track reads the same in its
      # positive and in the softmax's denominator.
      keep = tf.cast(tf.random.uniform([self.n_items]) >= self.config.own_dropout, tf.float32)
    if self.config.loss == "softmax":
      return self._softmax_loss(playlist, item, keep)
    k = self.config.negatives
    b = tf.shape(playlist)[0]
    playlists = tf.concat([playlist, tf.repeat(playlist, k)], axis=0)
    items = tf.concat([item, self._draw(b * k)], axis=0)
    labels = tf.concat([tf.ones([b]), tf.zeros([b * k])], axis=0)
    p, p_bias, p_penalty = self.query(playlists)
    t, t_bias, t_penalty = self.track(items, keep=keep)
    logit = tf.reduce_sum(p * t, -1) + p_bias + t_bias
    loss = self.task(labels=labels, predictions=logit, compute_metrics=False)
    return loss + self.config.l2 * tf.reduce_mean(p_penalty + t_penalty)

  def _softmax_loss(self, playlist: tf.Tensor, item: tf.Tensor,
                    keep: Optional[tf.Tensor]) -> tf.Tensor:
    # The playlist bias cancels out of the softmax; it is kept in the scores
    # (with zero gradient) so that one score formula serves both losses.
    p, p_bias, p_penalty = self.query(playlist)
    t, t_bias, t_penalty = self.track(item, keep=keep)
    positive = tf.reduce_sum(p * t, -1) + t_bias + p_bias
    m = self.config.softmax_negatives
    if self.n_items <= m:
      candidates = tf.range(self.n_items, dtype=tf.int64)
      correction = tf.zeros([self.n_items])
    else:
      # Z ~ exp(s_pos) + sum over draws of exp(s_j) / (m q_j); a draw of the positive
      # itself is masked out.
      candidates = self._draw(m)
      correction = tf.gather(self.log_q, candidates) + tf.math.log(float(m))
    c, c_bias, _ = self.track(candidates, keep=keep)
    logits = (tf.matmul(p, c, transpose_b=True) + (c_bias - correction)[tf.newaxis, :]
              + p_bias[:, tf.newaxis])
    if self.n_items > m:
      hit = tf.equal(item[:, tf.newaxis], candidates[tf.newaxis, :])
      logits = tf.concat([positive[:, tf.newaxis], tf.where(hit, -1e9, logits)], axis=1)
    loss = tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - positive)
    return loss + self.config.l2 * tf.reduce_mean(p_penalty + t_penalty)


def negative_distribution(item_train_counts: np.ndarray, sampling: str,
                          exponent: float = 0.75) -> np.ndarray:
  """[n_items] probability of drawing each track as a negative.

  Args:
    item_train_counts: [n_items] training positives per track.
    sampling: `"uniform"` or `"popularity"` ((count + 1) ** exponent).
    exponent: Popularity exponent.
  """
  counts = np.asarray(item_train_counts, np.float64)
  weights = np.ones_like(counts) if sampling == "uniform" else (counts + 1.0) ** exponent
  return weights / weights.sum()
