"""Popularity baseline: recommend the most-played training tracks to everyone.

The floor every personalized model must clear; it is evaluated beside every
model and is the fallback for users a model knows nothing about.
"""

from typing import Callable, Sequence

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.prepare.prepared import PreparedData


class PopularityModel:
  """Scores each catalogue item by its training play count.

  Args:
    item_ids: [n_items] catalogue ids in index order.
    counts: [n_items] training interactions per item.
  """

  def __init__(self, item_ids: Sequence[str], counts: np.ndarray):
    self.item_ids = np.asarray(item_ids).astype(str)
    self.counts = np.asarray(counts, dtype=np.float64)
    if len(self.item_ids) != len(self.counts):
      raise ValueError("`item_ids` and `counts` must have the same length. Received: "
                       f"{len(self.item_ids)} and {len(self.counts)}.")
    # log1p keeps scores on a modest scale; the order is the count order.
    self.item_scores = np.log1p(self.counts).astype(np.float32)

  @classmethod
  def fit(cls, prepared: PreparedData) -> "PopularityModel":
    """Counts training interactions per catalogue item."""
    return cls(prepared.item_ids, prepared.item_train_counts)

  def score_fn(self) -> Callable[[Sequence[str]], np.ndarray]:
    """Batched scorer for the evaluation library: user ids -> [B, n_items]."""
    scores = self.item_scores

    def _score(user_ids):
      return np.broadcast_to(scores, (len(user_ids), len(scores)))
    return _score

  def top_k(self, k: int):
    """(ids [k], scores [k]) of the `k` most popular items (k clamped to the catalogue)."""
    k = min(int(k), len(self.item_ids))
    order = np.lexsort((np.arange(len(self.item_scores)), -self.item_scores))[:k]
    return self.item_ids[order], self.item_scores[order]

  def serving_module(self, k: int = 100) -> tf.Module:
    """A `tf.Module` whose `serving_default` maps user ids to the top-k items.

    Args:
      k: Number of items returned per user (clamped to the catalogue size).

    Returns:
      Module with `serve(user_id [batch] string) -> {item_ids [batch, k],
      scores [batch, k]}`.
    """
    if k <= 0:
      raise ValueError(f"`k` should be a positive integer. Received: `k` = {k}.")
    ids, scores = self.top_k(k)
    module = tf.Module()
    module.top_ids = tf.Variable(ids.astype(object), dtype=tf.string, trainable=False)
    module.top_scores = tf.Variable(scores, dtype=tf.float32, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      batch = tf.shape(user_id)[0]
      return {"item_ids": tf.tile(module.top_ids[tf.newaxis], [batch, 1]),
              "scores": tf.tile(module.top_scores[tf.newaxis], [batch, 1])}

    module.serve = serve
    return module
