"""Playlist continuation by biased matrix factorization (`--model playlist_mf`).

The recommender idea: a playlist and a track each get a vector and a bias;
the chance that the track belongs in the playlist is

    P(track in playlist) = sigmoid(dot(p, t) + b_p + b_t),

trained with binary cross-entropy on the playlists' tracks (label 1) and
`negatives` sampled tracks per positive (label 0), drawn uniformly or by
popularity (training count ** `popularity_exponent`), with an L2 penalty on
the vectors of each example. A track's vector and bias are its own plus
those of its artist and album (`item_features`), so tracks seen in few
playlists borrow strength from their artist's other tracks.

Playlists never seen in training are *folded in*: with the track side frozen,
the playlist's vector and bias are the minimizer of the same per-playlist
objective as in training, its seed tracks as positives and the expected
sampled negatives,

    f(p, b) = 1/(1+k) [ mean_seeds BCE(1, s) + k * sum_j q_j BCE(0, s_j) ] + l2 |p|^2,

solved by a few batched Newton steps in TensorFlow (the same function in the
library and in the exported model). The expectation over q runs over the
whole catalogue up to `fold_in_negatives` tracks, and over a fixed weighted
sample of that size beyond. The fold-in has its own L2 weight (`fold_in_l2`):
a handful of seeds needs a stronger pull than training's many examples, and
the weight is chosen on validation tracks. With `name_prior`, the pull is
toward the name's vector instead of zero.

Name-only playlists (K = 0) use the playlist name: every name token (lower
case, split on anything but letters and digits) gets the mean [vector, bias]
of the training playlists whose names hold it, shrunk toward the mean of all
playlists (`name_shrinkage` pseudo-playlists); a name is the idf-weighted
mean of its known tokens. A playlist with neither known seeds nor a known
name token gets the popularity ranking (`fallback`).

Serving fallbacks of the export (`serving_default(seeds [B, L], name [B])`,
`continue_seeds(seeds)`; tested in `tests/test_serving_fallbacks_playlist.py`):
- unknown seed ids and `""` padding are ignored; a row whose seeds are all
  unknown, empty, or absent (a [B, 0] tensor) is served from its name, and
  with no known name token either (or `continue_seeds`, which has no name)
  gets the popularity ranking with `fallback = True`;
- seeds never come back, duplicated or not (the ScaNN variant honours up to
  `max_seeds` of them);
- `k` (`top_k`) above the catalogue is clamped to the catalogue at export;
  slots left once the seeds are removed come back as id `""` with score
  `EMPTY_SCORE` (the lowest float32), always after the real results;
- identical rows in one batch get identical outputs.
"""

import argparse
import dataclasses
import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music import io
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables
from tfrec_music.evaluation.playlist import DEFAULT_KS
from tfrec_music.evaluation.playlist import PlaylistQueries
from tfrec_music.evaluation.playlist import evaluate_playlist_scorer
from tfrec_music.evaluation.playlist import evaluate_playlists
from tfrec_music.evaluation.playlist import evaluate_validation
from tfrec_music.evaluation.playlist import held_out_playlists
from tfrec_music.evaluation.playlist import playlist_names
from tfrec_music.evaluation.playlist import seen_queries
from tfrec_music.evaluation.playlist import unseen_tail_queries
from tfrec_music.evaluation.rating import binary_metrics
from tfrec_music.export.projector import write_item_projector
from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.playlist_baselines import playlist_baselines
from tfrec_music.pipeline.dataset import make_dataset
from tfrec_music.prepare.prepared import PreparedData

SAMPLING = ("uniform", "popularity")
ITEM_FEATURES = ("artist", "album")


