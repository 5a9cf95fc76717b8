"""Alternating least squares matrix factorization (`--model als`).

The recommender idea: a user's rating of a track (explicit feedback) or the
confidence that a user likes a track (implicit feedback: play counts) is the
dot product of a user vector and a track vector. With the track vectors
fixed, each user vector is a small ridge regression with a closed-form
solution, and the other way round, so ALS alternates exact solves
(`tfrec_music.models.als_solver`: batched `tf.linalg` over the sparse
matrix, CPU / GPU / TPU alike).

- `--feedback implicit` (default): confidence-weighted least squares (Hu,
  Koren and Volinsky 2008) with c = 1 + alpha * f(play count), f = `raw` or
  `log1p` (`--weight`). Evaluated with the full-ranking retrieval protocol
  (temporal leave-one-out, the same split as two-tower) beside popularity and
  the oracle.
- `--feedback explicit`: squared error on ratings plus lambda-regularization
  (optionally scaled by each row's count: ALS-WR, `--reg-scaled`). By default
  the factors model what the biased baseline alpha + beta_u + beta_i leaves
  (`center=biases`), so r_hat = alpha + beta_u + beta_i + x_u . y_i. Split: a
  seeded 80/10/10 ratio split of the rating rows (as the DCN ranker), RMSE /
  MSE / MAE beside the global mean, the biased baseline and biased MF.

Rank and lambda are chosen by k-fold cross-validation on the training split
over the grid `--rank` x `--reg` (RMSE for explicit; HR@10 for implicit,
one held-out track per user and fold ranked against everything the user has
not played); every grid point and the chosen values go to `metrics.json`
(`cv/...` keys of the `model` scorer). The loss of every iteration is logged
and written to TensorBoard (`<job_dir>/logs/als`).

Batch outputs that users of Spark's ALS expect
(`recommendForAllUsers` / `recommendForAllItems`): top-N tracks for every
training user and top-N users for every track, as Parquet (or CSV) in
`<job_dir>/recommendations/` (tracks a user already played are left out).

New users are placed by folding in: one least-squares solve against the
fixed track vectors from their tracks and ratings / play counts (the
projection for cold start). Evaluation uses it for the held-out cold users,
and the export carries it as a signature.

Export (`saved_models/als/<version>/`, the retrieval contract): exact and
ScaNN (`scann/`) top-k over the track vectors; `serving_default(user_id)`
for known users (their training tracks are excluded; unknown users get the
popularity fallback); `recommend(user_id, history, weights, exclude)`
(known users use their trained vector, others are folded in from `history`
and `weights`); `fold_in(history, weights)` for a new user from track ids and
ratings / play counts alone (returns the folded user vector too); and
`candidates/` (track ids, vectors, metadata) for an external index.

Serving fallbacks (tested in `tests/test_serving_fallbacks_playlist.py`):
unknown or empty user ids get the popularity ranking (`fallback = True`), as
does a new user whose history holds no catalogue track (unknown history ids
and `""` padding are ignored; an empty [B, 0] history counts as none);
excluded tracks never come back, duplicated or not (unknown ones are
ignored); `k` (`top_k`) above the catalogue is clamped to it at export, and
the slots left after the exclusions come back as id `""` with score
`retrieval.EMPTY_SCORE`, after the real results; identical rows give identical outputs.
"""

import argparse
import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.export import retrieval
from tfrec_music.models.als_solver import ALSParams
from tfrec_music.models.als_solver import ALSSolver
from tfrec_music.models.als_solver import FEEDBACKS
from tfrec_music.models.als_solver import SOLVERS
from tfrec_music.models.als_solver import WEIGHT_TRANSFORMS
from tfrec_music.models.als_solver import fold_in
from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.family import RETRIEVAL_TABLE_KEYS
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.prepare.prepared import PreparedData

