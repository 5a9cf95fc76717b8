"""The two-tower training model, its query encoder and optimizer."""

from typing import Dict, Optional, Sequence

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs
from tensorflow_recommenders.layers.loss import MIN_FLOAT

from tfrec_music.models.towers import CandidateTower
from tfrec_music.models.towers import QueryTower
from tfrec_music.models.two_tower.config import TwoTowerConfig
from tfrec_music.optimizers import AveragedAdagrad
from tfrec_music.optimizers import AveragedSGD
from tfrec_music.optimizers import AveragingMixin
from tfrec_music.optimizers import averaging
from tfrec_music.pipeline.lookups import string_lookup


# Training feature: the row's weight in the loss (`play_weight`); absent: every row 1.
EXAMPLE_WEIGHT = "example_weight"


class TwoTowerModel(tfrs.Model):
  """The training model: towers, catalogue features and the retrieval task.

  Args:
    query_tower: `QueryTower`.
    candidate_tower: `CandidateTower`.
    catalogue: Encoded item features, each [n_items, ...], gathered by
      catalogue index for the candidates of a batch.
    sampling_probability: [n_items] probability of each item being a batch
      candidate (training frequency), for the logQ correction.
    config: `TwoTowerConfig`.
  """

  def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower,
               catalogue: Dict[str, np.ndarray], sampling_probability: np.ndarray,
               config: TwoTowerConfig):
    super().__init__()
    self.query_tower = query_tower
    self.candidate_tower = candidate_tower
    self.catalogue = {k: tf.constant(v) for k, v in catalogue.items()}
    self.n_items = int(len(sampling_probability))
    self.config = config
    has_content = len(self.catalogue) > 1
    self.item_id_dropout = config.item_id_dropout if has_content else 0.0
    prob = np.asarray(sampling_probability, np.float64)
    if config.mixed_negatives:
      # A candidate's chance to appear in a batch: as a positive or a uniform draw.
      prob = config.batch_size * prob + config.mixed_negatives / self.n_items
      prob = prob / prob.sum()
    # Retrieval subtracts log(p): p ** e subtracts e x log(p).
    self.log_q = tf.constant(np.maximum(prob, 1e-12) ** config.logq_exponent, tf.float32)
    # What TFRS's `SamplingProbablityCorrection` subtracts, computed once for the
    # catalogue instead of per batch.
    self.log_correction = tf.math.log(tf.clip_by_value(self.log_q, 1e-6, 1.0))

  def candidate_features(self, indices: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Encoded features of the catalogue items at `indices` [N]."""
    return {k: tf.gather(v, indices) for k, v in self.catalogue.items()}

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """In-batch softmax loss of a batch of (user features, positive item index[, row weight])."""
    query_inputs = {k: v for k, v in inputs.items() if k not in ("item_index", EXAMPLE_WEIGHT)}
    if training and self.config.user_id_dropout > 0:
      drop = tf.random.uniform(tf.shape(query_inputs["user_id"])) < self.config.user_id_dropout
      query_inputs["user_id"] = tf.where(drop, tf.ones_like(query_inputs["user_id"]),
                                         query_inputs["user_id"])
    if training and self.config.history_dropout > 0 and "history" in query_inputs:
      history = query_inputs["history"]
      hide = tf.random.uniform(tf.shape(history)) < self.config.history_dropout
      query_inputs["history"] = tf.where(hide, tf.zeros_like(history), history)
    queries = self.query_tower(query_inputs, training=training)
    candidates_index = inputs["item_index"]
    if training and self.config.mixed_negatives:
      extra = tf.random.uniform([self.config.mixed_negatives], 0, self.n_items, dtype=tf.int64)
      candidates_index = tf.concat([candidates_index, extra], axis=0)
    candidate_inputs = self.candidate_features(candidates_index)
    if training and self.item_id_dropout > 0:
      ids = candidate_inputs["item_id"]
      drop = tf.random.uniform(tf.shape(ids)) < self.item_id_dropout
      candidate_inputs["item_id"] = tf.where(drop, tf.ones_like(ids), ids)
    candidates = self.candidate_tower(candidate_inputs, training=training)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if training and self.config.cross_replica_negatives and replicas > 1:
      candidates, candidates_index = _gather_candidates(candidates, candidates_index)
    correction = (tf.gather(self.log_correction, candidates_index)
                  if self.config.logq_correction else None)
    loss = in_batch_softmax_loss(queries, candidates, candidates_index, correction,
                                 self.config.temperature, self.config.remove_accidental_hits,
                                 inputs.get(EXAMPLE_WEIGHT) if training else None)
    # Summed per replica and divided by the global batch, so the gradients
    # summed across replicas are the global-batch mean.
    global_batch = tf.cast(tf.shape(queries)[0] * replicas, loss.dtype)
    return loss / global_batch


def in_batch_softmax_loss(queries: tf.Tensor, candidates: tf.Tensor,
                          candidate_ids: tf.Tensor, log_correction: Optional[tf.Tensor],
                          temperature: float, remove_accidental_hits: bool,
                          row_weights: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Summed in-batch softmax cross-entropy: `tfrs.tasks.Retrieval`'s loss, fewer passes.

  Query i's positive is candidate i; the other candidates are its negatives.
  The scores are those of `Retrieval` (dot products / temperature, minus the
  log sampling probability, accidental hits set to TFRS's `MIN_FLOAT`), and
  the loss is its categorical cross-entropy summed over the batch, equal up
  to float rounding; but the temperature divides the [B, d] queries instead
  of the [B, N] scores, the hits are masked with one select instead of the
  five [B, N] passes of `RemoveAccidentalHits`, the log probabilities come
  from one precomputed table, and the cross-entropy with identity labels is
  `logsumexp(row) - diagonal`, whose gradient costs fewer [B, N] passes than
  the dense cross-entropy's (1,024 x 1,024 scores, forward and backward: ~5
  against ~7 ms on 2 CPU cores).

  Args:
    queries: [B, d] query vectors.
    candidates: [N, d] candidate vectors, N >= B (extra negatives after the B
      positives).
    candidate_ids: [N] candidate ids (accidental hits: equal ids).
    log_correction: Optional [N] log sampling probability of each candidate
      (clipped as TFRS clips it), subtracted from its scores.
    temperature: Scores are divided by it.
    remove_accidental_hits: Mask negatives with the positive's id.
    row_weights: Optional [B] weight of each query's loss (`Retrieval`'s
      `sample_weight`).

  Returns:
    Scalar: the (weighted) loss summed over the B queries.
  """
  scores = tf.linalg.matmul(queries / temperature, candidates, transpose_b=True)
  if log_correction is not None:
    scores = scores - log_correction
  n_queries = tf.shape(scores)[0]
  positive_scores = tf.linalg.diag_part(scores)
  if remove_accidental_hits:
    positives = candidate_ids[:n_queries]
    hits = tf.equal(positives[:, tf.newaxis], candidate_ids[tf.newaxis, :])
    hits = tf.linalg.set_diag(hits, tf.zeros([n_queries], tf.bool))
    # TFRS adds MIN_FLOAT to a hit's score, which rounds to MIN_FLOAT itself.
    scores = tf.where(hits, tf.constant(MIN_FLOAT, scores.dtype), scores)
  losses = tf.reduce_logsumexp(scores, axis=1) - positive_scores
  if row_weights is not None:
    losses = losses * tf.cast(row_weights, losses.dtype)
  return tf.reduce_sum(losses)


def _gather_candidates(candidates: tf.Tensor, candidates_index: tf.Tensor):
  """All replicas' candidates, this replica's first (its positives stay on the diagonal)."""
  context = tf.distribute.get_replica_context()
  n_local = tf.shape(candidates)[0]
  shift = -tf.cast(context.replica_id_in_sync_group, tf.int32) * n_local
  gathered = tf.roll(context.all_gather(candidates, axis=0), shift, axis=0)
  gathered_index = tf.roll(context.all_gather(candidates_index, axis=0), shift, axis=0)
  return gathered, gathered_index


class QueryEncoder(tf.keras.layers.Layer):
  """Raw user features (`user_id`, `country`, `history` track ids) -> indices.

  Args:
    vocabularies: Column -> vocabulary (`user_id`, `item_id`, user features).
    user_features: User feature columns encoded besides `user_id`.
    history: Encode a `history` input (False: the model takes none).
  """

  def __init__(self, vocabularies: Dict[str, Sequence[str]], user_features: Sequence[str],
               history: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.user_features = tuple(user_features)
    self.user_lookup = string_lookup(vocabularies["user_id"], "user_id_lookup")
    self.history_lookup = (string_lookup(vocabularies["item_id"], "history_lookup")
                           if history else None)
    self.feature_lookups = {c: string_lookup(vocabularies.get(c, []), f"{c}_lookup")
                            for c in self.user_features}

  def call(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Encodes `user_id` [B], user features [B] and `history` [B, H] strings.

    History tracks the model never trained on (the OOV index 1) become padding
    (0): they are ignored by the pooling instead of adding the untrained OOV
    vector, so a history with unknown ids scores like the same history without
    them.
    """
    out = {"user_id": self.user_lookup(raw["user_id"])}
    if self.history_lookup is not None:
      history = self.history_lookup(raw["history"])
      out["history"] = tf.where(tf.equal(history, 1), tf.zeros_like(history), history)
    for column in self.user_features:
      out[column] = self.feature_lookups[column](raw[column])
    return out


def optimizer(config: TwoTowerConfig, steps_per_epoch: int = 1) -> tf.keras.optimizers.Optimizer:
  """The Keras optimizer named by `config.optimizer` at `config.learning_rate`.

  With `config.lr_decay` = `"cosine"` the rate decays to zero over
  `config.epochs` x `steps_per_epoch` steps (the optimizer's own step count,
  so a resumed run continues the same curve). With `config.average_epochs`
  > 0 the optimizer also keeps a moving average of the weights, spanning at
  most that many epochs of steps (see `tfrec_music.optimizers`).
  """
  rate = config.learning_rate
  if config.lr_decay == "cosine":
    rate = tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * int(steps_per_epoch)))
  average = averaging(config.average_epochs, steps_per_epoch)
  cls = {"adam": FusedAdam, "adagrad": AveragedAdagrad, "sgd": AveragedSGD}[config.optimizer]
  return cls(rate, **average)


class FusedAdam(AveragingMixin, tf.keras.optimizers.Adam):
  """Keras `Adam`, each variable updated by one fused kernel on a dense gradient.

  Same slots and same update as `tf.keras.optimizers.Adam` (`ResourceApplyAdam`:
  m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), var -= m alpha / (sqrt(v) + eps),
  alpha = lr sqrt(1 - b2^t) / (1 - b1^t)), so checkpoints and results carry
  over. Keras runs about ten separate ops per variable; for an embedding's
  `IndexedSlices` gradient it first merges duplicate rows (`Unique` + a
  segment sum) and then still decays the moments of every row, as Adam
  does. Summing the rows straight into a dense gradient gives the same update
  with one scatter and one pass over the table. In the two-tower step (the
  history pools 50 tracks a row, so the track table gets B x 50 gradient
  rows) the optimizer's share fell from about half of the step to a sixth.
  """

  def _deduplicate_sparse_grad(self, grads):
    return [_dense(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

  def update_step(self, gradient, variable):
    """One `ResourceApplyAdam` (Keras' own update with AMSGrad or adaptive epsilon).

    `gradient` is dense: `apply_gradients` passes every gradient through
    `_deduplicate_sparse_grad` first.
    """
    if self.amsgrad or getattr(self, "adaptive_epsilon", False):
      return super().update_step(gradient, variable)
    index = self._index_dict[self._var_key(variable)]
    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    return tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=self._momentums[index].handle,
        v=self._velocities[index].handle, beta1_power=tf.pow(beta_1, step),
        beta2_power=tf.pow(beta_2, step), lr=tf.cast(self.learning_rate, dtype),
        beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=gradient)


def _dense(slices: tf.IndexedSlices) -> tf.Tensor:
  """The dense gradient of `IndexedSlices` (rows of equal index summed).

  `scatter_nd` sums the rows as `tf.convert_to_tensor` (`unsorted_segment_sum`)
  does, about twice as fast on CPU for an embedding's [B x history, d] rows.
  """
  return tf.scatter_nd(tf.expand_dims(slices.indices, 1), slices.values,
                       tf.cast(slices.dense_shape, slices.indices.dtype))