@dataclasses.dataclass(frozen=True)
class PlaylistMFConfig:
  """Playlist MF hyperparameters.

  Attributes:
    embedding_dim: Size of playlist and track vectors.
    negatives: Sampled negative tracks per positive (k).
    negative_sampling: `"uniform"` or `"popularity"` (training count **
      `popularity_exponent`, plus one so every track can be drawn).
    popularity_exponent: Flattens the popularity distribution of negatives.
    l2: Weight of the per-example penalty `|p|^2 + |t|^2` (biases are free;
      with `item_features` every part of the track vector is penalized).
      1e-3 maximized the validation objective among 1e-4, 1e-3, 3e-3, 1e-2.
    item_features: Item columns (`artist`, `album`) whose shared vector and
      bias are added to each track's own: t_j = e_j + e_artist(j) + e_album(j),
      so sparse tracks borrow strength from their artist and album. Empty:
      plain biased MF.
    fold_in_l2: L2 weight of the fold-in objective (None: `l2`). Few seeds
      fit a playlist vector less reliably than training does, so the fold-in
      needs a stronger pull toward zero. 0.1 maximized the validation
      objective (`valid/seen_refit/r_precision`) on the default synthetic
      playlists among 0.001 .. 1.0.
    learning_rate: Adam learning rate.
    epochs: Most training epochs (early stopping may stop sooner).
    batch_size: Positives per batch (each with `negatives` negatives).
    init_stddev: Standard deviation of the initial vectors.
    early_stopping_patience: Epochs without validation NDCG gain before stopping.
    fold_in_steps: Newton steps of the fold-in.
    fold_in_negatives: Negatives of the fold-in objective: the whole catalogue
      (weighted by the sampling distribution) up to this size, a fixed sample
      of this size beyond.
    name_min_count: Training playlists a name token needs to be kept.
    name_shrinkage: Pseudo-playlists pulling rare tokens to the mean playlist.
    name_prior: With seeds and a known name token, fold the seeds in around
      the name's vector (the L2 pull's centre) instead of around zero.
    max_seeds: Seeds the ScaNN export can exclude (it fetches `top_k +
      max_seeds` results); the exact export excludes every seed.
    top_k: Results per request in the export (clamped to the catalogue).
    seed: Initialization, sampling and shuffling seed.
  """

  embedding_dim: int = 32
  negatives: int = 4
  negative_sampling: str = "uniform"
  popularity_exponent: float = 0.75
  l2: float = 1e-3
  item_features: Tuple[str, ...] = ("artist", "album")
  fold_in_l2: Optional[float] = 0.1
  learning_rate: float = 0.01
  epochs: int = 40
  batch_size: int = 1024
  init_stddev: float = 0.1
  early_stopping_patience: int = 4
  fold_in_steps: int = 8
  fold_in_negatives: int = 4096
  name_min_count: int = 2
  name_shrinkage: float = 2.0
  name_prior: bool = False
  max_seeds: int = 250
  top_k: int = 100
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"negative_sampling": SAMPLING})
    check_ints(self, ("embedding_dim", "negatives", "epochs", "batch_size", "fold_in_steps",
                      "fold_in_negatives", "name_min_count", "top_k", "early_stopping_patience"))
    check_numbers(self, ("l2", "name_shrinkage", "popularity_exponent", "init_stddev"))
    check_numbers(self, ("learning_rate",), positive=True)
    if isinstance(self.item_features, str) or not all(
        f in ITEM_FEATURES for f in self.item_features):
      raise ValueError(f"`item_features` should be a list drawn from {ITEM_FEATURES}. "
                       f"Received: `item_features` = {self.item_features!r}.")
    object.__setattr__(self, "item_features", tuple(self.item_features))
    if self.fold_in_l2 is not None and (not isinstance(self.fold_in_l2, (int, float))
                                        or self.fold_in_l2 < 0):
      raise ValueError("`fold_in_l2` should be a non-negative number or None. "
                       f"Received: `fold_in_l2` = {self.fold_in_l2!r}.")
    if self.max_seeds < 0:
      raise ValueError(f"`max_seeds` should be >= 0. Received: `max_seeds` = {self.max_seeds!r}.")


def negative_distribution(item_train_counts: np.ndarray, sampling: str,
                          exponent: float = 0.75) -> np.ndarray:
  """[n_items] probability of drawing each track as a negative.

  Args:
    item_train_counts: [n_items] training positives per track.
    sampling: `"uniform"` or `"popularity"` ((count + 1) ** exponent).
    exponent: Popularity exponent.
  """
  counts = np.asarray(item_train_counts, np.float64)
  if sampling == "uniform":
    weights = np.ones_like(counts)
  else:
    weights = (counts + 1.0) ** exponent
  return weights / weights.sum()