RATING_TABLE_KEYS = ("test/all/rmse", "test/all/mae", "test/cold/rmse", "test/warm/rmse")
CENTERS = ("biases", "mean", "none")
# Explicit feedback: a random ratio split of the rating rows, no held-out users
# (the question is how well held-out ratings of known users are predicted).
EXPLICIT_PREPARE = {"split": "ratio", "ratios": (0.8, 0.1, 0.1), "cold_user_share": 0.0}
# Grids measured on the default synthetic catalogue (validation split).
DEFAULT_RANKS = {"implicit": (32, 48, 64), "explicit": (16, 32)}
DEFAULT_REGS = {"implicit": (10.0, 30.0), "explicit": (10.0, 20.0, 30.0)}


@dataclasses.dataclass(frozen=True)
class ALSConfig:
  """ALS hyperparameters.

  Attributes:
    feedback: `implicit` (play counts -> confidence) or `explicit` (ratings).
    ranks: Candidate factor sizes; more than one (or several `regs`) runs
      k-fold cross-validation over the grid (None: (32, 48, 64) implicit,
      (16, 32) explicit).
    regs: Candidate lambdas (None: (10, 30) implicit, (10, 20, 30) explicit).
    alpha: Implicit confidence slope, c = 1 + alpha * f(weight).
    weight: Implicit weight transform f: `raw` or `log1p`.
    weight_column: Interaction column of play counts (implicit; 1 per row
      when the data has no such column).
    reg_scaled: Scale lambda by each row's number of entries (ALS-WR).
    center: Explicit only: `biases` (factors fit what alpha + beta_u + beta_i
      leaves), `mean` (ratings minus the global mean) or `none` (raw ratings,
      as Spark).
    reg_bias: L2 weight of the biases (`center=biases`).
    iterations: Alternating passes of the final fit.
    epochs: Alias of `iterations` (set by `--epochs`); wins when set.
    solver: `cholesky` (exact) or `cg` (conjugate gradient, warm-started).
    cg_steps: Conjugate-gradient steps per solve.
    cv_folds: Folds of the cross-validation (< 2: no CV, first grid values).
    cv_iterations: Passes per CV fit (0: `iterations`).
    init_scale: Standard deviation of the seeded initialization (/ sqrt(rank)).
    refold_test: Test-time user vectors are folded in from training plus
      validation interactions (the user's whole history at test time), as a
      server would do; off, the training vectors are used.
    top_k: Results per request in the export.
    top_n: Batch recommendations per user and per track (0: none written).
    recommendations_format: `parquet` or `csv`.
    serving_history: Training tracks stored per known user in the export
      (excluded from their recommendations; the most recent kept).
    seed: Initialization and cross-validation seed.
  """

  feedback: str = "implicit"
  ranks: Optional[Tuple[int, ...]] = None
  regs: Optional[Tuple[float, ...]] = None
  alpha: float = 3.0
  weight: str = "log1p"
  weight_column: str = "weight"
  reg_scaled: bool = False
  center: str = "biases"
  reg_bias: float = 5.0
  iterations: int = 10
  epochs: Optional[int] = None
  solver: str = "cholesky"
  cg_steps: int = 3
  cv_folds: int = 3
  cv_iterations: int = 0
  init_scale: float = 0.1
  refold_test: bool = True
  top_k: int = 100
  top_n: int = 10
  recommendations_format: str = "parquet"
  serving_history: int = 500
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"feedback": FEEDBACKS, "weight": WEIGHT_TRANSFORMS, "solver": SOLVERS,
                         "center": CENTERS, "recommendations_format": ("parquet", "csv")})
    ranks = DEFAULT_RANKS[self.feedback] if self.ranks is None else _as_tuple(self.ranks)
    regs = DEFAULT_REGS[self.feedback] if self.regs is None else _as_tuple(self.regs)
    if not ranks or any(not isinstance(r, (int, np.integer)) or isinstance(r, bool) or r <= 0
                        for r in ranks):
      raise ValueError(f"`ranks` should be positive integers. Received: `ranks` = {self.ranks!r}.")
    if not regs or any(not isinstance(r, (int, float, np.number)) or not r > 0 for r in regs):
      raise ValueError(f"`regs` should be positive numbers. Received: `regs` = {self.regs!r}.")
    object.__setattr__(self, "ranks", tuple(int(r) for r in ranks))
    object.__setattr__(self, "regs", tuple(float(r) for r in regs))
    if self.epochs is not None:
      object.__setattr__(self, "iterations", self.epochs)
    check_ints(self, ("iterations", "cg_steps", "top_k"))
    check_ints(self, ("cv_folds", "cv_iterations", "top_n", "serving_history"), minimum=0)
    check_numbers(self, ("alpha",))

  def params(self, rank: int, reg: float, iterations: Optional[int] = None) -> ALSParams:
    """The solver parameters at one grid point."""
    return ALSParams(rank=int(rank), reg=float(reg), reg_scaled=bool(self.reg_scaled),
                     feedback=self.feedback, alpha=float(self.alpha), weight=self.weight,
                     iterations=int(iterations or self.iterations), solver=self.solver,
                     cg_steps=int(self.cg_steps), init_scale=float(self.init_scale),
                     seed=int(self.seed))


