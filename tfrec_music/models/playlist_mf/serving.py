"""The fold-in and serving module of playlist MF: seeds and a name in, a continuation out."""

from typing import Any, Dict, Optional, Sequence

import numpy as np
import scipy.sparse as sp

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.export.saved_model import save_module
from tfrec_music.models.neighbours import NeighbourProduct
from tfrec_music.models.playlist_mf.tokens import name_tokens

# Step sizes the damped Newton fold-in tries; the one with the lowest objective wins, per row.
STEP_SIZES = (1.0, 0.5, 0.25, 0.125)


class PlaylistContinuation(tf.Module):
  """Seeds (and a name) -> folded-in playlist vector -> top-k continuation.

  The same module scores playlists in the library's evaluation and serves in
  the export. Track vectors are augmented with a constant 1, so a playlist is
  one vector theta = [p, b_p] and its score for track j is
  theta . [t_j, 1] + b_j. The fold-in solves, with the tracks frozen, the
  training objective of one playlist (`loss`) from its seeds, plus
  l2 |p - prior|^2, where the prior is the name's vector (`name_prior`) or
  zero, by damped Newton steps.

  Args:
    item_ids: [n_items] catalogue ids.
    track_vectors: [n_items, d].
    track_bias: [n_items].
    negative_index: [M] catalogue indices the objective's negative part runs over.
    negative_weight: [M] their weights: for `bce` the sampling probabilities
      (sum 1), for `softmax` each track's weight in the partition function
      (1 for the whole catalogue, 1 / (M q_j) for a sample).
    negatives: k of the BCE objective (positives weigh 1/(1+k), negatives k/(1+k)).
    l2: L2 weight of the fold-in.
    fold_in_steps: Newton steps.
    tokens: [V] name tokens; token_vectors [V, d + 1] and token_weights [V]
      (a name is the weighted mean of its known tokens).
    fallback_ids / fallback_scores: [k] popularity ranking.
    k: Results per request (clamped to the catalogue).
    index_kind: `"exact"` or `"scann"` (None: scoring only, no serving index).
    max_seeds: Seeds the ScaNN variant can exclude.
    name_prior: Fold seeds in around the name's vector instead of zero.
    loss: `"softmax"` or `"bce"`: the objective the fold-in solves.
    l2_per_seed: The L2 weight is `l2` / (number of seeds): the seeds'
      evidence adds up while the prior's does not, so more seeds move the
      playlist further from its name. False: `l2` whatever the seed count.
    neighbours: Optional [n_items, n_items] CSR of each track's co-occurring
      tracks and their similarities (`tfrec_music.models.neighbours`).
    cooccurrence_weight: The served scores add this times the mean over the
      seeds of their neighbours' similarities (exact: every track; ScaNN: the
      fetched candidates). 0 or no `neighbours`: the logits alone.
  """

  def __init__(self, item_ids: np.ndarray, track_vectors: np.ndarray, track_bias: np.ndarray,
               negative_index: np.ndarray, negative_weight: np.ndarray, negatives: int,
               l2: float, fold_in_steps: int, tokens: Sequence[str],
               token_vectors: np.ndarray, token_weights: np.ndarray,
               fallback_ids: np.ndarray, fallback_scores: np.ndarray, k: int,
               index_kind: Optional[str] = None, max_seeds: int = 250,
               name_prior: bool = False, loss: str = "bce", l2_per_seed: bool = False,
               neighbours: Optional[sp.csr_matrix] = None,
               cooccurrence_weight: float = 0.0):
    super().__init__()
    if loss not in ("softmax", "bce"):
      raise ValueError(f"`loss` should be 'softmax' or 'bce'. Received: `loss` = {loss!r}.")
    self.loss = loss
    self.l2_per_seed = bool(l2_per_seed)
    self.name_prior = bool(name_prior)
    n, d = track_vectors.shape
    self.n_items, self.dim = int(n), int(d)
    self.k = max(1, min(int(k), self.n_items))
    self.fold_in_steps = int(fold_in_steps)
    ids = np.asarray(item_ids).astype(str).astype(object)
    self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="item_ids")
    self.item_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                            tf.range(n, dtype=tf.int64)), default_value=-1)
    augmented = np.concatenate([track_vectors, np.ones((n, 1))], axis=1).astype(np.float32)
    self.tracks = tf.Variable(augmented, trainable=False, name="track_vectors")
    self.track_bias = tf.Variable(np.asarray(track_bias, np.float32), trainable=False,
                                  name="track_bias")
    neg_index = np.asarray(negative_index, np.int64)
    self.negative_tracks = tf.Variable(augmented[neg_index], trainable=False,
                                       name="negative_tracks")
    weight = np.asarray(negative_weight, np.float64)
    k_neg = float(negatives)
    if loss == "softmax":
      # The partition function's weights enter as log offsets of the logits.
      offset = np.asarray(track_bias, np.float64)[neg_index] + np.log(weight)
    else:
      offset = np.asarray(track_bias, np.float64)[neg_index]
      # Per-playlist objective weights: positives share 1/(1+k), negatives k/(1+k).
      weight = weight * k_neg / (1.0 + k_neg)
    self.negative_bias = tf.Variable(offset.astype(np.float32), trainable=False,
                                     name="negative_bias")
    self.negative_weight = tf.Variable(weight.astype(np.float32), trainable=False,
                                       name="negative_weight")
    self.positive_share = tf.constant(1.0 / (1.0 + k_neg), tf.float32)
    # 2 l2 on the vector, none on the bias; every coordinate also gets a tiny
    # ridge so the Newton system is always solvable.
    self.ridge = tf.constant(np.concatenate([np.full(d, 2.0 * l2), [0.0]]).astype(np.float32))
    # Row 0 is the unknown token (weight 0).
    keys = ["\x00unknown"] + [str(t) for t in tokens]
    self.token_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string),
                                            tf.range(len(keys), dtype=tf.int64)),
        default_value=0)
    self.token_vectors = tf.Variable(
        np.concatenate([np.zeros((1, d + 1)), np.asarray(token_vectors).reshape(-1, d + 1)])
        .astype(np.float32), trainable=False, name="token_vectors")
    self.token_weights = tf.Variable(
        np.concatenate([[0.0], np.asarray(token_weights, np.float64)]).astype(np.float32),
        trainable=False, name="token_weights")
    self.fallback_ids = tf.Variable(np.asarray(fallback_ids).astype(str).astype(object)[:self.k],
                                    dtype=tf.string, trainable=False, name="fallback_ids")
    self.fallback_scores = tf.Variable(np.asarray(fallback_scores, np.float32)[:self.k],
                                       trainable=False, name="fallback_scores")
    self.cooccurrence_weight = float(cooccurrence_weight) if neighbours is not None else 0.0
    if self.cooccurrence_weight:
      self.neighbour_product = NeighbourProduct(neighbours)
    self.index_kind = index_kind
    if index_kind == "scann":
      from tfrec_music.export.retrieval import make_scann_index  # pylint: disable=g-import-not-at-top
      self.fetch_k = min(self.n_items, self.k + int(max_seeds))
      candidates = np.concatenate([track_vectors, np.asarray(track_bias)[:, None]], axis=1)
      self.index = make_scann_index(candidates.astype(np.float32), ids, self.fetch_k)
    elif index_kind not in (None, "exact"):
      raise ValueError("`index_kind` should be 'exact', 'scann' or None. "
                       f"Received: `index_kind` = {index_kind!r}.")

    seeds_spec = tf.TensorSpec([None, None], tf.string, name="seeds")
    name_spec = tf.TensorSpec([None], tf.string, name="name")

    @tf.function(input_signature=[seeds_spec, name_spec])
    def serve(seeds, name):
      return self._continue(seeds, name)

    @tf.function(input_signature=[seeds_spec])
    def serve_seeds(seeds):
      return self._continue(seeds, tf.fill([tf.shape(seeds)[0]], ""))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64),
                                  tf.TensorSpec([None], tf.string)])
    def query(seed_index, names):
      return self._query(seed_index, names)

    self.serve = serve
    self.serve_seeds = serve_seeds
    self.query = query

  # ---------------------------------------------------------------- fold-in
  def _seed_terms(self, seed_index: tf.Tensor):
    mask = tf.cast(seed_index >= 0, tf.float32)
    count = tf.reduce_sum(mask, axis=1, keepdims=True)
    safe = tf.maximum(seed_index, 0)
    weight = mask / tf.maximum(count, 1.0)
    scale = 1.0 / tf.maximum(count, 1.0) if self.l2_per_seed else tf.ones_like(count)
    ridge = self.ridge[tf.newaxis, :] * scale + 1e-6
    return tf.gather(self.tracks, safe), tf.gather(self.track_bias, safe), weight, count, ridge

  def objective(self, theta: tf.Tensor, seed_index: tf.Tensor,
                prior: Optional[tf.Tensor] = None) -> tf.Tensor:
    """[B] fold-in objective of playlist vectors theta [B, d + 1] given seed indices [B, L]."""
    x_pos, b_pos, w_pos, _, ridge = self._seed_terms(seed_index)
    return self._objective(theta, x_pos, b_pos, w_pos,
                           tf.zeros_like(theta) if prior is None else prior, ridge)

  def _objective(self, theta, x_pos, b_pos, w_pos, prior, ridge):
    s_pos = tf.einsum("bld,bd->bl", x_pos, theta) + b_pos
    s_neg = tf.matmul(theta, self.negative_tracks, transpose_b=True) + self.negative_bias
    r = theta - prior
    penalty = 0.5 * tf.reduce_sum(ridge * r * r, axis=-1)
    if self.loss == "softmax":
      return tf.reduce_logsumexp(s_neg, axis=-1) - tf.reduce_sum(w_pos * s_pos, -1) + penalty
    return (self.positive_share * tf.reduce_sum(w_pos * tf.math.softplus(-s_pos), -1)
            + tf.reduce_sum(self.negative_weight * tf.math.softplus(s_neg), -1) + penalty)

  def _newton_step(self, theta, x_pos, b_pos, w_pos, prior, ridge):
    x_neg = self.negative_tracks
    s_neg = tf.matmul(theta, x_neg, transpose_b=True) + self.negative_bias
    if self.loss == "softmax":
      p = tf.nn.softmax(s_neg, axis=-1)
      mean = tf.matmul(p, x_neg)
      grad = mean - tf.einsum("bl,bld->bd", w_pos, x_pos)
      hessian = (tf.einsum("bm,md,me->bde", p, x_neg, x_neg)
                 - mean[:, :, tf.newaxis] * mean[:, tf.newaxis, :])
    else:
      s_pos = tf.einsum("bld,bd->bl", x_pos, theta) + b_pos
      sig_pos, sig_neg = tf.sigmoid(s_pos), tf.sigmoid(s_neg)
      w = w_pos * self.positive_share
      grad = (tf.einsum("bl,bld->bd", w * (sig_pos - 1.0), x_pos)
              + tf.matmul(self.negative_weight * sig_neg, x_neg))
      hessian = (tf.einsum("bl,bld,ble->bde", w * sig_pos * (1.0 - sig_pos), x_pos, x_pos)
                 + tf.einsum("bm,md,me->bde", self.negative_weight * sig_neg * (1.0 - sig_neg),
                             x_neg, x_neg))
    grad = grad + ridge * (theta - prior)
    hessian = hessian + tf.linalg.diag(ridge)
    return tf.linalg.solve(hessian, grad[:, :, tf.newaxis])[:, :, 0]

  def fold_in(self, seed_index: tf.Tensor, prior: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Solves theta = [p, b_p] [B, d + 1] from seed indices [B, L] (-1 = padding).

    Args:
      seed_index: [B, L] catalogue indices, -1 for padding.
      prior: [B, d + 1] centre of the L2 pull (default zeros): the penalty is
        l2 |p - prior_p|^2, so a playlist's name vector can serve as the
        prior its few seeds update.

    Returns:
      [B, d + 1]; rows without seeds come back as zeros.
    """
    x_pos, b_pos, w_pos, count, ridge = self._seed_terms(seed_index)
    theta = tf.zeros([tf.shape(seed_index)[0], self.dim + 1])
    if prior is None:
      prior = theta
    # Newton starts at zero, where the Hessian is well conditioned; each step
    # is damped to the step size (of STEP_SIZES, or none) that lowers the
    # objective most, so large vectors cannot make it overshoot.
    value = self._objective(theta, x_pos, b_pos, w_pos, prior, ridge)
    for _ in range(self.fold_in_steps):
      step = self._newton_step(theta, x_pos, b_pos, w_pos, prior, ridge)
      best, best_value = theta, value
      for size in STEP_SIZES:
        candidate = theta - size * step
        candidate_value = self._objective(candidate, x_pos, b_pos, w_pos, prior, ridge)
        better = candidate_value < best_value
        best = tf.where(better[:, tf.newaxis], candidate, best)
        best_value = tf.where(better, candidate_value, best_value)
      theta, value = best, best_value
    return theta * tf.cast(count > 0, tf.float32)

  def name_theta(self, names: tf.Tensor):
    """Name-token model: (theta [B, d + 1], has_name [B] bool)."""
    tokens = name_tokens(names)
    rows = tf.ragged.map_flat_values(self.token_table.lookup, tokens)
    weights = tf.ragged.map_flat_values(tf.gather, self.token_weights, rows)
    vectors = tf.ragged.map_flat_values(tf.gather, self.token_vectors, rows)
    total = tf.reduce_sum(weights, axis=1)
    summed = tf.reduce_sum(vectors * weights[:, :, tf.newaxis], axis=1)
    summed = summed.to_tensor() if isinstance(summed, tf.RaggedTensor) else summed
    summed = tf.reshape(summed, [-1, self.dim + 1])
    has_name = total > 0
    return summed / tf.maximum(total, 1e-12)[:, tf.newaxis], has_name

  def _query(self, seed_index, names):
    """theta [B, d + 1] and mode [B] (0 fallback, 1 seeds, 2 name) of each playlist."""
    has_seeds = tf.reduce_any(seed_index >= 0, axis=1)
    theta_name, has_name = self.name_theta(names)
    prior = theta_name * tf.cast(has_name, tf.float32)[:, tf.newaxis] if self.name_prior else None
    theta_seeds = self.fold_in(seed_index, prior)
    theta = tf.where(has_seeds[:, tf.newaxis], theta_seeds, theta_name)
    mode = tf.where(has_seeds, 1, tf.where(has_name, 2, 0))
    return {"theta": theta, "mode": mode}

  # ---------------------------------------------------------------- serving
  def cooccurrence(self, seed_index: tf.Tensor) -> tf.Tensor:
    """[B, n_items] mean over the seeds (indices [B, L], -1 padding) of their neighbours' sims."""
    valid = seed_index >= 0
    count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32), axis=1), 1.0)
    rows = tf.where(valid)[:, 0]
    return self.neighbour_product(rows, tf.boolean_mask(seed_index, valid),
                                  tf.gather(1.0 / count, rows),
                                  tf.shape(seed_index, out_type=tf.int64)[0])

  def _continue(self, seeds, name):
    seed_index = self.item_table.lookup(seeds)
    query = self._query(seed_index, name)
    theta, mode = query["theta"], query["mode"]
    p, b_p = theta[:, :self.dim], theta[:, self.dim]
    batch = tf.shape(seeds)[0]
    if self.index_kind == "scann":
      query_vectors = tf.concat([p, tf.ones([batch, 1])], axis=1)
      scores, ids = self.index(query_vectors, k=self.fetch_k)
      if self.cooccurrence_weight:
        fetched = tf.maximum(self.item_table.lookup(ids), 0)
        scores = scores + self.cooccurrence_weight * tf.gather(
            self.cooccurrence(seed_index), fetched, batch_dims=1)
      hit = tf.reduce_any(tf.equal(ids[:, :, tf.newaxis], seeds[:, tf.newaxis, :]), axis=2)
      scores = tf.where(hit, tf.constant(-np.inf, scores.dtype), scores)
      top_scores, top = tf.math.top_k(scores, k=self.k)
      top_ids = tf.gather(ids, top, batch_dims=1)
    else:
      scores = tf.matmul(theta, self.tracks, transpose_b=True) + self.track_bias - b_p[:, None]
      if self.cooccurrence_weight:
        scores = scores + self.cooccurrence_weight * self.cooccurrence(seed_index)
      rows = tf.broadcast_to(tf.range(batch, dtype=tf.int64)[:, tf.newaxis], tf.shape(seed_index))
      valid = seed_index >= 0
      where = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(seed_index, valid)], axis=1)
      scores = tf.tensor_scatter_nd_update(
          scores, where, tf.fill([tf.shape(where)[0]], tf.constant(-np.inf, tf.float32)))
      top_scores, top = tf.math.top_k(scores, k=self.k)
      top_ids = tf.gather(self.item_ids, top)
    empty = tf.math.is_inf(top_scores)
    top_ids = tf.where(empty, tf.constant("", tf.string), top_ids)
    top_scores = tf.where(empty, tf.constant(EMPTY_SCORE, tf.float32),
                          top_scores + b_p[:, tf.newaxis])
    fallback = tf.equal(mode, 0)
    use = fallback[:, tf.newaxis]
    return {
        "item_ids": tf.where(use, tf.tile(self.fallback_ids[tf.newaxis], [batch, 1]), top_ids),
        "scores": tf.where(use, tf.tile(self.fallback_scores[tf.newaxis], [batch, 1]),
                           top_scores),
        "fallback": fallback}

  def signatures(self) -> Dict[str, Any]:
    """`serving_default(seeds, name)` and `continue_seeds(seeds)`."""
    return {"serving_default": self.serve, "continue_seeds": self.serve_seeds}


def save_continuation(module: PlaylistContinuation, directory: str) -> None:
  """Saves a serving module; ScaNN ones need the `Scann` op namespace whitelisted."""
  save_module(module, directory, signatures=module.signatures(),
              scann_ops=module.index_kind == "scann")