class PlaylistMFModel(tfrs.Model):
  """Training model: playlist and track vectors and biases, BCE with sampled negatives.

  Args:
    n_playlists: Training playlists (indices 0..n-1).
    n_items: Catalogue tracks (catalogue indices).
    negative_probability: [n_items] sampling distribution of negatives.
    config: `PlaylistMFConfig`.
    item_groups: Feature name -> [n_items] group code of each track (-1: none);
      each group has a vector and a bias added to its tracks' own.
  """

  def __init__(self, n_playlists: int, n_items: int, negative_probability: np.ndarray,
               config: PlaylistMFConfig,
               item_groups: Optional[Dict[str, np.ndarray]] = None):
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
    self.group_names = sorted(item_groups or {})
    self.group_codes, self.group_vectors, self.group_bias = [], [], []
    for i, name in enumerate(self.group_names):
      codes = np.asarray(item_groups[name], np.int64)
      n_groups = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 0
      # Row n_groups is the "no group" row: it is masked out, never trained.
      self.group_codes.append(tf.constant(np.where(codes >= 0, codes, n_groups)))
      self.group_vectors.append(tf.keras.layers.Embedding(
          n_groups + 1, d, name=f"{name}_vectors",
          embeddings_initializer=tf.keras.initializers.RandomNormal(
              stddev=config.init_stddev, seed=config.seed + 2 + i)))
      self.group_bias.append(tf.keras.layers.Embedding(n_groups + 1, 1, name=f"{name}_bias",
                                                       embeddings_initializer="zeros"))
    self.group_mask = [tf.constant((np.asarray(item_groups[n]) >= 0).astype(np.float32))
                       for n in self.group_names]
    self.uniform = config.negative_sampling == "uniform"
    self.negative_logits = tf.constant(np.log(np.maximum(negative_probability, 1e-30))
                                       [np.newaxis, :].astype(np.float32))
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.BinaryAccuracy(threshold=0.0, name="binary_accuracy")])

  def track(self, item: tf.Tensor):
    """Track vectors [N, d] and biases [N] of track indices [N], and the L2 penalty [N]."""
    t = self.track_embedding(item)
    bias = tf.squeeze(self.track_bias(item), -1)
    penalty = tf.reduce_sum(t * t, -1)
    for codes, mask, vectors, biases in zip(self.group_codes, self.group_mask,
                                            self.group_vectors, self.group_bias):
      code = tf.gather(codes, item)
      m = tf.gather(mask, item)
      g = vectors(code) * m[:, tf.newaxis]
      t = t + g
      bias = bias + tf.squeeze(biases(code), -1) * m
      penalty = penalty + tf.reduce_sum(g * g, -1)
    return t, bias, penalty

  def track_table(self):
    """(vectors [n_items, d], bias [n_items]) of the whole catalogue."""
    t, bias, _ = self.track(tf.range(self.n_items, dtype=tf.int64))
    return t.numpy(), bias.numpy()

  def logits(self, playlist: tf.Tensor, item: tf.Tensor):
    """Logits of (playlist index [N], track index [N]) pairs, and the L2 penalty [N]."""
    p = self.playlist_embedding(playlist)
    t, t_bias, t_penalty = self.track(item)
    logit = (tf.reduce_sum(p * t, axis=-1) + tf.squeeze(self.playlist_bias(playlist), -1)
             + t_bias)
    return logit, tf.reduce_sum(p * p, -1) + t_penalty

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """BCE over a batch of positives (`playlist`, `item` [B]) and k negatives each."""
    playlist, item = inputs["playlist"], inputs["item"]
    k = self.config.negatives
    b = tf.shape(playlist)[0]
    if self.uniform:
      negatives = tf.random.uniform([b * k], 0, self.n_items, dtype=tf.int64)
    else:
      negatives = tf.random.categorical(self.negative_logits, b * k, dtype=tf.int64)[0]
    playlists = tf.concat([playlist, tf.repeat(playlist, k)], axis=0)
    items = tf.concat([item, negatives], axis=0)
    labels = tf.concat([tf.ones([b]), tf.zeros([b * k])], axis=0)
    logit, penalty = self.logits(playlists, items)
    loss = self.task(labels=labels, predictions=logit, compute_metrics=not training)
    return loss + self.config.l2 * tf.reduce_mean(penalty)


NAME_TOKEN_PATTERN = r"[^\p{L}\p{N}]+"


def name_tokens(names: tf.Tensor) -> tf.RaggedTensor:
  """Playlist names [B] -> ragged tokens [B, None]: lower case, split on non-alphanumerics."""
  text = tf.strings.lower(names, encoding="utf-8")
  text = tf.strings.regex_replace(text, NAME_TOKEN_PATTERN, " ")
  return tf.strings.split(tf.strings.strip(text))


