"""`TasteMLPFamily`: the taste MLP plugged into the training pipeline."""

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.export.saved_model import save_module
from tfrec_music.data.tables import AUDIO_FEATURES
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.evaluation.protocol import fixed_scorer
from tfrec_music.evaluation.rating import binary_metrics
from tfrec_music.evaluation.similarity import pair_auc
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.taste_mlp import config as config_lib
from tfrec_music.models.taste_mlp.config import TASTE_TABLE_KEYS
from tfrec_music.models.taste_mlp.config import TasteMLPConfig
from tfrec_music.models.taste_mlp.network import TasteMLPModel
from tfrec_music.models.taste_mlp.network import TasteScorer
from tfrec_music.models.taste_mlp.serving import TasteServingModule
from tfrec_music.models.track_vectors import text_track_vectors
from tfrec_music.models.user_similarity import SimilarityIndex
from tfrec_music.prepare.prepared import PreparedData


def least_similar_users(index: SimilarityIndex, chunk: int = 1024) -> np.ndarray:
  """[U] row of each user's least similar other user (lowest score)."""
  out = np.zeros(len(index), np.int64)
  for start in range(0, len(index), chunk):
    scores = index.scores(index.vectors[start:start + chunk])
    rows = np.arange(start, min(start + chunk, len(index)))
    scores[rows - start, rows] = np.inf
    out[rows] = np.argmin(scores, axis=1)
  return out


