"""Playlist MF plugged into the training pipeline: tables, fit, scoring, evaluation, export."""

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables
from tfrec_music.evaluation.playlist import DEFAULT_KS
from tfrec_music.evaluation.playlist import N_RECOMMENDATIONS
from tfrec_music.evaluation.playlist import PlaylistQueries
from tfrec_music.evaluation.playlist import challenge_metrics
from tfrec_music.evaluation.playlist import evaluate_playlist_scorer
from tfrec_music.evaluation.playlist import evaluate_playlists
from tfrec_music.evaluation.playlist import evaluate_validation
from tfrec_music.evaluation.playlist import held_out_playlists
from tfrec_music.evaluation.playlist import playlist_names
from tfrec_music.evaluation.playlist import rank_with_exclusions
from tfrec_music.evaluation.playlist import seen_queries
from tfrec_music.evaluation.playlist import unseen_tail_queries
from tfrec_music.evaluation.playlist import validation_queries
from tfrec_music.evaluation.rating import binary_metrics
from tfrec_music.export.projector import write_item_projector
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.item_item import user_item_matrix
from tfrec_music.models.neighbours import cosine_neighbours
from tfrec_music.models.neighbours import neighbour_matrix
from tfrec_music.models.playlist_baselines import playlist_baselines
from tfrec_music.models.playlist_mf import config as config_lib
from tfrec_music.models.playlist_mf import cooccurrence
from tfrec_music.models.playlist_mf.config import PlaylistMFConfig
from tfrec_music.models.playlist_mf.network import PlaylistMFModel
from tfrec_music.models.playlist_mf.network import negative_distribution
from tfrec_music.models.playlist_mf.serving import PlaylistContinuation
from tfrec_music.models.playlist_mf.serving import save_continuation
from tfrec_music.models.playlist_mf.tokens import pad_indices
from tfrec_music.models.playlist_mf.tokens import tag_codes
from tfrec_music.models.playlist_mf.tokens import token_codes
from tfrec_music.optimizers import AveragedAdam
from tfrec_music.optimizers import averaging
from tfrec_music.pipeline.dataset import make_dataset
from tfrec_music.prepare.prepared import PreparedData