class PlaylistContinuation(tf.Module):
  """Seeds (and a name) -> folded-in playlist vector -> top-k continuation.

  The same module scores playlists in the library's evaluation and serves in
  the export. Track vectors are augmented with a constant 1, so a playlist is
  one vector theta = [p, b_p] and its score for track j is
  theta . [t_j, 1] + b_j.

  Args:
    item_ids: [n_items] catalogue ids.
    track_vectors: [n_items, d].
    track_bias: [n_items].
    negative_index: [M] catalogue indices of the fold-in negatives.
    negative_weight: [M] their weights (sum 1).
    negatives: k of the training objective.
    l2: L2 weight of the training objective.
    fold_in_steps: Newton steps.
    tokens: [V] name tokens; token_vectors [V, d + 1] and token_weights [V].
    fallback_ids / fallback_scores: [k] popularity ranking.
    k: Results per request (clamped to the catalogue).
    index_kind: `"exact"` or `"scann"` (None: scoring only, no serving index).
    max_seeds: Seeds the ScaNN variant can exclude.
    name_prior: Fold seeds in around the name's vector instead of zero.
  """

  def __init__(self, item_ids: np.ndarray, track_vectors: np.ndarray, track_bias: np.ndarray,
               negative_index: np.ndarray, negative_weight: np.ndarray, negatives: int,
               l2: float, fold_in_steps: int, tokens: Sequence[str],
               token_vectors: np.ndarray, token_weights: np.ndarray,
               fallback_ids: np.ndarray, fallback_scores: np.ndarray, k: int,
               index_kind: Optional[str] = None, max_seeds: int = 250,
               name_prior: bool = False):
    super().__init__()
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
    self.negative_bias = tf.Variable(np.asarray(track_bias, np.float32)[neg_index],
                                     trainable=False, name="negative_bias")
    k_neg = float(negatives)
    # Per-playlist objective weights: positives share 1/(1+k), negatives k/(1+k).
    self.negative_weight = tf.Variable(
        (np.asarray(negative_weight, np.float64) * k_neg / (1.0 + k_neg)).astype(np.float32),
        trainable=False, name="negative_weight")
    self.positive_share = tf.constant(1.0 / (1.0 + k_neg), tf.float32)
    # The bias gets a tiny ridge so the Newton system is always solvable.
    self.ridge = tf.constant(np.concatenate([np.full(d, 2.0 * l2), [1e-6]]).astype(np.float32)
                             + 1e-6)
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
    mask = tf.cast(seed_index >= 0, tf.float32)
    count = tf.reduce_sum(mask, axis=1, keepdims=True)
    safe = tf.maximum(seed_index, 0)
    x_pos = tf.gather(self.tracks, safe)
    b_pos = tf.gather(self.track_bias, safe)
    w_pos = mask / tf.maximum(count, 1.0) * self.positive_share
    x_neg, b_neg, w_neg = self.negative_tracks, self.negative_bias, self.negative_weight
    theta = tf.zeros([tf.shape(seed_index)[0], self.dim + 1])
    if prior is None:
      prior = theta
    # Newton starts at zero, where every sigmoid is 1/2 and the Hessian well
    # conditioned; a start at a far prior saturates them and overshoots.
    ridge = tf.linalg.diag(self.ridge)
    for _ in range(self.fold_in_steps):
      s_pos = tf.einsum("bld,bd->bl", x_pos, theta) + b_pos
      s_neg = tf.matmul(theta, x_neg, transpose_b=True) + b_neg
      sig_pos, sig_neg = tf.sigmoid(s_pos), tf.sigmoid(s_neg)
      grad = (tf.einsum("bl,bld->bd", w_pos * (sig_pos - 1.0), x_pos)
              + tf.matmul(w_neg * sig_neg, x_neg) + self.ridge * (theta - prior))
      h_pos = tf.einsum("bl,bld,ble->bde", w_pos * sig_pos * (1.0 - sig_pos), x_pos, x_pos)
      h_neg = tf.einsum("bm,md,me->bde", w_neg * sig_neg * (1.0 - sig_neg), x_neg, x_neg)
      step = tf.linalg.solve(h_pos + h_neg + ridge, grad[:, :, tf.newaxis])[:, :, 0]
      theta = theta - step
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
  def _continue(self, seeds, name):
    seed_index = self.item_table.lookup(seeds)
    query = self._query(seed_index, name)
    theta, mode = query["theta"], query["mode"]
    p, b_p = theta[:, :self.dim], theta[:, self.dim]
    batch = tf.shape(seeds)[0]
    if self.index_kind == "scann":
      query_vectors = tf.concat([p, tf.ones([batch, 1])], axis=1)
      scores, ids = self.index(query_vectors, k=self.fetch_k)
      hit = tf.reduce_any(tf.equal(ids[:, :, tf.newaxis], seeds[:, tf.newaxis, :]), axis=2)
      scores = tf.where(hit, tf.constant(-np.inf, scores.dtype), scores)
      top_scores, top = tf.math.top_k(scores, k=self.k)
      top_ids = tf.gather(ids, top, batch_dims=1)
    else:
      scores = tf.matmul(theta, self.tracks, transpose_b=True) + self.track_bias - b_p[:, None]
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


def pad_indices(seeds: Sequence[np.ndarray]) -> np.ndarray:
  """[B] index arrays -> [B, L] int64 padded with -1 (L >= 1)."""
  width = max([len(s) for s in seeds] + [1])
  out = np.full((len(seeds), width), -1, np.int64)
  for row, s in enumerate(seeds):
    out[row, :len(s)] = s
  return out