class TasteMLPFamily(ModelFamily):
  """The taste MLP plugged into the training pipeline."""

  name = "taste_mlp"
  config_class = TasteMLPConfig
  config_module = config_lib
  table_keys = TASTE_TABLE_KEYS
  prepare_overrides = {"cold_user_share": 0.0}
  objective = ("valid/all/auc", "max")




  def __init__(self, config: TasteMLPConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    train = prepared.train
    self.audio_columns = tuple(c for c in AUDIO_FEATURES if c in prepared.items.columns)
    text = text_track_vectors(prepared, config.word_vectors, config.word_dim,
                              config.text_columns, seed=config.seed)
    self.text_source = text.source
    self.track_table = self._track_table(text.vectors)
    self.user_ids = np.asarray(sorted(train["user_id"].astype(str).unique()), dtype=object)
    self.user_position = pd.Index(self.user_ids)
    self.train_users = self.user_position.get_indexer(train["user_id"].astype(str))
    self.train_items = prepared.item_index(train["item_id"]).astype(np.int64)
    dim = self.track_table.shape[1]
    self.user_sums = np.zeros((len(self.user_ids), dim), np.float64)
    np.add.at(self.user_sums, self.train_users, self.track_table[self.train_items])
    self.user_counts = np.bincount(self.train_users, minlength=len(self.user_ids)).astype(np.float64)
    self.centroids = (self.user_sums / np.maximum(self.user_counts, 1)[:, None]).astype(np.float32)
    # User row -> item indices never drawn as negatives. Training negatives avoid
    # the training rows only (later plays are the future); evaluation negatives
    # avoid every split's positives (the evaluation knows its labels).
    self.train_known = _known_items(self.user_position, prepared, (prepared.train,))
    self.known = _known_items(self.user_position, prepared,
                              (prepared.train, prepared.valid, prepared.test))
    self.user_tracks = pd.Series(self.train_items).groupby(self.train_users).apply(np.asarray)
    self.anti = (least_similar_users(SimilarityIndex(self.user_ids, self.centroids))
                 if config.negatives == "least_similar" else None)
    tf.keras.utils.set_random_seed(config.seed)
    self.scorer = TasteScorer(config.hidden_size, config.weight_decay, name="taste_scorer")
    self.model = TasteMLPModel(self.scorer, self.track_table, self.user_sums, self.user_counts)
    self.model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    self.fit_summary: Dict[str, Any] = {}
    self._eval_rows: Dict[str, Dict[str, np.ndarray]] = {}

  def _track_table(self, text_vectors: np.ndarray) -> np.ndarray:
    """[n_items, F]: standardized audio features (missing -> mean) and the text vector."""
    parts = []
    if self.audio_columns:
      train_items = np.unique(self.prepared.item_index(self.prepared.train["item_id"]))
      audio = self.prepared.items[list(self.audio_columns)].to_numpy(np.float64)
      mean = np.nanmean(audio[train_items], axis=0)
      std = np.nanstd(audio[train_items], axis=0)
      audio = np.where(np.isnan(audio), mean, audio)
      parts.append((audio - mean) / np.where(std > 1e-6, std, 1.0))
    # Text dimensions at unit RMS, like the standardized audio columns.
    parts.append(text_vectors / max(float(np.sqrt(np.mean(text_vectors ** 2))), 1e-12))
    return np.concatenate(parts, axis=1).astype(np.float32)

  # ----------------------------------------------------------------- sampling
  def _negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One negative track per entry of `users` (rows), never one of the user's training tracks."""
    n_items = self.prepared.n_items
    neg = rng.integers(0, n_items, size=len(users))
    if self.anti is not None:
      for u, rows in pd.Series(np.arange(len(users))).groupby(users):
        pool = self.user_tracks.get(int(self.anti[u]))
        if pool is not None and len(pool):
          neg[rows.to_numpy()] = pool[rng.integers(0, len(pool), size=len(rows))]
    for _ in range(5):  # resample the user's own tracks (rare) at random
      hit = np.fromiter((i in self.train_known.get(int(u), ()) for u, i in zip(users, neg)),
                        bool, len(neg))
      if not hit.any():
        break
      neg[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    return neg

  def training_rows(self, epoch: int) -> Dict[str, np.ndarray]:
    """Positives (leave-one-out centroids) plus fresh negatives for one epoch."""
    rng = np.random.default_rng([self.config.seed, epoch])
    k = self.config.negatives_per_positive
    neg_users = np.repeat(self.train_users, k)
    neg_items = self._negatives(neg_users, rng)
    n_pos = len(self.train_users)
    return {"user": np.concatenate([self.train_users, neg_users]).astype(np.int64),
            "item": np.concatenate([self.train_items, neg_items]).astype(np.int64),
            "leave_out": np.concatenate([np.ones(n_pos), np.zeros(len(neg_users))]).astype(np.float32),
            "label": np.concatenate([np.ones(n_pos), np.zeros(len(neg_users))]).astype(np.float32)}

  def eval_rows(self, split: str) -> Dict[str, np.ndarray]:
    """Held-out positives of `split` and `eval_negatives` random unplayed tracks each (cached)."""
    if split not in self._eval_rows:
      frame = getattr(self.prepared, split)
      users = self.user_position.get_indexer(frame["user_id"].astype(str))
      items = self.prepared.item_index(frame["item_id"])
      keep = (users >= 0) & (items >= 0)
      users, items = users[keep], items[keep]
      rng = np.random.default_rng([self.config.seed, 7919, len(split)])
      k = self.config.eval_negatives
      neg_users = np.repeat(users, k)
      neg = rng.integers(0, self.prepared.n_items, size=len(neg_users))
      for _ in range(10):
        hit = np.fromiter((i in self.known.get(int(u), ()) for u, i in zip(neg_users, neg)),
                          bool, len(neg))
        if not hit.any():
          break
        neg[hit] = rng.integers(0, self.prepared.n_items, size=int(hit.sum()))
      self._eval_rows[split] = {
          "user": np.concatenate([users, neg_users]).astype(np.int64),
          "item": np.concatenate([items, neg]).astype(np.int64),
          "leave_out": np.zeros(len(users) + len(neg), np.float32),
          "label": np.concatenate([np.ones(len(users)), np.zeros(len(neg))]).astype(np.float32)}
    return self._eval_rows[split]

  # ----------------------------------------------------------------- training
  def steps_per_epoch(self) -> int:
    """Training batches per epoch (positives plus their negatives)."""
    rows = len(self.train_users) * (1 + self.config.negatives_per_positive)
    return max(1, -(-rows // self.config.batch_size))

  def epoch_dataset(self) -> tf.data.Dataset:
    """Training batches with fresh negatives each epoch, also across a resume.

    Keras makes a new iterator for every epoch, after the previous epoch's
    steps have run (and after `BackupAndRestore` restored the counters), so
    the generator reads the epoch it serves from the optimizer's step counter:
    a run resumed in epoch e draws epoch e's negatives and shuffle, as an
    uninterrupted run does.
    """
    steps = self.steps_per_epoch()
    batch_size = self.config.batch_size
    cache: Dict[int, Dict[str, np.ndarray]] = {}
    lock = threading.Lock()

    def rows_of(epoch: int) -> Dict[str, np.ndarray]:
      with lock:
        if epoch not in cache:
          cache.clear()
          rows = self.training_rows(epoch)
          order = np.random.default_rng([self.config.seed, epoch, 1]).permutation(
              len(rows["user"]))
          cache[epoch] = {k: v[order] for k, v in rows.items()}
        return cache[epoch]

    def batches():
      epoch = int(self.model.optimizer.iterations.numpy()) // steps
      rows = rows_of(epoch)
      for start in range(0, len(rows["user"]), batch_size):
        yield {k: v[start:start + batch_size] for k, v in rows.items()}

    signature = {"user": tf.TensorSpec([None], tf.int64), "item": tf.TensorSpec([None], tf.int64),
                 "leave_out": tf.TensorSpec([None], tf.float32),
                 "label": tf.TensorSpec([None], tf.float32)}
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with early stopping on validation AUC; loss curves go to TensorBoard.

    Runs through `tfrec_music.fit_loop.fit_with_validation`: a checkpoint
    every `checkpoint_every` steps (or epoch) in `backup_dir`, so a killed run
    rerun with the same command resumes there; a non-finite loss stops with
    advice and keeps the last good checkpoint; the weights of the best
    validation AUC (exact, Mann-Whitney, on `eval_rows("valid")`) are kept.
    """
    config = self.config
    log_dir = io.join(job_dir, "logs", "taste_mlp")
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")
    writer = tf.summary.create_file_writer(io.join(log_dir, "validation"))
    has_valid = bool(len(self.eval_rows("valid")["label"]))
    extra: Dict[int, Dict[str, float]] = {}

    def validate(epoch: int) -> float:
      if not has_valid:
        return float(epoch)  # nothing to validate on: each epoch is a gain, the last is kept
      metrics = self._binary("valid")
      extra[epoch] = {"valid_loss": metrics["valid/all/log_loss"],
                      "valid_accuracy": metrics["valid/all/accuracy"]}
      with writer.as_default():
        tf.summary.scalar("epoch_loss", metrics["valid/all/log_loss"], step=epoch)
      logging.info("taste_mlp epoch %d: valid loss %.4f, valid AUC %.4f", epoch,
                   metrics["valid/all/log_loss"], metrics["valid/all/auc"])
      return float(metrics["valid/all/auc"])

    start = time.perf_counter()
    summary = fit_with_validation(
        self.model, self.epoch_dataset(), epochs=config.epochs, validate=validate,
        patience=config.early_stopping_patience, job_dir=job_dir, name=self.name,
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, data=self.prepared.fingerprint),
        callbacks=[tensorboard], metric_name="valid_auc",
        nan_advice="Lower the learning rate (`--learning-rate`) or raise `--weight-decay`.")
    for row in summary["history"]:
      row.update(extra.get(row["epoch"], {}))
      if not has_valid:
        row["valid_auc"] = float("nan")
    if not has_valid:
      summary["best_valid_auc"] = float("nan")
    summary.update({"seconds": time.perf_counter() - start, "text_vectors": self.text_source,
                    "audio_features": list(self.audio_columns),
                    "feature_dim": int(self.track_table.shape[1]),
                    "negatives": config.negatives, "log_dir": log_dir})
    self.fit_summary = summary
    return self.fit_summary

  # ----------------------------------------------------------------- scoring
  def logits(self, rows: Dict[str, np.ndarray], batch_size: int = 65536) -> np.ndarray:
    """[N] logits of encoded rows (`user`, `item`, `leave_out`)."""
    out = []
    for start in range(0, len(rows["user"]), batch_size):
      batch = {k: tf.constant(rows[k][start:start + batch_size])
               for k in ("user", "item", "leave_out")}
      out.append(self.model(batch).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

  def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """[N] probabilities that each user plays each track.

    Raises:
      ValueError: a user or track is unknown (the export serves those).
    """
    users = self.user_position.get_indexer(pd.Series(user_ids).astype(str))
    items = self.prepared.item_index(item_ids)
    if (users < 0).any() or (items < 0).any():
      raise ValueError(f"{int((users < 0).sum())} unknown users and {int((items < 0).sum())} "
                       "unknown tracks; predict takes training users and catalogue tracks.")
    rows = {"user": users.astype(np.int64), "item": items.astype(np.int64),
            "leave_out": np.zeros(len(users), np.float32)}
    return 1.0 / (1.0 + np.exp(-self.logits(rows)))

  def score_fn(self):
    """Scorer factory: every catalogue track scored for each user (centroid of training)."""
    n_items = self.prepared.n_items
    tracks = tf.constant(self.track_table)

    def _scorer(split):
      del split

      def _score(user_ids):
        rows = self.user_position.get_indexer(pd.Series(user_ids).astype(str))
        taste = np.where((rows >= 0)[:, None], self.centroids[np.maximum(rows, 0)],
                         self.centroids.mean(0))
        out = np.zeros((len(rows), n_items), np.float32)
        for b in range(len(rows)):
          repeated = tf.repeat(tf.constant(taste[b:b + 1]), n_items, axis=0)
          out[b] = self.scorer(tracks, repeated).numpy()
        return out
      return _score
    return _scorer

  # ----------------------------------------------------------------- evaluation
  def _subset(self) -> PreparedData:
    """Prepared data with the valid/test rows of at most `eval_users` users."""
    n = self.config.eval_users
    users = self.prepared.test["user_id"].astype(str).unique()
    if not n or len(users) <= n:
      return self.prepared
    keep = set(np.random.default_rng(self.config.seed).choice(users, n, replace=False).tolist())
    return dataclasses.replace(
        self.prepared, valid=self.prepared.valid[self.prepared.valid["user_id"].isin(keep)],
        test=self.prepared.test[self.prepared.test["user_id"].isin(keep)])

  def _binary(self, split: str, scores: Optional[np.ndarray] = None) -> Dict[str, float]:
    rows = self.eval_rows(split)
    label = rows["label"]
    if scores is None:
      prob = 1.0 / (1.0 + np.exp(-self.logits(rows)))
      return {f"{split}/all/{k}": v for k, v in binary_metrics(label, prob).items()}
    return {f"{split}/all/auc": pair_auc(scores[label == 1], scores[label == 0]),
            f"{split}/all/count": int(len(label))}

  def _pair_scores(self, score_fn: Callable, rows: Dict[str, np.ndarray],
                   chunk: int = 512) -> np.ndarray:
    """[N] scores of rows' (user, item) pairs from a `user ids -> [B, n_items]` scorer."""
    out = np.zeros(len(rows["user"]), np.float64)
    users = np.unique(rows["user"])
    for start in range(0, len(users), chunk):
      batch = users[start:start + chunk]
      matrix = np.asarray(score_fn(self.user_ids[batch]), np.float64)
      pick = np.isin(rows["user"], batch)
      out[pick] = matrix[np.searchsorted(batch, rows["user"][pick]), rows["item"][pick]]
    return out

  def validation_metrics(self) -> Dict[str, float]:
    """Validation AUC, log loss and accuracy (the tuning objective is `valid/all/auc`)."""
    return self._binary("valid")

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """AUC / log loss on held-out positives + random negatives, HR@10 by full ranking."""
    subset = self._subset()
    popularity = PopularityModel.fit(self.prepared)
    counts = self.prepared.item_train_counts.astype(np.float64)
    out = {"model": {}, "popularity": {}}
    for split in ("valid", "test"):
      out["model"].update(self._binary(split))
      rows = self.eval_rows(split)
      out["popularity"].update(self._binary(split, counts[rows["item"]]))
    out["model"].update(evaluate_scorer(self.score_fn(), subset, ks=(10,), cold_users=False,
                                        chunk_size=64))
    out["popularity"].update(evaluate_scorer(fixed_scorer(popularity.score_fn()), subset,
                                             ks=(10,), cold_users=False))
    oracle = getattr(context, "oracle", None)
    if oracle is not None:
      out["oracle"] = {}
      for split in ("valid", "test"):
        rows = self.eval_rows(split)
        out["oracle"].update(self._binary(split, self._pair_scores(
            oracle.score_fn(self.prepared.item_ids), rows)))
      out["oracle"].update(evaluate_scorer(fixed_scorer(oracle.score_fn(self.prepared.item_ids)),
                                           subset, ks=(10,), cold_users=False))
    for scorer in out.values():
      scorer["eval_users"] = int(subset.test["user_id"].nunique())
    return out

  # ----------------------------------------------------------------- export
  def serving_module(self) -> TasteServingModule:
    """The serving module (ids in; features and centroids stored)."""
    return TasteServingModule(self.scorer, self.user_ids, self.centroids, self.prepared.item_ids,
                              self.track_table)

  def save(self, directory: str) -> Dict[str, str]:
    """SavedModel with `serving_default` (ids) and `score_features` (raw vectors)."""
    module = self.serving_module()
    save_module(module, directory, signatures=module.signatures())
    dim = self.track_table.shape[1]
    return {"serving_default": "user_id [B], item_id [B] -> probability [B], known [B]",
            "score_features": f"track [B, {dim}], taste [B, {dim}] -> probability [B], logit [B] "
                              f"(track = standardized {list(self.audio_columns)} + text vector)"}


def _known_items(user_position: pd.Index, prepared: PreparedData,
                 frames) -> Dict[int, set]:
  """User row -> the catalogue indices of the user's items in `frames`."""
  known: Dict[int, set] = {}
  for frame in frames:
    rows = user_position.get_indexer(frame["user_id"].astype(str))
    for u, i in zip(rows, prepared.item_index(frame["item_id"])):
      if u >= 0:
        known.setdefault(int(u), set()).add(int(i))
  return known