class PlaylistMFFamily(ModelFamily):
  """Playlist continuation by matrix factorization with name and track content."""

  name = "playlist_mf"
  config_class = PlaylistMFConfig
  config_module = config_lib
  table_keys = ("test/k0/r_precision", "test/k1/r_precision", "test/k5/r_precision",
                "test/k10/r_precision", "test/k25/r_precision", "test/k5/ndcg",
                "test/k5/clicks", "test/seen/r_precision", "test/unseen/r_precision",
                "test/seen/auc")
  # Held-out playlists are the prepared cold users: 20% of playlists are
  # kept out of training and continued from their first K tracks.
  prepare_overrides = {"cold_user_share": 0.2}
  # Tuning maximizes R-precision of validation tracks with the playlist
  # vector folded in from its training tracks (what serving does). The
  # `valid/k<K>` slices ask the same of the first K tracks only, but with one
  # target each they count about 4x fewer hits, hence noisier.
  objective = ("valid/seen_refit/r_precision", "max")




  def validation_metrics(self) -> Dict[str, float]:
    """Validation-split metrics only: `valid/{seen,seen_refit,k1,k5,k10}/<metric>`."""
    return evaluate_validation(self.scorer, self.prepared)

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
    self.name_vocabulary, name_bag = [], None
    names = playlist_names(prepared)
    if config.name_features and names:
      codes, self.name_vocabulary = token_codes([names.get(p, "") for p in self.playlist_ids],
                                                config.name_min_count)
      name_bag = (codes, len(self.name_vocabulary)) if self.name_vocabulary else None
    self.model = PlaylistMFModel(len(self.playlist_ids), prepared.n_items,
                                 self.negative_probability, config, self.item_bags(), name_bag)
    steps = -(-len(prepared.train) // config.batch_size)
    self.model.compile(optimizer=AveragedAdam(config.learning_rate,
                                              **averaging(config.average_epochs, steps)))
    self._module: Optional[PlaylistContinuation] = None
    self.fit_summary: Dict[str, Any] = {}
    # Binary playlists x tracks of the training rows (rows: `train_index`), the column
    # norms of its cosines, and each track's neighbours when a weight can be above 0.
    self.train_index, self.train_matrix = user_item_matrix(prepared, prepared.train, "binary")
    self.track_norms = np.sqrt(np.asarray(self.train_matrix.sum(axis=0), np.float64).ravel())
    k = config.cooccurrence_neighbours
    self.neighbour_csr = (neighbour_matrix(*cosine_neighbours(self.train_matrix, k), k)
                          if any(config.cooccurrence_weights) else None)
    # The co-occurrence weight in use: the configured one until `fit` chooses among several.
    self.cooccurrence_weight = float(config.cooccurrence_weights[-1]
                                     if len(config.cooccurrence_weights) == 1 else 0.0)

  def item_bags(self) -> Dict[str, Tuple[np.ndarray, int]]:
    """`item_features` -> ([n_items, L] codes, -1 for none; vocabulary size).

    Absent columns are skipped. Albums are grouped by (artist, album): titles
    such as "Greatest Hits" repeat across artists. Title words and tags (a
    list-valued column) are kept when `title_min_count` tracks hold them.
    """
    items = self.prepared.items
    out = {}
    for name in self.config.item_features:
      if name not in items.columns:
        logging.info("playlist_mf: the items have no `%s` column; not used.", name)
        continue
      if name == "tags":
        codes, vocab = tag_codes(items[name].to_numpy(), self.config.title_min_count)
        if vocab:
          out[name] = (codes, len(vocab))
        continue
      labels = items[name].fillna("").astype(str)
      if name == "title":
        codes, vocab = token_codes(labels.to_numpy(), self.config.title_min_count)
        if vocab:
          out[name] = (codes, len(vocab))
        continue
      if name == "album" and "artist" in items.columns:
        labels = labels.where(labels == "", items["artist"].fillna("").astype(str) + "\x1f"
                              + labels)
      codes, uniques = pd.factorize(labels.where(labels != "", None), use_na_sentinel=True)
      if len(uniques):
        out[name] = (codes.astype(np.int64)[:, np.newaxis], len(uniques))
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
    summary["name_tokens"] = len(self.name_vocabulary)
    summary.update(self.choose_cooccurrence_weight())
    self.fit_summary = summary
    write_item_projector(io.join(job_dir, "logs", "projector"), self.track_arrays()[0],
                         self.prepared.items)
    return self.fit_summary

  def choose_cooccurrence_weight(self) -> Dict[str, Any]:
    """Keeps the `cooccurrence_weights` value with the best mean validation NDCG.

    The mean is over the 1-, 5- and 10-seed validation slices (the first K
    training tracks of trained playlists as seeds, the validation track as
    target: the K-seed question of the test, asked of validation data); each
    batch is folded in once and ranked under every weight. A single
    configured value is kept as it is.

    Returns:
      `cooccurrence_weight` and, when there was a choice, the validation NDCG
      of each weight (`cooccurrence_selection`); the metrics' model row gets
      them as `select/cooccurrence_weight=<w>/valid/ndcg` and
      `select/chosen_cooccurrence_weight`.
    """
    weights = self.config.cooccurrence_weights
    if len(weights) == 1:
      return {"cooccurrence_weight": self.cooccurrence_weight}
    slices = [q for name, q in validation_queries(self.prepared).items()
              if name.startswith("k") and len(q)]
    sums, count = np.zeros(len(weights)), 0
    for queries in slices:
      for start in range(0, len(queries), 256):
        part = queries.take(start, start + 256)
        logits, cooc = self.score_parts(part)
        for i, weight in enumerate(weights):
          ranked = rank_with_exclusions(logits + weight * cooc, part.seeds, N_RECOMMENDATIONS)
          sums[i] += challenge_metrics(ranked, part.targets)["ndcg"].sum() / len(queries)
      count += 1
    ndcg = sums / max(count, 1)
    self.cooccurrence_weight = float(weights[int(np.argmax(ndcg))]) if count else 0.0
    self._module = None
    return {"cooccurrence_weight": self.cooccurrence_weight,
            "cooccurrence_selection": {f"{w:g}": round(float(v), 5)
                                       for w, v in zip(weights, ndcg)}}

  # ---------------------------------------------------------------- vectors
  def track_arrays(self):
    """(vectors [n_items, d], bias [n_items]) of the catalogue.

    A track vector is its own plus its content's (`item_features`: artist,
    album, title words, tags, genre). A track with no training positive was
    only ever a negative, so its own vector and bias say nothing: it keeps its
    content part, and its own bias is the lowest of the trained tracks', so it
    ranks by what its content says, below a trained twin.
    """
    vectors, bias = self.model.track_table()
    untrained = self.prepared.item_train_counts == 0
    if untrained.any() and (~untrained).any():
      content, content_bias = self.model.track_table(content_only=True)
      own_bias = bias - content_bias
      vectors[untrained] = content[untrained]
      bias[untrained] = content_bias[untrained] + own_bias[~untrained].min()
    return vectors, bias

  def playlist_arrays(self):
    """(vectors [P, d], bias [P]) of the training playlists (vocabulary order), name included."""
    return self.model.playlist_table(len(self.playlist_ids))

  def _fold_in_negatives(self):
    """(catalogue indices [M], weights [M]) of the fold-in objective's negative part.

    The whole catalogue up to `fold_in_negatives` tracks, a fixed sample by
    the sampling distribution q beyond; the weights are the expectation's
    (BCE: q, or 1/M for the sample) or the partition function's (softmax: 1,
    or 1 / (M q_j) for the sample).
    """
    n = self.prepared.n_items
    q = self.negative_probability
    softmax = self.config.loss == "softmax"
    if n <= self.config.fold_in_negatives:
      return np.arange(n), (np.ones(n) if softmax else q)
    m = self.config.fold_in_negatives
    index = np.random.default_rng([self.config.seed, 17]).choice(n, size=m, replace=True, p=q)
    return index, (1.0 / (m * q[index]) if softmax else np.full(m, 1.0 / m))

  def fold_in_l2(self) -> float:
    """L2 weight of the fold-in objective (`fold_in_l2`, or `l2` when unset)."""
    return float(self.config.l2 if self.config.fold_in_l2 is None else self.config.fold_in_l2)

  def module(self, index_kind: Optional[str] = None) -> PlaylistContinuation:
    """The fold-in / serving module over the current weights (cached for scoring)."""
    if index_kind is None and self._module is not None:
      return self._module
    from tfrec_music.models.popularity import PopularityModel  # pylint: disable=g-import-not-at-top
    vectors, bias = self.track_arrays()
    bag = self.model.name_bag
    tokens = self.name_vocabulary if bag is not None else []
    token_vectors = bag.table() if bag is not None else np.zeros((0, vectors.shape[1] + 1))
    neg_index, neg_weight = self._fold_in_negatives()
    k = min(self.config.top_k, self.prepared.n_items)
    fallback_ids, fallback_scores = PopularityModel.fit(self.prepared).top_k(k)
    module = PlaylistContinuation(
        self.prepared.item_ids, vectors, bias, neg_index, neg_weight, self.config.negatives,
        self.fold_in_l2(), self.config.fold_in_steps, tokens, token_vectors,
        np.ones(len(tokens)), fallback_ids, fallback_scores, k, index_kind=index_kind,
        max_seeds=self.config.max_seeds, name_prior=self.config.name_prior,
        loss=self.config.loss, l2_per_seed=self.config.l2_per_seed,
        neighbours=self.neighbour_csr, cooccurrence_weight=self.cooccurrence_weight)
    if index_kind is None:
      self._module = module
    return module

  # ---------------------------------------------------------------- scoring
  def theta(self, queries: PlaylistQueries) -> np.ndarray:
    """[B, d + 1] playlist [vector, bias]: learned for trained playlists of a
    `learned` query set, folded in (or from the name) otherwise; zeros for the
    fallback rows."""
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
    """`PlaylistScorer`: [B, n_items] logits plus the weighted co-occurrence term
    (popularity for fallback rows)."""
    logits, cooc, mode = self._score_parts(queries)
    scores = logits + self.cooccurrence_weight * cooc if self.cooccurrence_weight else logits
    fallback = mode == 0
    if fallback.any():
      scores[fallback] = np.log1p(self.prepared.item_train_counts.astype(np.float64))
    return scores

  def score_parts(self, queries: PlaylistQueries) -> Tuple[np.ndarray, np.ndarray]:
    """([B, n_items] logits, [B, n_items] co-occurrence term) of `queries`.

    The co-occurrence term is the mean over the seeds of their neighbours'
    similarities, without the share a trained playlist's own row put in them
    (`cooccurrence.own_share`): a validation question scores as a new
    playlist would. Zeros when the term is off.
    """
    logits, cooc, _ = self._score_parts(queries)
    return logits, cooc

  def _score_parts(self, queries: PlaylistQueries):
    theta, mode = self._theta_and_mode(queries)
    vectors, bias = self.track_arrays()
    logits = theta[:, :-1] @ vectors.T + bias + theta[:, -1:]
    if self.neighbour_csr is None:
      return logits, np.zeros_like(logits), mode
    seeds = [np.asarray(s, np.int64) for s in queries.seeds]
    cooc = cooccurrence.cooccurrence_scores(seeds, self.neighbour_csr)
    rows = self.train_index.get_indexer(np.asarray(queries.playlist_ids).astype(str))
    if (rows >= 0).any():
      own = self.train_matrix[np.maximum(rows, 0)].multiply((rows >= 0)[:, None]).tocsr()
      cooc -= cooccurrence.own_share(seeds, own, self.neighbour_csr, self.track_norms)
    return logits, cooc, mode

  def score_fn(self):
    """Scorer factory: the playlist scorer for every split."""
    return lambda split: self.scorer

  # ---------------------------------------------------------------- evaluation
  def binary_accuracy(self, queries: PlaylistQueries, seed: int = 0) -> Dict[str, float]:
    """Held-out positives against `negatives` sampled tracks each: AUC (and, for `bce`,
    accuracy and log loss of the sigmoid).

    A softmax model's logits hold an arbitrary per-playlist constant, so its
    tracks are compared by their probability among the catalogue's, and only
    the AUC (a ranking measure) is reported.
    """
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
    if self.config.loss == "softmax":
      all_logits = theta[:, :-1] @ vectors.T + bias
      top = all_logits.max(axis=1, keepdims=True)
      log_z = (top + np.log(np.exp(all_logits - top).sum(axis=1, keepdims=True)))[:, 0]
      probability = np.exp(logits - theta[rows, -1] - log_z[rows])
      return {"auc": binary_metrics(labels, probability)["auc"]}
    result = binary_metrics(labels, 1.0 / (1.0 + np.exp(-logits)))
    return {"binary_accuracy": result["accuracy"], "auc": result["auc"],
            "log_loss": result["log_loss"]}

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """The K-seed protocol (test) and the validation slices for the model, the baselines
    and (synthetic) the oracle."""
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
    selection = self.fit_summary.get("cooccurrence_selection", {})
    choice = {f"select/cooccurrence_weight={w}/valid/ndcg": v for w, v in selection.items()}
    choice["select/chosen_cooccurrence_weight"] = self.cooccurrence_weight
    for name, scorer in scorers.items():
      metrics[name] = evaluate_playlists(scorer, prepared, DEFAULT_KS, split="test")
      # The validation slices too: the model reports its tuning objective, and the
      # baselines and the oracle give its validation figures their scale.
      metrics[name].update(evaluate_validation(scorer, prepared))
      logging.info("playlist_mf evaluated %s", name)
    metrics["model"].update(choice)
    seen = seen_queries(prepared, "test")
    unseen = unseen_tail_queries(held_out_playlists(prepared), 2, playlist_names(prepared))
    for slice_name, queries in (("seen", seen), ("unseen", unseen)):
      for key, value in self.binary_accuracy(queries).items():
        metrics["model"][f"test/{slice_name}/{key}"] = value
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