def _as_tuple(value) -> tuple:
  if isinstance(value, (list, tuple, np.ndarray)):
    return tuple(value)
  return (value,)


def _number_list(cast):
  def parse(text: str):
    try:
      return tuple(cast(t) for t in str(text).split(",") if t.strip())
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"expected comma-separated numbers, e.g. 16,32. Received: {text!r}.") from None
  return parse


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


def padded_histories(histories: Sequence[Tuple[np.ndarray, np.ndarray]], width: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads per-user (item indices, values) into [B, H] cols, values and mask."""
  width = width or max([len(h[0]) for h in histories] + [1])
  cols = np.zeros((len(histories), width), np.int64)
  values = np.zeros((len(histories), width), np.float32)
  mask = np.zeros((len(histories), width), bool)
  for row, (items, vals) in enumerate(histories):
    n = min(len(items), width)
    cols[row, :n], values[row, :n], mask[row, :n] = items[-n:], vals[-n:], True
  return cols, values, mask


@dataclasses.dataclass
class ALSFit:
  """Factors and biases of one fit (everything scoring and export need).

  Attributes:
    user_factors: [n_users, k] (rows of `user_ids`).
    item_factors: [n_items, k] (catalogue order).
    params: Solver parameters.
    offset: Global offset (explicit: alpha of the centering; implicit: 0).
    user_bias: [n_users] (explicit `center=biases`, else zeros).
    item_bias: [n_items] (idem).
    losses: Training loss per iteration.
    reg_bias: Bias L2 weight of the centering (0 without biases), reused
      when a new user's bias is folded in.
  """

  user_factors: np.ndarray
  item_factors: np.ndarray
  params: ALSParams
  offset: float
  user_bias: np.ndarray
  item_bias: np.ndarray
  losses: List[float]
  reg_bias: float = 0.0

  @property
  def gram(self) -> np.ndarray:
    """[k, k] Y'Y (implicit) or zeros (explicit), as fold-in needs it."""
    if self.params.implicit:
      return (self.item_factors.T @ self.item_factors).astype(np.float32)
    return np.zeros((self.params.rank,) * 2, np.float32)


def _center(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int,
            n_items: int, center: str, reg_bias: float, iterations: int = 10):
  """(offset, user_bias, item_bias) of the explicit centering (closed-form ALS on biases)."""
  bu, bi = np.zeros(n_users), np.zeros(n_items)
  if center == "none":
    return 0.0, bu, bi
  offset = float(ratings.mean())
  if center == "mean":
    return offset, bu, bi
  residual = ratings - offset
  n_u = np.bincount(users, minlength=n_users)
  n_i = np.bincount(items, minlength=n_items)
  for _ in range(iterations):
    bi = np.bincount(items, residual - bu[users], n_items) / (n_i + reg_bias)
    bu = np.bincount(users, residual - bi[items], n_users) / (n_u + reg_bias)
  return offset, bu, bi


def fit_als(users: np.ndarray, items: np.ndarray, values: np.ndarray, n_users: int,
            n_items: int, params: ALSParams, center: str = "none", reg_bias: float = 5.0,
            callback: Optional[Callable[[int, float], None]] = None) -> ALSFit:
  """Fits ALS on index arrays (explicit values are centered first).

  Args:
    users: [N] user rows.
    items: [N] item rows.
    values: [N] ratings (explicit) or play counts (implicit).
    n_users: User rows.
    n_items: Item rows.
    params: Solver parameters.
    center: Explicit centering (`biases`, `mean`, `none`).
    reg_bias: Bias L2 weight.
    callback: `callback(iteration, loss)` after each pass.

  Returns:
    The fit.
  """
  values = np.asarray(values, np.float64)
  offset, bu, bi = 0.0, np.zeros(n_users), np.zeros(n_items)
  targets = values
  if not params.implicit:
    offset, bu, bi = _center(users, items, values, n_users, n_items, center, reg_bias)
    targets = values - offset - bu[users] - bi[items]
  solver = ALSSolver(users, items, targets, n_users, n_items, params)
  losses = solver.run(callback=callback)
  return ALSFit(solver.user_factors.numpy(), solver.item_factors.numpy(), params, offset,
                bu.astype(np.float32), bi.astype(np.float32), losses,
                float(reg_bias) if center == "biases" and not params.implicit else 0.0)


def fold_in_numpy(fit: ALSFit, histories: Sequence[Tuple[np.ndarray, np.ndarray]],
                  chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
  """User vectors and biases of users given only their (item rows, values).

  Explicit: the bias is the regularized mean residual of the user's ratings
  after alpha and the track biases, and the vector is solved on what is left.

  Returns:
    ([B, k] vectors, [B] biases).
  """
  vectors, biases = [], []
  gram = tf.constant(fit.gram)
  items = tf.constant(fit.item_factors)
  for start in range(0, len(histories), chunk):
    cols, values, mask = padded_histories(histories[start:start + chunk])
    bias = np.zeros(len(cols), np.float32)
    if not fit.params.implicit:
      residual = (values - fit.offset - fit.item_bias[cols]) * mask
      if fit.reg_bias > 0:
        bias = (residual.sum(1) / (mask.sum(1) + fit.reg_bias)).astype(np.float32)
      values = (residual - bias[:, None]) * mask
    vectors.append(fold_in(items, gram, tf.constant(cols), tf.constant(values),
                           tf.constant(mask), fit.params).numpy())
    biases.append(bias)
  if not vectors:
    return np.zeros((0, fit.params.rank), np.float32), np.zeros(0, np.float32)
  return np.concatenate(vectors), np.concatenate(biases)


class ALSFamily(ModelFamily):
  """ALS matrix factorization plugged into the training pipeline."""

  name = "als"
  config_class = ALSConfig
  # Both tables' keys; the printed table shows the ones present.
  table_keys = tuple(RETRIEVAL_TABLE_KEYS) + RATING_TABLE_KEYS
  prepare_overrides: Dict[str, Any] = {}
  objective = ("valid/all/hr@10", "max")

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """`tiny` trains in seconds for tests; `default` is the measured setting."""
    return {"tiny": {"ranks": (8, 16), "iterations": 5, "cv_folds": 2,
                     "top_k": 20, "top_n": 5},
            "default": {}}

  @classmethod
  def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
    """ALS flags; each `dest` is an `ALSConfig` field."""
    group.add_argument("--feedback", choices=FEEDBACKS, default=None,
                       help="implicit: play counts as confidence (HR@10); explicit: ratings "
                            "(RMSE).")
    group.add_argument("--rank", dest="ranks", type=_number_list(int), default=None,
                       help="Factor size(s), comma-separated; several are cross-validated.")
    group.add_argument("--reg", dest="regs", type=_number_list(float), default=None,
                       help="Regularization lambda(s), comma-separated; several are "
                            "cross-validated.")
    group.add_argument("--alpha", type=float, default=None,
                       help="Implicit confidence slope: c = 1 + alpha * f(weight).")
    group.add_argument("--weight", choices=WEIGHT_TRANSFORMS, default=None,
                       help="Implicit weight transform f.")
    group.add_argument("--reg-scaled", dest="reg_scaled", action="store_true", default=None,
                       help="Scale lambda by each row's count (ALS-WR, as Spark).")
    group.add_argument("--iterations", type=int, default=None, help="Alternating passes.")
    group.add_argument("--solver", choices=SOLVERS, default=None,
                       help="Exact Cholesky solves or warm-started conjugate gradient.")
    group.add_argument("--cv-folds", dest="cv_folds", type=int, default=None,
                       help="Cross-validation folds over the rank x reg grid (<2: off).")
    group.add_argument("--center", choices=CENTERS, default=None,
                       help="Explicit: fit the factors to what the biases leave (biases), to "
                            "ratings minus the mean (mean), or to raw ratings (none).")

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

  @classmethod
  def search_space(cls, hp) -> Dict[str, Any]:
    """Rank, lambda and (implicit) alpha; one grid point per trial (no inner CV)."""
    return {"ranks": (hp.Choice("rank", [16, 32, 64, 128]),),
            "regs": (hp.Float("reg", 0.01, 100.0, sampling="log"),),
            "alpha": hp.Float("alpha", 1.0, 40.0, sampling="log"),
            "cv_folds": 0}

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
    self._vectors: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

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

  def user_vectors(self, split: str) -> Tuple[pd.Index, np.ndarray, np.ndarray]:
    """(user ids, [U, k] vectors, [U] biases) a split is scored with.

    `valid`: the trained vectors. `test`: folded in from training plus
    validation rows when `refold_test` (the history known at test time).
    `cold_user`: folded in from the held-out users' history.
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
      history = pd.concat([self.prepared.train, self.prepared.valid])
      vectors, biases = fold_in_numpy(fit, self._histories(history, self.user_ids))
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
    from tfrec_music.models import rating_baselines  # pylint: disable=g-import-not-at-top
    scorers = {"model": lambda f: self.predict(f["user_id"], f["item_id"])}
    if baselines:
      fits = rating_baselines.fit_rating_baselines(self.prepared.train, self.prepared.valid,
                                                   seed=self.config.seed)
      scorers.update(rating_baselines.baseline_scorers(fits, self.rating_range))
    out = rating_baselines.evaluate_rating_scorers(self.prepared, scorers, splits)
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
    fit = self.fit_result
    n = self.config.top_n
    seen_u, seen_i = self.train_users, self.train_items
    item_ids = np.asarray(self.prepared.item_ids).astype(str)
    paths = {}
    frames = {}
    for name, rows, cols, row_ids, col_ids, row_bias, col_bias in (
        ("user_top_items", fit.user_factors, fit.item_factors, self.user_ids, item_ids,
         fit.user_bias, fit.item_bias),
        ("item_top_users", fit.item_factors, fit.user_factors, item_ids, self.user_ids,
         fit.item_bias, fit.user_bias)):
      k = min(n, len(col_ids))
      seen = (seen_u, seen_i) if name == "user_top_items" else (seen_i, seen_u)
      order = np.argsort(seen[0], kind="stable")
      bounds = np.searchsorted(seen[0][order], np.arange(len(rows) + 1))
      top_rows, top_cols, top_scores = [], [], []
      for start in range(0, len(rows), 2048):
        stop = min(start + 2048, len(rows))
        scores = (rows[start:stop] @ cols.T + col_bias[None, :] + row_bias[start:stop, None]
                  + fit.offset)
        lo, hi = bounds[start], bounds[stop]
        scores[seen[0][order][lo:hi] - start, seen[1][order][lo:hi]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, 1)
        rank = np.argsort(-part_scores, axis=1, kind="stable")
        top_cols.append(np.take_along_axis(part, rank, 1))
        top_scores.append(np.take_along_axis(part_scores, rank, 1))
        top_rows.append(np.repeat(np.arange(start, stop), k).reshape(-1, k))
      r, c, s = (np.concatenate(x) for x in (top_rows, top_cols, top_scores))
      valid = np.isfinite(s)
      first, second = ("user_id", "item_id") if name == "user_top_items" else ("item_id",
                                                                               "user_id")
      frames[name] = pd.DataFrame({
          first: row_ids[r[valid]], second: col_ids[c[valid]],
          "rank": (np.tile(np.arange(1, k + 1), len(rows)).reshape(-1, k))[valid],
          "score": s[valid].astype(np.float32)})
    io.makedirs(directory)
    for name, frame in frames.items():
      path = io.join(directory, f"{name}.{self.config.recommendations_format}")
      _write_frame(frame, path, self.config.recommendations_format)
      paths[name] = path
    return paths

  # ------------------------------------------------------------------- export
  def serving_module(self, kind: str):
    """The exact (`kind="exact"`) or ScaNN serving module of the retrieval contract."""
    fit = self.fit_result
    k = min(self.config.top_k, self.prepared.n_items)
    popular_ids, popular_scores = PopularityModel.fit(self.prepared).top_k(k)
    histories = self._histories(self.prepared.train, self.user_ids)
    width = max(1, min(self.config.serving_history, max(len(h[0]) for h in histories)))
    cols, values, mask = padded_histories(histories, width)
    item_ids = np.asarray(self.prepared.item_ids).astype(str)
    stored = {"history": np.where(mask, item_ids[cols], "").astype(object),
              "weights": np.where(mask, values, 0.0).astype(np.float32)}
    query_model = ALSQueryModel(self.user_ids, fit, item_ids)
    return ALSServingModule(query_model, ALS_QUERY_SIGNATURE, query_model.candidates(),
                            item_ids, kind, self.user_ids, stored, popular_ids,
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
                           "(trained vectors of known users, their training tracks excluded; "
                           "popularity for unknown users)",
        "recommend": f"user_id [B], history [B, H] (track ids, padded with ''), weights [B, H] "
                     f"({value}), exclude [B, E] -> item_ids, scores, fallback (unknown users "
                     "are folded in from history and weights)",
        "fold_in": f"history [B, H], weights [B, H] ({value}) -> item_ids, scores, fallback, "
                   "user_vector [B, k] (one least-squares solve; history excluded)",
        "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
        "candidates/": "item_ids.txt, embeddings.npy (track factors), metadata.tsv"}


ALS_QUERY_SIGNATURE = {"history": tf.TensorSpec([None, None], tf.string, name="history"),
                       "weights": tf.TensorSpec([None, None], tf.float32, name="weights")}


class ALSQueryModel(tf.Module):
  """Raw (user_id, history, weights) -> query vectors, inside the SavedModel.

  Known users get their trained vector; others are folded in from their
  history (track ids; unknown ids and '' are ignored) and weights (ratings
  or play counts). Explicit fits with biases use augmented vectors, so the
  dot product is the predicted rating: query [x_u, 1, alpha + b_u] against
  candidates [y_i, b_i, 1].

  Args:
    user_ids: [U] training user ids.
    fit: The `ALSFit`.
    item_ids: [n_items] catalogue ids.
  """

  def __init__(self, user_ids: np.ndarray, fit: ALSFit, item_ids: np.ndarray):
    super().__init__(name="als_query_model")
    self.params = fit.params
    self.augmented = not fit.params.implicit
    self.reg_bias = float(fit.reg_bias)
    self.offset = float(fit.offset)
    self._item_factors = np.asarray(fit.item_factors, np.float32)
    self._item_bias = np.asarray(fit.item_bias, np.float32)
    self.user_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(user_ids).astype(str).astype(object), tf.string),
            tf.range(len(user_ids), dtype=tf.int64)), default_value=-1)
    self.item_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(item_ids).astype(str).astype(object), tf.string),
            tf.range(len(item_ids), dtype=tf.int64)), default_value=-1)
    self.user_factors = tf.Variable(np.asarray(fit.user_factors, np.float32), trainable=False,
                                    name="user_factors")
    self.user_bias = tf.Variable(np.asarray(fit.user_bias, np.float32), trainable=False,
                                 name="user_bias")
    self.item_factors = tf.Variable(self._item_factors, trainable=False, name="item_factors")
    self.item_bias = tf.Variable(self._item_bias, trainable=False, name="item_bias")
    self.gram = tf.Variable(fit.gram, trainable=False, name="gram")

  def candidates(self) -> np.ndarray:
    """[n_items, k (+2)] candidate vectors of the index."""
    if not self.augmented:
      return self._item_factors
    ones = np.ones((len(self._item_factors), 1), np.float32)
    return np.hstack([self._item_factors, self._item_bias[:, None], ones])

  def fold(self, history: tf.Tensor, weights: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """([B, k] vectors, [B] biases) of users from their tracks and weights alone."""
    cols = self.item_table.lookup(history)
    mask = cols >= 0
    safe = tf.maximum(cols, 0)
    maskf = tf.cast(mask, tf.float32)
    values = tf.cast(weights, tf.float32)
    bias = tf.zeros([tf.shape(history)[0]], tf.float32)
    if self.augmented:
      residual = (values - self.offset - tf.gather(self.item_bias, safe)) * maskf
      if self.reg_bias > 0:
        bias = tf.reduce_sum(residual, 1) / (tf.reduce_sum(maskf, 1) + self.reg_bias)
      values = (residual - bias[:, tf.newaxis]) * maskf
    vectors = fold_in(self.item_factors, self.gram, safe, values, mask, self.params)
    return vectors, bias

  def __call__(self, features: Dict[str, tf.Tensor]) -> tf.Tensor:
    """[B, d] query vectors (see the class docstring)."""
    rows = self.user_table.lookup(features["user_id"])
    known = rows >= 0
    safe = tf.maximum(rows, 0)
    folded, folded_bias = self.fold(features["history"], features["weights"])
    vectors = tf.where(known[:, tf.newaxis], tf.gather(self.user_factors, safe), folded)
    if not self.augmented:
      return vectors
    bias = tf.where(known, tf.gather(self.user_bias, safe), folded_bias)
    ones = tf.ones_like(bias)
    return tf.concat([vectors, ones[:, tf.newaxis], (bias + self.offset)[:, tf.newaxis]], 1)


class ALSServingModule(retrieval.RetrievalServingModule):
  """The retrieval serving module plus `fold_in(history, weights)` for new users."""

  def __init__(self, query_model: ALSQueryModel, *args, **kwargs):
    super().__init__(query_model, *args, **kwargs)

    @tf.function(input_signature=[ALS_QUERY_SIGNATURE])
    def fold(inputs):
      history = inputs["history"]
      batch = tf.shape(history)[0]
      # An empty id is never a known user, so every row is folded in.
      features = {"user_id": tf.fill([batch], ""), "history": history,
                  "weights": inputs["weights"]}
      out = self._recommend(features, history, tf.zeros([batch], tf.bool))
      vectors, _ = self.query_model.fold(history, inputs["weights"])
      out["user_vector"] = vectors
      return out

    self.fold_in = fold

  def signatures(self) -> Dict[str, Callable]:
    """`serving_default`, `recommend` and `fold_in`."""
    out = super().signatures()
    out["fold_in"] = self.fold_in
    return out


def _write_frame(frame: pd.DataFrame, path: str, fmt: str) -> None:
  import io as io_lib  # pylint: disable=g-import-not-at-top
  if fmt == "csv":
    io.write_text(path, frame.to_csv(index=False))
    return
  buffer = io_lib.BytesIO()
  frame.to_parquet(buffer, index=False)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
