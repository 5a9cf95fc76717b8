"""Rating baselines: global mean, biased baseline, biased matrix factorization.

The recommender idea: most of a rating is who rates (a generous or a harsh
user) and what is rated (a loved or a disliked track). The biased baseline

  r_hat(u, i) = alpha + beta_u + beta_i

learns exactly that, with L2 regularization pulling the biases of users and
items with few ratings toward 0 (Koren, "Factorization meets the
neighborhood", KDD 2008). Biased matrix factorization adds the taste match

  r_hat(u, i) = alpha + beta_u + beta_i + p_u . q_i

Both are fitted in closed form by alternating least squares in numpy (each
half-step solves every user's, then every item's, ridge regression exactly),
so the fit is deterministic for a seed, needs no learning rate, and the ALS
family can reuse `fit_biased_mf` as is. Ids unseen in training get a zero
bias and a zero factor: the prediction falls back to what is known.

All models share one interface: `fit(users, items, ratings)` on id arrays
and `predict(users, items)` -> [N] float64.
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["GlobalMean", "BiasedBaseline", "BiasedMF", "IdIndex", "fit_rating_baselines"]


class IdIndex:
  """String ids -> dense indices; unseen ids -> -1.

  Args:
    ids: The known ids (training ids), any order; duplicates are merged.
  """

  def __init__(self, ids: Sequence[str]):
    self.index = pd.Index(pd.unique(pd.Series(np.asarray(ids)).astype(str)))

  def __len__(self) -> int:
    return len(self.index)

  def __call__(self, ids: Sequence[str]) -> np.ndarray:
    """[N] indices (-1 where unknown)."""
    return self.index.get_indexer(pd.Series(np.asarray(ids)).astype(str))


def _check_ratings(users, items, ratings) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  users = np.asarray(users).astype(str)
  items = np.asarray(items).astype(str)
  ratings = np.asarray(ratings, dtype=np.float64)
  if not (len(users) == len(items) == len(ratings)):
    raise ValueError("`users`, `items` and `ratings` should have the same length. Received: "
                     f"{len(users)}, {len(items)}, {len(ratings)}.")
  if len(ratings) == 0:
    raise ValueError("No ratings to fit: the training split is empty.")
  if not np.all(np.isfinite(ratings)):
    row = int(np.flatnonzero(~np.isfinite(ratings))[0])
    raise ValueError(f"`ratings` should be finite numbers. Received: `ratings[{row}]` = "
                     f"{ratings[row]}. Drop or fix unrated rows before fitting.")
  return users, items, ratings


class GlobalMean:
  """Predicts the mean training rating for every pair."""

  def __init__(self):
    self.mean = 0.0

  def fit(self, users, items, ratings) -> "GlobalMean":
    """Stores the mean of `ratings` [N]."""
    _, _, ratings = _check_ratings(users, items, ratings)
    self.mean = float(ratings.mean())
    return self

  def predict(self, users, items) -> np.ndarray:
    """[N] copies of the training mean."""
    return np.full(len(np.asarray(users)), self.mean, dtype=np.float64)


def _group_sums(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
  return np.bincount(index, weights=values, minlength=n)


class BiasedBaseline:
  """r_hat = alpha + beta_u + beta_i, biases L2-regularized (ALS on biases).

  Args:
    reg_user: L2 weight on user biases (a user with n ratings gets
      sum(residual) / (n + reg_user)).
    reg_item: L2 weight on item biases.
    iterations: Alternating passes (the fit converges in a few).
  """

  def __init__(self, reg_user: float = 5.0, reg_item: float = 5.0, iterations: int = 10):
    for name, value in (("reg_user", reg_user), ("reg_item", reg_item)):
      if not value >= 0:
        raise ValueError(f"`{name}` should be non-negative. Received: `{name}` = {value}.")
    self.reg_user, self.reg_item, self.iterations = reg_user, reg_item, iterations
    self.alpha = 0.0
    self.user_index = self.item_index = None
    self.user_bias = self.item_bias = np.zeros(0)

  def fit(self, users, items, ratings) -> "BiasedBaseline":
    """Fits alpha, then user and item biases alternately, each in closed form."""
    users, items, ratings = _check_ratings(users, items, ratings)
    self.user_index, self.item_index = IdIndex(users), IdIndex(items)
    u, i = self.user_index(users), self.item_index(items)
    self.alpha = float(ratings.mean())
    n_u = np.bincount(u, minlength=len(self.user_index)).astype(np.float64)
    n_i = np.bincount(i, minlength=len(self.item_index)).astype(np.float64)
    bu = np.zeros(len(self.user_index))
    bi = np.zeros(len(self.item_index))
    residual = ratings - self.alpha
    for _ in range(self.iterations):
      bi = _group_sums(i, residual - bu[u], len(bi)) / (n_i + self.reg_item)
      bu = _group_sums(u, residual - bi[i], len(bu)) / (n_u + self.reg_user)
    self.user_bias, self.item_bias = bu, bi
    return self

  def biases(self, users, items) -> Tuple[np.ndarray, np.ndarray]:
    """([N] user biases, [N] item biases), 0 for ids unseen in training."""
    u, i = self.user_index(users), self.item_index(items)
    return (np.where(u >= 0, self.user_bias[np.maximum(u, 0)], 0.0),
            np.where(i >= 0, self.item_bias[np.maximum(i, 0)], 0.0))

  def predict(self, users, items) -> np.ndarray:
    """[N] alpha + beta_u + beta_i."""
    bu, bi = self.biases(users, items)
    return self.alpha + bu + bi


def _solve_rows(index: np.ndarray, other: np.ndarray, targets: np.ndarray, n: int,
                reg: np.ndarray) -> np.ndarray:
  """Per row r: argmin_x sum_{k: index_k = r} (targets_k - other_k . x)^2 + x' diag(reg) x.

  Args:
    index: [N] row of each observation (sorted or not).
    other: [N, d] the fixed side's vectors.
    targets: [N] targets.
    n: Number of rows.
    reg: [d] ridge weights.

  Returns:
    [n, d] solutions (rows with no observation get 0).
  """
  d = other.shape[1]
  order = np.argsort(index, kind="stable")
  index, other, targets = index[order], other[order], targets[order]
  rows = np.flatnonzero(np.bincount(index, minlength=n))
  starts = np.searchsorted(index, rows)
  gram = np.zeros((len(rows), d, d))
  rhs = np.zeros((len(rows), d))
  # Outer products summed per row with `reduceat`, in chunks of whole rows so
  # memory stays bounded ([chunk, d, d] at a time).
  chunk_rows = max(1, int(2_000_000 // (d * d)))
  ends = np.append(starts[1:], len(index))
  first = 0
  while first < len(rows):
    last = min(len(rows), first + 1)
    while last < len(rows) and ends[last] - starts[first] <= chunk_rows:
      last += 1
    lo, hi = starts[first], ends[last - 1]
    x, t = other[lo:hi], targets[lo:hi]
    local = starts[first:last] - lo
    gram[first:last] = np.add.reduceat(np.einsum("nd,ne->nde", x, x), local, axis=0)
    rhs[first:last] = np.add.reduceat(x * t[:, None], local, axis=0)
    first = last
  out = np.zeros((n, d))
  out[rows] = np.linalg.solve(gram + np.diag(reg)[None], rhs[..., None])[..., 0]
  return out


class BiasedMF:
  """r_hat = alpha + beta_u + beta_i + p_u . q_i, fitted by alternating least squares.

  Each half-step solves, for every user, a ridge regression of its residual
  ratings on the item vectors augmented with a constant (whose coefficient is
  the user bias), then the same for items. Biases start from
  `BiasedBaseline`'s solution.

  Args:
    dim: Factor size d.
    reg: L2 weight on factors.
    reg_bias: L2 weight on biases.
    iterations: ALS passes.
    seed: Seed of the factor initialization.
  """

  def __init__(self, dim: int = 16, reg: float = 10.0, reg_bias: float = 5.0,
               iterations: int = 10, seed: int = 0):
    if not isinstance(dim, (int, np.integer)) or dim <= 0:
      raise ValueError(f"`dim` should be a positive integer. Received: `dim` = {dim!r}.")
    self.dim, self.reg, self.reg_bias = int(dim), float(reg), float(reg_bias)
    self.iterations, self.seed = iterations, seed
    self.baseline = BiasedBaseline(reg_bias, reg_bias)
    self.user_factors = self.item_factors = np.zeros((0, dim))

  def fit(self, users, items, ratings) -> "BiasedMF":
    """Alternating exact ridge solves for [p_u, beta_u] and [q_i, beta_i]."""
    users, items, ratings = _check_ratings(users, items, ratings)
    base = self.baseline.fit(users, items, ratings)
    u, i = base.user_index(users), base.item_index(items)
    n_users, n_items = len(base.user_index), len(base.item_index)
    rng = np.random.default_rng(self.seed)
    p = rng.normal(0, 0.1, (n_users, self.dim))
    q = rng.normal(0, 0.1, (n_items, self.dim))
    bu, bi = base.user_bias.copy(), base.item_bias.copy()
    residual = ratings - base.alpha
    reg = np.concatenate([np.full(self.dim, self.reg), [self.reg_bias]])
    ones_u = np.ones((len(u), 1))
    for _ in range(self.iterations):
      solved = _solve_rows(u, np.hstack([q[i], ones_u]), residual - bi[i], n_users, reg)
      p, bu = solved[:, :-1], solved[:, -1]
      solved = _solve_rows(i, np.hstack([p[u], ones_u]), residual - bu[u], n_items, reg)
      q, bi = solved[:, :-1], solved[:, -1]
    base.user_bias, base.item_bias = bu, bi
    self.user_factors, self.item_factors = p, q
    return self

  def predict(self, users, items) -> np.ndarray:
    """[N] alpha + beta_u + beta_i + p_u . q_i (unknown ids: zero bias and factor)."""
    base = self.baseline
    u, i = base.user_index(users), base.item_index(items)
    pu = np.where((u >= 0)[:, None], self.user_factors[np.maximum(u, 0)], 0.0)
    qi = np.where((i >= 0)[:, None], self.item_factors[np.maximum(i, 0)], 0.0)
    return base.predict(users, items) + np.einsum("nd,nd->n", pu, qi)


@dataclasses.dataclass
class BaselineFits:
  """The three fitted baselines and the regularization chosen on validation."""

  global_mean: GlobalMean
  biased: BiasedBaseline
  biased_mf: BiasedMF
  chosen: Dict[str, float]


def _rmse(pred: np.ndarray, true: np.ndarray) -> float:
  return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(true)) ** 2)))


def fit_rating_baselines(train: pd.DataFrame, valid: Optional[pd.DataFrame] = None,
                         mf_dim: int = 16, seed: int = 0,
                         bias_regs: Sequence[float] = (1.0, 5.0, 25.0),
                         mf_regs: Sequence[float] = (3.0, 10.0, 30.0)) -> BaselineFits:
  """Fits all three baselines on `train`, choosing each one's L2 weight on `valid`.

  The regularization grid is small and chosen on the validation split only,
  so the baselines are as strong as their form allows, and the comparison
  with a trained model is fair.

  Args:
    train: Rows with `user_id`, `item_id`, `rating`.
    valid: Validation rows (the first grid value is used when None or empty).
    mf_dim: Factor size of the biased MF.
    seed: MF initialization seed.
    bias_regs: Candidate bias regularization weights.
    mf_regs: Candidate factor regularization weights.

  Returns:
    `BaselineFits`.
  """
  args = (train["user_id"], train["item_id"], train["rating"])
  mean = GlobalMean().fit(*args)
  have_valid = valid is not None and len(valid) > 0

  def _score(model):
    if not have_valid:
      return 0.0
    return _rmse(model.predict(valid["user_id"], valid["item_id"]), valid["rating"])

  best_bias = min(((
      _score(m), reg, m) for reg in bias_regs
                   for m in [BiasedBaseline(reg, reg).fit(*args)]), key=lambda t: t[0])
  best_mf = min(((_score(m), reg, m) for reg in mf_regs
                 for m in [BiasedMF(mf_dim, reg, best_bias[1], seed=seed).fit(*args)]),
                key=lambda t: t[0])
  return BaselineFits(mean, best_bias[2], best_mf[2],
                      {"biased/reg": best_bias[1], "biased_mf/reg": best_mf[1],
                       "biased_mf/reg_bias": best_bias[1], "biased_mf/dim": mf_dim})
