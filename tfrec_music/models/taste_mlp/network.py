"""The taste MLP (`TasteScorer`) and its training model (`TasteMLPModel`)."""

from typing import Dict, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs


class TasteScorer(tf.keras.Model):
  """The 2-layer MLP: `[track, taste, track * taste]` -> logit.

  Args:
    hidden_size: Hidden units.
    weight_decay: L2 on the kernels.
  """

  def __init__(self, hidden_size: int, weight_decay: float, **kwargs):
    super().__init__(**kwargs)
    regularizer = tf.keras.regularizers.l2(weight_decay) if weight_decay > 0 else None
    self.hidden = tf.keras.layers.Dense(hidden_size, activation="relu",
                                        kernel_regularizer=regularizer, name="hidden")
    self.out = tf.keras.layers.Dense(1, kernel_regularizer=regularizer, name="logit")

  def call(self, track: tf.Tensor, taste: tf.Tensor, training: bool = False) -> tf.Tensor:
    """track [B, F], taste [B, F] -> logits [B]."""
    x = tf.concat([track, taste, track * taste], axis=1)
    return tf.squeeze(self.out(self.hidden(x)), axis=1)

  def get_config(self):
    """Rebuilt from the family config; SavedModels carry the weights."""
    return {"name": self.name}


class TasteMLPModel(tfrs.Model):
  """Training model: gathers track features and (leave-one-out) centroids, then the loss.

  Args:
    scorer: `TasteScorer`.
    track_table: [n_items, F] track descriptions.
    user_sums: [U, F] sums of each user's training track descriptions.
    user_counts: [U] their counts.
  """

  def __init__(self, scorer: TasteScorer, track_table: np.ndarray, user_sums: np.ndarray,
               user_counts: np.ndarray):
    super().__init__()
    self.scorer = scorer
    self.track_table = tf.constant(track_table, tf.float32)
    self.user_sums = tf.constant(user_sums, tf.float32)
    self.user_counts = tf.constant(user_counts, tf.float32)
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])

  def features(self, inputs: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """(track [B, F], taste [B, F]) of rows `item` [B], `user` [B], `leave_out` [B]."""
    track = tf.gather(self.track_table, inputs["item"])
    leave = tf.cast(inputs["leave_out"], tf.float32)[:, tf.newaxis]
    total = tf.gather(self.user_sums, inputs["user"]) - leave * track
    count = tf.gather(self.user_counts, inputs["user"])[:, tf.newaxis] - leave
    return track, total / tf.maximum(count, 1.0)

  def call(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Logits [B] of encoded rows."""
    track, taste = self.features(inputs)
    return self.scorer(track, taste, training=training)

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Sigmoid cross-entropy of the rows' labels (plus the L2 penalty via Keras)."""
    logits = self(inputs, training=training)
    return self.task(labels=inputs["label"], predictions=logits)
