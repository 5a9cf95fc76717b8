"""The taste_mlp export: (user id, track id) -> probability."""

from typing import Callable, Dict

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.taste_mlp.network import TasteScorer
from tfrec_music.pipeline.lookups import id_table


class TasteServingModule(tf.Module):
  """(user id, track id) -> probability, with the catalogue and centroids inside.

  Args:
    scorer: Trained `TasteScorer`.
    user_ids: [U] known users.
    centroids: [U, F] their taste centroids.
    item_ids: [n_items] catalogue tracks.
    track_table: [n_items, F] their descriptions.
  """

  def __init__(self, scorer: TasteScorer, user_ids: np.ndarray, centroids: np.ndarray,
               item_ids: np.ndarray, track_table: np.ndarray):
    super().__init__()
    self.scorer = scorer
    dim = track_table.shape[1]
    # Row 0 of each table is the fallback: the mean track / mean centroid.
    self.centroids = tf.Variable(np.concatenate([centroids.mean(0, keepdims=True), centroids]),
                                 dtype=tf.float32, trainable=False, name="centroids")
    self.tracks = tf.Variable(np.concatenate([track_table.mean(0, keepdims=True), track_table]),
                              dtype=tf.float32, trainable=False, name="tracks")
    self.user_table = id_table(user_ids)
    self.item_table = id_table(item_ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None], tf.string, name="item_id")])
    def serve(user_id, item_id):
      users = self.user_table.lookup(user_id) + 1
      items = self.item_table.lookup(item_id) + 1
      logits = self.scorer(tf.gather(self.tracks, items), tf.gather(self.centroids, users))
      return {"probability": tf.sigmoid(logits), "known": (users > 0) & (items > 0)}

    @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name="track"),
                                  tf.TensorSpec([None, dim], tf.float32, name="taste")])
    def score_features(track, taste):
      logits = self.scorer(track, taste)
      return {"probability": tf.sigmoid(logits), "logit": logits}

    self.serve = serve
    self.score_features = score_features

  def signatures(self) -> Dict[str, Callable]:
    """Signatures for `tf.saved_model.save`."""
    return {"serving_default": self.serve, "score_features": self.score_features}
