"""`--model als` in the training pipeline: cross-validation, fit, scoring, outputs, export."""

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.export import retrieval
from tfrec_music.models.als import config as config_lib
from tfrec_music.models.als.batch import top_n_frames
from tfrec_music.models.als.batch import write_frame
from tfrec_music.models.als.config import ALSConfig
from tfrec_music.models.als.config import EXPLICIT_PREPARE
from tfrec_music.models.als.config import RATING_TABLE_KEYS
from tfrec_music.models.als.factors import ALSFit
from tfrec_music.models.als.factors import fit_als
from tfrec_music.models.als.factors import fold_in_numpy
from tfrec_music.models.als.serving import ALSQueryModel
from tfrec_music.models.als.serving import ALSServingModule
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.family import RETRIEVAL_TABLE_KEYS
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.prepare.prepared import PreparedData


def kfold_assignment(users: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """Fold of every row, stratified by user (each user's rows spread over folds).

  Users with a single row stay in training (fold -1): their only row cannot
  be both learned from and held out.

  Args:
    users: [N] user index of each row.
    folds: Number of folds k.
    seed: Shuffle seed.

  Returns:
    [N] int fold in [0, k) or -1.
  """
  users = np.asarray(users)
  rng = np.random.default_rng(seed)
  order = np.lexsort((rng.random(len(users)), users))
  sorted_users = users[order]
  starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
  counts = np.diff(np.r_[starts, len(users)])
  position = np.arange(len(users)) - np.repeat(starts, counts)
  # Rotate each user's first fold so fold sizes stay balanced.
  offset = np.repeat(rng.integers(0, max(folds, 1), len(starts)), counts)
  fold = np.empty(len(users), np.int64)
  fold[order] = (position + offset) % max(folds, 1)
  fold[order[np.repeat(counts, counts) < 2]] = -1
  return fold


class ALSFamily(ModelFamily):
  """ALS matrix factorization plugged into the training pipeline."""

  name = "als"
  config_class = ALSConfig
  config_module = config_lib
  # Both tables' keys; the printed table shows the ones present.
  table_keys = tuple(RETRIEVAL_TABLE_KEYS) + RATING_TABLE_KEYS
  prepare_overrides: Dict[str, Any] = {}
  objective = ("valid/all/hr@10", "max")

  @classmethod
  def objective_for(cls, config: ALSConfig) -> Tuple[str, str]:
    """Explicit ratings are tuned on validation RMSE, implicit plays on HR@10."""
    if config.feedback == "explicit":
      return ("valid/all/rmse", "min")
    return ("valid/all/hr@10", "max")

  @classmethod
  def prepare_overrides_for(cls, config: ALSConfig) -> Mapping[str, Any]:
    """Explicit ratings use the ratio split; implicit plays the default leave-one-out."""
    return dict(EXPLICIT_PREPARE) if config.feedback == "explicit" else {}


  def __init__(self, config: ALSConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    self.explicit = config.feedback == "explicit"
    train = prepared.train
    if self.explicit and "rating" not in train.columns:
      raise ValueError("`--feedback explicit` needs a `rating` column in the interactions; "
                       "this data has none. Use `--feedback implicit`.")
    if len(train) == 0:
      raise ValueError("No training rows after preparation: give more data or lower `--kcore`.")
    self.user_ids = np.asarray(prepared.vocabularies["user_id"]).astype(str)
    self.user_index = pd.Index(self.user_ids)
    self.train_users = self.user_index.get_indexer(train["user_id"].astype(str))
    self.train_items = prepared.item_index(train["item_id"])
    self.train_values = self.values(train)
    if self.explicit:
      self.rating_range = (float(self.train_values.min()), float(self.train_values.max()))
    self.fit_result: Optional[ALSFit] = None
    self.cv: Dict[str, float] = {}
    self.fit_summary: Dict[str, Any] = {}
    self._vectors: Dict[str, Tuple[pd.Index, np.ndarray, np.ndarray]] = {}

  def values(self, frame: pd.DataFrame) -> np.ndarray:
    """[N] ratings (explicit) or play counts (implicit; 1 without the column)."""
    if self.explicit:
      return frame["rating"].to_numpy(np.float64)
    column = self.config.weight_column
    if column in frame.columns:
      weights = pd.to_numeric(frame[column], errors="coerce").fillna(1.0).to_numpy(np.float64)
      return np.maximum(weights, 0.0)
    return np.ones(len(frame))

  # ----------------------------------------------------------------- training
  def _fit(self, rows: np.ndarray, rank: int, reg: float, iterations: Optional[int] = None,
           callback=None) -> ALSFit:
    return fit_als(self.train_users[rows], self.train_items[rows], self.train_values[rows],
                   len(self.user_ids), self.prepared.n_items,
                   self.config.params(rank, reg, iterations), self.config.center,
                   self.config.reg_bias, callback)

  def cross_validate(self) -> Tuple[int, float, Dict[str, float]]:
    """k-fold CV over ranks x regs on the training split.

    Returns:
      (chosen rank, chosen reg, metrics: `cv/rank=R/reg=L/<metric>` per grid
      point, averaged over folds, plus `cv/folds` and the chosen values).
    """
    config = self.config
    grid = [(r, l) for r in config.ranks for l in config.regs]
    metric = "rmse" if self.explicit else "hr@10"
    if config.cv_folds < 2 or len(grid) == 1:
      rank, reg = grid[0]
      return rank, reg, {"cv/folds": 0, "cv/chosen_rank": rank, "cv/chosen_reg": reg}
    folds = kfold_assignment(self.train_users, config.cv_folds, config.seed)
    # The same lambda in fold fits and the final fit: lambda is the ratio of
    # noise to prior variance of each ridge regression, which does not depend
    # on how many ratings a row has (measured: scaling it by (k-1)/k for the
    # folds picked a worse lambda on the default catalogue).
    scores = {point: [] for point in grid}
    for fold in range(config.cv_folds):
      held = folds == fold
      train_rows = np.flatnonzero(~held)
      for rank, reg in grid:
        fit = self._fit(train_rows, rank, reg, config.cv_iterations or None)
        scores[(rank, reg)].append(self._cv_score(fit, held, fold))
        logging.info("als CV fold %d rank %d reg %g: %s %.4f", fold + 1, rank, reg, metric,
                     scores[(rank, reg)][-1])
    means = {point: float(np.mean(v)) for point, v in scores.items()}
    pick = min if self.explicit else max
    rank, reg = pick(grid, key=lambda p: means[p])
    out: Dict[str, float] = {f"cv/rank={r}/reg={l:g}/{metric}": means[(r, l)] for r, l in grid}
    out.update({"cv/folds": config.cv_folds, "cv/chosen_rank": rank, "cv/chosen_reg": reg,
                f"cv/chosen_{metric}": means[(rank, reg)]})
    return rank, reg, out

  def _cv_score(self, fit: ALSFit, held: np.ndarray, fold: int) -> float:
    users, items = self.train_users[held], self.train_items[held]
    if self.explicit:
      pred = (fit.offset + fit.user_bias[users] + fit.item_bias[items]
              + np.einsum("nk,nk->n", fit.user_factors[users], fit.item_factors[items]))
      pred = np.clip(pred, *self.rating_range)
      return float(np.sqrt(np.mean((pred - self.train_values[held]) ** 2)))
    # One held-out track per user, ranked against every track the user has
    # not interacted with in the training split (the validation protocol).
    rng = np.random.default_rng(self.config.seed * 7919 + fold)
    order = rng.permutation(len(users))
    _, first = np.unique(users[order], return_index=True)
    pick = order[first]
    q_users, targets = users[pick], items[pick]
    frame = pd.DataFrame({"u": self.train_users, "i": self.train_items})
    grouped = frame.groupby("u")["i"].apply(np.asarray)
    lists = [grouped[u][grouped[u] != t] for u, t in zip(q_users, targets)]
    indptr = np.r_[0, np.cumsum([len(x) for x in lists])].astype(np.int64)
    indices = np.concatenate(lists).astype(np.int64)

    def score(batch):
      return fit.user_factors[batch] @ fit.item_factors.T
    result = evaluate_retrieval(score, q_users, targets, n_items=self.prepared.n_items,
                                exclude=(indptr, indices), ks=(10,))
    return float(result["all/hr@10"])

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Cross-validates rank and lambda, fits on the whole training split, writes outputs."""
    start = time.perf_counter()
    rank, reg, self.cv = self.cross_validate()
    cv_seconds = time.perf_counter() - start
    writer = tf.summary.create_file_writer(io.join(job_dir, "logs", "als", "train"))
    times = []
    last = [time.perf_counter()]

    def log(iteration, loss):
      now = time.perf_counter()
      times.append(now - last[0])
      last[0] = now
      logging.info("als iteration %d: loss %.6g (%.2fs)", iteration, loss, times[-1])
      with writer.as_default():
        tf.summary.scalar("loss", loss, step=iteration)
        tf.summary.scalar("seconds_per_iteration", times[-1], step=iteration)

    self.fit_result = self._fit(np.arange(len(self.train_users)), rank, reg, callback=log)
    writer.flush()
    self._vectors = {}
    self.fit_summary = {"rank": rank, "reg": reg, "feedback": self.config.feedback,
                        "losses": self.fit_result.losses, "seconds_per_iteration": times,
                        "cv_seconds": cv_seconds, "cv": self.cv}
    if self.config.top_n > 0:
      self.write_recommendations(io.join(job_dir, "recommendations"))
    return self.fit_summary

  # ----------------------------------------------------------------- scoring
  def _histories(self, frame: pd.DataFrame, users: Sequence[str]
                 ) -> List[Tuple[np.ndarray, np.ndarray]]:
    items = self.prepared.item_index(frame["item_id"])
    values = self.values(frame)
    keep = items >= 0
    grouped: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    frame_users = frame["user_id"].astype(str).to_numpy()[keep]
    for user, rows in pd.Series(np.flatnonzero(keep)).groupby(frame_users, sort=False):
      grouped[user] = (items[rows.to_numpy()], values[rows.to_numpy()])
    empty = (np.zeros(0, np.int64), np.zeros(0))
    return [grouped.get(u, empty) for u in users]

  def test_history(self) -> pd.DataFrame:
    """The rows known at test time (training plus validation): the test split's history."""
    return pd.concat([self.prepared.train, self.prepared.valid])

  def user_vectors(self, split: str) -> Tuple[pd.Index, np.ndarray, np.ndarray]:
    """(user ids, [U, k] vectors, [U] biases) a split is scored with.

    `valid`: the trained vectors. `test`: folded in from training plus
    validation rows when `refold_test` (implicit; the history known at test
    time), the export's vectors too. `cold_user`: folded in from the
    held-out users' history.
    """
    if split in self._vectors:
      return self._vectors[split]
    fit = self.fit_result
    if split == "cold_user":
      users = pd.unique(self.prepared.cold_user_history["user_id"].astype(str))
      vectors, biases = fold_in_numpy(fit, self._histories(self.prepared.cold_user_history,
                                                           users))
      out = (pd.Index(users), vectors, biases)
    elif split == "test" and self.config.refold_test and not self.explicit:
      vectors, biases = fold_in_numpy(fit, self._histories(self.test_history(), self.user_ids))
      out = (self.user_index, vectors, biases)
    else:
      out = (self.user_index, fit.user_factors, fit.user_bias)
    self._vectors[split] = out
    return out

  def score_fn(self):
    """Scorer factory: split -> `user ids [B] -> [B, n_items]` predicted scores.

    Users without a vector (never seen, no history) get popularity scores.
    """
    fit = self.fit_result
    popularity = np.log1p(self.prepared.item_train_counts.astype(np.float32))
    popularity = 1e-3 * popularity / max(float(popularity.max()), 1.0)

    def scorer(split):
      index, vectors, biases = self.user_vectors(split)

      def score(user_ids):
        rows = index.get_indexer(pd.Series(np.asarray(user_ids)).astype(str))
        safe = np.maximum(rows, 0)
        out = vectors[safe] @ fit.item_factors.T + fit.item_bias[None, :] + biases[safe, None]
        out = out + fit.offset
        return np.where((rows >= 0)[:, None], out, popularity[None, :])
      return score
    return scorer

  def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """[N] predicted ratings (explicit, clipped) or preference scores of pairs.

    Unknown users or tracks get zero factors (and zero bias).
    """
    fit = self.fit_result
    u = self.user_index.get_indexer(pd.Series(np.asarray(user_ids)).astype(str))
    i = self.prepared.item_index(item_ids)
    x = np.where((u >= 0)[:, None], fit.user_factors[np.maximum(u, 0)], 0.0)
    y = np.where((i >= 0)[:, None], fit.item_factors[np.maximum(i, 0)], 0.0)
    out = (fit.offset + np.where(u >= 0, fit.user_bias[np.maximum(u, 0)], 0.0)
           + np.where(i >= 0, fit.item_bias[np.maximum(i, 0)], 0.0) + np.einsum("nk,nk->n", x, y))
    return np.clip(out, *self.rating_range) if self.explicit else out

  # --------------------------------------------------------------- evaluation
  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """Implicit: the retrieval protocol (model, popularity, oracle). Explicit:
    RMSE / MSE / MAE beside the global mean, biased baseline and biased MF.
    Both add the cross-validation grid and choice (`cv/...`) to the model."""
    if self.explicit:
      metrics = self._evaluate_ratings(("valid", "test"))
    else:
      metrics = super().evaluate(context)
    metrics["model"].update(self.cv)
    return metrics

  def validation_metrics(self) -> Dict[str, float]:
    """Validation-split metrics: HR@10 etc. (implicit) or RMSE (explicit)."""
    if self.explicit:
      return self._evaluate_ratings(("valid",), baselines=False)["model"]
    return super().validation_metrics()

  def _evaluate_ratings(self, splits: Sequence[str], baselines: bool = True
                        ) -> Dict[str, Dict[str, float]]:
    """RMSE / MSE / MAE by split and item slice of the model (and the rating baselines)."""
    from tfrec_music.evaluation import rating_scorers  # pylint: disable=g-import-not-at-top
    from tfrec_music.models import rating_baselines  # pylint: disable=g-import-not-at-top
    scorers = {"model": lambda f: self.predict(f["user_id"], f["item_id"])}
    if baselines:
      fits = rating_baselines.fit_rating_baselines(self.prepared.train, self.prepared.valid,
                                                   seed=self.config.seed)
      scorers.update(rating_scorers.baseline_scorers(fits, self.rating_range))
    out = rating_scorers.evaluate_rating_scorers(self.prepared, scorers, splits)
    if baselines:
      out["biased"]["chosen_reg"] = fits.chosen["biased/reg"]
      out["biased_mf"]["chosen_reg"] = fits.chosen["biased_mf/reg"]
    return out

  # ------------------------------------------------------------ batch outputs
  def write_recommendations(self, directory: str) -> Dict[str, str]:
    """Top-N tracks per training user and top-N users per track (Spark's
    `recommendForAllUsers` / `recommendForAllItems`), seen pairs left out.

    Writes `user_top_items.<fmt>` and `item_top_users.<fmt>` with columns
    (`user_id`, `item_id`, `rank` 1..N, `score`).
    """
    frames = top_n_frames(self.fit_result, self.config.top_n, self.user_ids,
                          np.asarray(self.prepared.item_ids).astype(str), self.train_users,
                          self.train_items)
    io.makedirs(directory)
    paths = {}
    for name, frame in frames.items():
      paths[name] = io.join(directory, f"{name}.{self.config.recommendations_format}")
      write_frame(frame, paths[name], self.config.recommendations_format)
    return paths

  # ------------------------------------------------------------------- export
  def serving_module(self, kind: str) -> ALSServingModule:
    """The exact (`kind="exact"`) or ScaNN serving module of the retrieval contract.

    Known users are served the vectors the test split was scored with, and
    every track of their test-time history (training plus validation rows,
    the tracks the test split excluded) is excluded.
    """
    fit = self.fit_result
    k = min(self.config.top_k, self.prepared.n_items)
    popular_ids, popular_scores = PopularityModel.fit(self.prepared).top_k(k)
    _, vectors, biases = self.user_vectors("test")
    history = self.test_history()
    users = self.user_index.get_indexer(history["user_id"].astype(str))
    items = self.prepared.item_index(history["item_id"])
    keep = (users >= 0) & (items >= 0)
    pairs = np.unique(users[keep].astype(np.int64) * self.prepared.n_items + items[keep])
    splits = np.r_[0, np.cumsum(np.bincount(pairs // self.prepared.n_items,
                                            minlength=len(self.user_ids)))]
    item_ids = np.asarray(self.prepared.item_ids).astype(str)
    query_model = ALSQueryModel(self.user_ids, fit, item_ids, vectors, biases)
    return ALSServingModule(query_model, item_ids, kind, self.user_ids,
                            (splits, pairs % self.prepared.n_items), popular_ids,
                            popular_scores, k)

  def save(self, directory: str) -> Dict[str, str]:
    """Exact-index SavedModel, its ScaNN twin and the track vectors."""
    if self.config.top_k > self.prepared.n_items:
      logging.warning("top_k=%d is larger than the catalogue (%d items): serving %d.",
                      self.config.top_k, self.prepared.n_items, self.prepared.n_items)
    for kind, path in (("exact", directory), ("scann", io.join(directory, "scann"))):
      retrieval.save_retrieval_module(self.serving_module(kind), path)
    metadata = {c: self.prepared.items[c].fillna("").astype(str).to_numpy()
                for c in ("title", "artist") if c in self.prepared.items.columns}
    item_ids = np.asarray(self.prepared.item_ids).astype(str)
    retrieval.save_candidates(io.join(directory, "candidates"), item_ids,
                              self.fit_result.item_factors, metadata)
    value = "ratings" if self.explicit else "play counts"
    return {
        "serving_default": "user_id [B] -> item_ids [B, k], scores [B, k], fallback [B] "
                           "(known users: the vectors the test split was scored with, their "
                           "training and validation tracks excluded; popularity for unknown "
                           "users)",
        "recommend": f"user_id [B], history [B, H] (track ids, padded with ''), weights [B, H] "
                     f"({value}), exclude [B, E] -> item_ids, scores, fallback (unknown users "
                     "are folded in from history and weights)",
        "fold_in": f"history [B, H], weights [B, H] ({value}) -> item_ids, scores, fallback, "
                   "user_vector [B, k] (one least-squares solve; history excluded)",
        "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
        "candidates/": "item_ids.txt, embeddings.npy (track factors), metadata.tsv"}
