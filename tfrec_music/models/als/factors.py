"""A fitted ALS model's factors and biases, and folding new users in against them."""

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.als.solver import ALSParams
from tfrec_music.models.als.solver import ALSSolver
from tfrec_music.models.als.solver import fold_in


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