class PlaylistMFFamily(ModelFamily):
  """Biased MF playlist continuation plugged into the training pipeline."""

  name = "playlist_mf"
  config_class = PlaylistMFConfig
  table_keys = ("test/k0/r_precision", "test/k1/r_precision", "test/k5/r_precision",
                "test/k10/r_precision", "test/k25/r_precision", "test/k5/ndcg",
                "test/k5/clicks", "test/seen/r_precision", "test/unseen/r_precision",
                "test/seen/binary_accuracy")
  # Held-out playlists are the prepared cold users: 20% of playlists are
  # kept out of training and continued from their first K tracks.
  prepare_overrides = {"cold_user_share": 0.2}
  # Tuning maximizes R-precision of validation tracks with the playlist
  # vector folded in from its training tracks (what serving does). The
  # `valid/k<K>` slices ask the same of the first K tracks only, but with one
  # target each they count about 4x fewer hits, hence noisier.
  objective = ("valid/seen_refit/r_precision", "max")

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """`tiny` trains in seconds for tests; `default` is the measured setting."""
    return {"tiny": {"embedding_dim": 16, "epochs": 8, "batch_size": 256, "top_k": 20,
                     "fold_in_negatives": 1024},
            "default": {}}

  @classmethod
  def search_space(cls, hp) -> Dict[str, Any]:
    """Vector size, L2 (training and fold-in), negatives per positive, learning rate."""
    return {"embedding_dim": hp.Choice("embedding_dim", [16, 32, 64]),
            "l2": hp.Float("l2", 1e-5, 1e-2, sampling="log"),
            "fold_in_l2": hp.Float("fold_in_l2", 1e-3, 1.0, sampling="log"),
            "negatives": hp.Choice("negatives", [2, 4, 8, 16]),
            "learning_rate": hp.Float("learning_rate", 1e-3, 3e-2, sampling="log")}

  def validation_metrics(self) -> Dict[str, float]:
    """Validation-split metrics only: `valid/{seen,seen_refit,k1,k5,k10}/<metric>`."""
    return evaluate_validation(self.scorer, self.prepared)

  @classmethod
  def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
    """`--negatives`, `--negative-sampling`, `--l2` (the common flags cover the rest)."""
    group.add_argument("--negatives", type=int, default=None,
                       help="playlist_mf: sampled negative tracks per positive.")
    group.add_argument("--negative-sampling", choices=SAMPLING, default=None,
                       help="playlist_mf: negatives drawn uniformly or by popularity.")
    group.add_argument("--l2", type=float, default=None,
                       help="playlist_mf: L2 weight on playlist and track vectors.")

  @classmethod
  def select_tables(cls, loaded: Any, config: Any) -> Tables:
    """Playlist-track rows as interactions (playlists are the users).

    Synthetic data: built from `loaded.playlists` (user_id := playlist_id,
    timestamp := position, a users table with the playlist `name`). Other
    sources (the MPD loader) already have playlists as users.
    """
    del config
    playlists = getattr(loaded, "playlists", None)
    if playlists is None or len(playlists) == 0:
      return loaded.tables
    frame = playlists.sort_values(["playlist_id", "pos"], kind="stable")
    interactions = pd.DataFrame({"user_id": frame["playlist_id"].astype(str).to_numpy(),
                                 "item_id": frame["item_id"].astype(str).to_numpy(),
                                 "timestamp": frame["pos"].astype(np.int64).to_numpy()})
    first = frame.drop_duplicates("playlist_id")
    users = pd.DataFrame({"user_id": first["playlist_id"].astype(str).to_numpy(),
                          "name": first["name"].fillna("").astype(str).to_numpy()})
    name = f"{loaded.tables.name}-playlists"
    tables = Tables(interactions=interactions, items=loaded.tables.items, users=users,
                    sources={"interactions": f"{name}/playlists", "items": f"{name}/items",
                             "users": f"{name}/playlists"}, name=name)
    return validate_tables(tables, report=DataReport())

  def __init__(self, config: PlaylistMFConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    tf.keras.utils.set_random_seed(config.seed)
    self.playlist_ids = np.asarray(prepared.vocabularies["user_id"]).astype(str)
    self.playlist_index = pd.Index(self.playlist_ids)
    self.negative_probability = negative_distribution(
        prepared.item_train_counts, config.negative_sampling, config.popularity_exponent)
    self.model = PlaylistMFModel(len(self.playlist_ids), prepared.n_items,
                                 self.negative_probability, config, self.item_groups())
    self.model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    self._module: Optional[PlaylistContinuation] = None
    self.name_model: Dict[str, Any] = {}
    self.fit_summary: Dict[str, Any] = {}

  def item_groups(self) -> Dict[str, np.ndarray]:
    """`item_features` -> [n_items] group codes (-1: no value); absent columns are skipped.

    Albums are grouped by (artist, album): titles such as "Greatest Hits"
    repeat across artists.
    """
    items = self.prepared.items
    out = {}
    for name in self.config.item_features:
      if name not in items.columns:
        logging.info("playlist_mf: the items have no `%s` column; not used.", name)
        continue
      labels = items[name].fillna("").astype(str)
      if name == "album" and "artist" in items.columns:
        labels = labels.where(labels == "", items["artist"].fillna("").astype(str) + "\x1f"
                              + labels)
      codes, _ = pd.factorize(labels.where(labels != "", None), use_na_sentinel=True)
      out[name] = codes.astype(np.int64)
    return out

  # ---------------------------------------------------------------- training
  def training_features(self) -> Dict[str, np.ndarray]:
    """Training positives: playlist index and track (catalogue) index."""
    train = self.prepared.train
    return {"playlist": self.playlist_index.get_indexer(train["user_id"].astype(str))
                        .astype(np.int64),
            "item": self.prepared.item_index(train["item_id"]).astype(np.int64)}

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with early stopping on validation NDCG (seen playlists), keeping the best weights.

    Runs through `tfrec_music.fit_loop.fit_with_validation`: a checkpoint
    every `checkpoint_every` steps (or epoch) in `backup_dir`, so a killed run
    rerun with the same command resumes there; a non-finite loss stops with
    advice and keeps the last good checkpoint. NDCG over the 500
    recommendations rather than R-precision decides: each validation playlist
    holds out one track, so its R-precision is a hit at rank 1, too noisy to
    stop on.
    """
    config = self.config
    features = self.training_features()
    if len(features["item"]) == 0:
      raise ValueError("No training playlist rows: lower `--kcore` or give more playlists.")
    dataset = make_dataset(features, config.batch_size, shuffle=True, seed=config.seed)
    log_dir = io.join(job_dir, "logs", self.name)
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")
    valid = seen_queries(self.prepared, "valid")

    def validate(epoch: int) -> float:
      self._module = None
      if not len(valid):
        return float(epoch)  # nothing to validate on: each epoch is a gain, the last is kept
      return float(evaluate_playlist_scorer(self._learned_scorer, valid, self.prepared.n_items)
                   ["ndcg"])

    summary = fit_with_validation(
        self.model, dataset, epochs=config.epochs, validate=validate,
        patience=config.early_stopping_patience, job_dir=job_dir, name=self.name,
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, data=self.prepared.fingerprint),
        callbacks=[tensorboard], metric_name="valid_ndcg",
        nan_advice="Lower the learning rate (`--learning-rate`) or raise `--l2`.")
    self._module = None
    if not len(valid):
      summary["best_valid_ndcg"] = float("nan")
      for row in summary["history"]:
        row["valid_ndcg"] = float("nan")
    summary["name_tokens"] = len(self.module().token_weights.numpy()) - 1
    self.fit_summary = summary
    write_item_projector(io.join(job_dir, "logs", "projector"), self.track_arrays()[0],
                         self.prepared.items)
    return self.fit_summary

  # ---------------------------------------------------------------- vectors
  def track_arrays(self):
    """(vectors [n_items, d], bias [n_items]) of the catalogue.

    A track vector is its own plus its artist's and album's (`item_features`).
    Tracks with no training positive were never pulled toward a playlist:
    they get a zero vector and the lowest trained bias, so they rank last
    rather than by their random initialization.
    """
    vectors, bias = self.model.track_table()
    untrained = self.prepared.item_train_counts == 0
    if untrained.any() and (~untrained).any():
      vectors[untrained] = 0.0
      bias[untrained] = bias[~untrained].min()
    return vectors, bias

  def playlist_arrays(self):
    """(vectors [P, d], bias [P]) of the training playlists (vocabulary order)."""
    return (self.model.playlist_embedding.embeddings.numpy(),
            self.model.playlist_bias.embeddings.numpy()[:, 0])

  def _fold_in_negatives(self):
    n = self.prepared.n_items
    q = self.negative_probability
    if n <= self.config.fold_in_negatives:
      return np.arange(n), q
    rng = np.random.default_rng([self.config.seed, 17])
    index = rng.choice(n, size=self.config.fold_in_negatives, replace=True, p=q)
    return index, np.full(len(index), 1.0 / len(index))

  def _name_model(self, theta: np.ndarray):
    """Token -> shrunk mean [p, b_p] of training playlists with the token, and idf weights."""
    names = playlist_names(self.prepared)
    if not names or not len(theta):
      return [], np.zeros((0, theta.shape[1])), np.zeros(0)
    playlist_names_arr = np.array([names.get(p, "") for p in self.playlist_ids], dtype=object)
    tokens = name_tokens(tf.constant(playlist_names_arr.astype(str), tf.string)).to_list()
    rows, toks = [], []
    for row, row_tokens in enumerate(tokens):
      for tok in set(t.decode("utf-8") for t in row_tokens):
        rows.append(row)
        toks.append(tok)
    if not toks:
      return [], np.zeros((0, theta.shape[1])), np.zeros(0)
    codes, vocab = pd.factorize(pd.Series(toks))
    df = np.bincount(codes, minlength=len(vocab)).astype(np.float64)
    sums = np.zeros((len(vocab), theta.shape[1]))
    np.add.at(sums, codes, theta[np.asarray(rows)])
    alpha = self.config.name_shrinkage
    mean = theta.mean(axis=0)
    vectors = (sums + alpha * mean) / (df + alpha)[:, None]
    idf = np.log((1.0 + len(theta)) / (1.0 + df)) + 1.0
    keep = df >= self.config.name_min_count
    return list(np.asarray(vocab)[keep]), vectors[keep], idf[keep]

  def fold_in_l2(self) -> float:
    """L2 weight of the fold-in objective (`fold_in_l2`, or `l2` when unset)."""
    return float(self.config.l2 if self.config.fold_in_l2 is None else self.config.fold_in_l2)

  def module(self, index_kind: Optional[str] = None) -> PlaylistContinuation:
    """The fold-in / serving module over the current weights (cached for scoring)."""
    if index_kind is None and self._module is not None:
      return self._module
    from tfrec_music.models.popularity import PopularityModel  # pylint: disable=g-import-not-at-top
    vectors, bias = self.track_arrays()
    p, b_p = self.playlist_arrays()
    tokens, token_vectors, token_weights = self._name_model(np.concatenate([p, b_p[:, None]], 1))
    neg_index, neg_weight = self._fold_in_negatives()
    k = min(self.config.top_k, self.prepared.n_items)
    fallback_ids, fallback_scores = PopularityModel.fit(self.prepared).top_k(k)
    module = PlaylistContinuation(
        self.prepared.item_ids, vectors, bias, neg_index, neg_weight, self.config.negatives,
        self.fold_in_l2(), self.config.fold_in_steps, tokens, token_vectors, token_weights,
        fallback_ids, fallback_scores, k, index_kind=index_kind,
        max_seeds=self.config.max_seeds, name_prior=self.config.name_prior)
    if index_kind is None:
      self._module = module
    return module

  # ---------------------------------------------------------------- scoring
  def theta(self, queries: PlaylistQueries) -> np.ndarray:
    """[B, d + 1] playlist [vector, bias]: learned for trained playlists of a
    `learned` query set, folded in (or from the name) otherwise; zeros for the
    fallback rows (see `mode`)."""
    theta, _ = self._theta_and_mode(queries)
    return theta

  def _theta_and_mode(self, queries: PlaylistQueries):
    module = self.module()
    out = module.query(tf.constant(pad_indices(queries.seeds)),
                       tf.constant(np.asarray(queries.names).astype(str), tf.string))
    theta, mode = out["theta"].numpy(), out["mode"].numpy()
    if queries.learned:
      rows = self.playlist_index.get_indexer(np.asarray(queries.playlist_ids).astype(str))
      known = rows >= 0
      p, b_p = self.playlist_arrays()
      theta[known] = np.concatenate([p, b_p[:, None]], 1)[rows[known]]
      mode[known] = 1
    return theta, mode

  def _learned_scorer(self, queries: PlaylistQueries) -> np.ndarray:
    # Scores with the current training weights, without building the module.
    p, b_p = self.playlist_arrays()
    vectors, bias = self.track_arrays()
    rows = self.playlist_index.get_indexer(np.asarray(queries.playlist_ids).astype(str))
    return p[rows] @ vectors.T + bias + b_p[rows, None]

  def scorer(self, queries: PlaylistQueries) -> np.ndarray:
    """`PlaylistScorer`: [B, n_items] logits (popularity for fallback rows)."""
    theta, mode = self._theta_and_mode(queries)
    vectors, bias = self.track_arrays()
    scores = theta[:, :-1] @ vectors.T + bias + theta[:, -1:]
    fallback = mode == 0
    if fallback.any():
      scores[fallback] = np.log1p(self.prepared.item_train_counts.astype(np.float64))
    return scores

  def score_fn(self):
    """Scorer factory: the playlist scorer for every split."""
    return lambda split: self.scorer

  # ---------------------------------------------------------------- evaluation
  def binary_accuracy(self, queries: PlaylistQueries, seed: int = 0) -> Dict[str, float]:
    """Binary accuracy, AUC and log loss on held-out positives plus k sampled negatives each."""
    if not len(queries):
      return {}
    theta, _ = self._theta_and_mode(queries)
    vectors, bias = self.track_arrays()
    rng = np.random.default_rng([self.config.seed, seed, 29])
    k = self.config.negatives
    rows, items, labels = [], [], []
    for row, target in enumerate(queries.targets):
      negatives = rng.choice(self.prepared.n_items, size=k * len(target), p=self.negative_probability)
      rows.append(np.full(len(target) * (1 + k), row))
      items.append(np.concatenate([target, negatives]))
      labels.append(np.concatenate([np.ones(len(target)), np.zeros(len(negatives))]))
    rows, items, labels = map(np.concatenate, (rows, items, labels))
    logits = np.einsum("nd,nd->n", theta[rows, :-1], vectors[items]) + bias[items] + theta[rows, -1]
    result = binary_metrics(labels, 1.0 / (1.0 + np.exp(-logits)))
    return {"binary_accuracy": result["accuracy"], "auc": result["auc"],
            "log_loss": result["log_loss"]}

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """The K-seed protocol for the model, the baselines and (synthetic) the oracle."""
    prepared = self.prepared
    scorers = {"model": self.scorer}
    scorers.update(playlist_baselines(prepared.items, prepared.item_train_counts))
    oracle = getattr(context, "oracle", None)
    if oracle is not None:
      known = set(np.asarray(getattr(oracle, "playlist_ids", [])).astype(str))
      users = set(prepared.train["user_id"].astype(str)) | set(
          prepared.cold_user_test["user_id"].astype(str))
      if users and users <= known:
        item_ids = prepared.item_ids

        def oracle_scorer(queries: PlaylistQueries) -> np.ndarray:
          return oracle.scores(np.asarray(queries.playlist_ids).astype(str), item_ids)
        scorers["oracle"] = oracle_scorer
    metrics = {}
    for name, scorer in scorers.items():
      metrics[name] = evaluate_playlists(scorer, prepared, DEFAULT_KS, split="test")
      logging.info("playlist_mf evaluated %s", name)
    seen = seen_queries(prepared, "test")
    unseen = unseen_tail_queries(held_out_playlists(prepared), 2, playlist_names(prepared))
    for slice_name, queries in (("seen", seen), ("unseen", unseen)):
      for key, value in self.binary_accuracy(queries).items():
        metrics["model"][f"test/{slice_name}/{key}"] = value
    # The validation metrics too, so the run reports its tuning objective.
    metrics["model"].update(self.validation_metrics())
    return metrics

  # ---------------------------------------------------------------- export
  def save(self, directory: str) -> Dict[str, str]:
    """Exact SavedModel, ScaNN variant and the track vectors (with bias) for external indices."""
    from tfrec_music.export.retrieval import save_candidates  # pylint: disable=g-import-not-at-top
    if self.config.top_k > self.prepared.n_items:
      logging.warning("top_k=%d is larger than the catalogue (%d tracks): serving %d.",
                      self.config.top_k, self.prepared.n_items, self.prepared.n_items)
    save_continuation(self.module("exact"), directory)
    save_continuation(self.module("scann"), io.join(directory, "scann"))
    vectors, bias = self.track_arrays()
    items = self.prepared.items
    metadata = {c: items[c].fillna("").astype(str).to_numpy()
                for c in ("title", "artist") if c in items.columns}
    save_candidates(io.join(directory, "candidates"), self.prepared.item_ids,
                    np.concatenate([vectors, bias[:, None]], axis=1), metadata)
    return {
        "serving_default": "seeds [B, L] track ids (padded with ''), name [B] ('' = none) "
                           "-> item_ids [B, k], scores [B, k] (logits), fallback [B]",
        "continue_seeds": "seeds [B, L] -> the same, without a name",
        "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
        "candidates/": "item_ids.txt, embeddings.npy ([n, d + 1]: track vector, then bias), "
                       "metadata.tsv"}


def save_continuation(module: PlaylistContinuation, directory: str) -> None:
  """Saves a serving module; ScaNN ones need the `Scann` op namespace whitelisted."""
  options = (tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
             if module.index_kind == "scann" else None)
  tf.saved_model.save(module, directory, signatures=module.signatures(), options=options)
