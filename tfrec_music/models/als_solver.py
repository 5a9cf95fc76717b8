"""Alternating least squares with batched closed-form solves in `tf.linalg`.

The recommender idea: a rating (or a confidence that a user likes a track)
is the dot product of a user vector and a track vector. With the track
vectors fixed, every user's vector is the solution of a small ridge
regression, and the other way round, so the two sides are solved in turn,
each exactly (Cholesky) or by a few warm-started conjugate-gradient steps.

- Explicit feedback: minimize
  sum_{(u,i) observed} (r_ui - x_u . y_i)^2 + lambda (sum_u n_u^s |x_u|^2 + sum_i n_i^s |y_i|^2)
  where s = 1 scales lambda by each row's count (ALS-WR, as Spark does) and
  s = 0 does not.
- Implicit feedback (Hu, Koren and Volinsky 2008): every (u, i) pair has a
  preference p_ui (1 if observed, else 0) and a confidence
  c_ui = 1 + alpha * f(w_ui) (f = identity or log1p of the play count w;
  c = 1 for unobserved pairs); minimize sum_{u,i} c_ui (p_ui - x_u . y_i)^2
  plus the same regularization. The sum over all pairs is handled with the
  Gram matrix Y'Y, so a solve touches only the user's observed items:
  (Y'Y + sum_{i in I_u} (c_ui - 1) y_i y_i' + lambda_u I) x_u = sum_{i in I_u} c_ui y_i.

Both are `A_u x_u = b_u` with `A_u = G + sum_e a_e y_e y_e' + lambda_u I` and
`b_u = sum_e b_e y_e` over the row's observed entries e. The sparse matrix is
laid out as dense blocks of rows padded to a common length (rows grouped by
degree, so padding stays small), and each block is solved with batched
`tf.linalg` ops (gather, batched matmul, `cholesky_solve`), so the same code
runs on CPU, GPU or TPU. Block shapes come from a small fixed set (lengths
rounded up to half-octaves, block heights to powers of two), which bounds
the number of traced graphs.
"""

import dataclasses
import logging
import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

__all__ = ["ALSParams", "ALSSolver", "confidence", "fold_in", "edge_coefficients"]

FEEDBACKS = ("explicit", "implicit")
WEIGHT_TRANSFORMS = ("raw", "log1p")
SOLVERS = ("cholesky", "cg")


@dataclasses.dataclass(frozen=True)
class ALSParams:
  """What one ALS fit needs.

  Attributes:
    rank: Factor size k.
    reg: Regularization weight lambda.
    reg_scaled: Scale lambda by each row's number of observed entries
      (ALS-WR, Spark's choice).
    feedback: `"explicit"` (ratings) or `"implicit"` (confidence-weighted).
    alpha: Implicit confidence slope: c = 1 + alpha * f(weight).
    weight: Implicit weight transform f: `"raw"` or `"log1p"`.
    iterations: Alternating passes (each solves users, then items).
    solver: `"cholesky"` (exact solve) or `"cg"` (conjugate gradient,
      warm-started from the previous factors; cheaper for large ranks).
    cg_steps: Conjugate-gradient steps per solve.
    init_scale: Standard deviation of the seeded normal initialization
      (divided by sqrt(rank)).
    block_entries: Padded entries per solve block (memory: about
      `block_entries * rank` floats per block).
    seed: Initialization seed.
  """

  rank: int = 32
  reg: float = 0.1
  reg_scaled: bool = False
  feedback: str = "implicit"
  alpha: float = 10.0
  weight: str = "log1p"
  iterations: int = 10
  solver: str = "cholesky"
  cg_steps: int = 3
  init_scale: float = 0.1
  block_entries: int = 1 << 17
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.rank, (int, np.integer)) or self.rank <= 0:
      raise ValueError(f"`rank` should be a positive integer. Received: `rank` = {self.rank!r}.")
    if not isinstance(self.iterations, (int, np.integer)) or self.iterations < 0:
      raise ValueError("`iterations` should be a non-negative integer. "
                       f"Received: `iterations` = {self.iterations!r}.")
    if not (isinstance(self.reg, (int, float)) and self.reg > 0 and math.isfinite(self.reg)):
      raise ValueError(f"`reg` should be a positive number. Received: `reg` = {self.reg!r}.")
    if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
      raise ValueError(f"`alpha` should be a non-negative number. Received: `alpha` = {self.alpha!r}.")
    for name, allowed in (("feedback", FEEDBACKS), ("weight", WEIGHT_TRANSFORMS),
                          ("solver", SOLVERS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"`{name}` should be one of {allowed}. "
                         f"Received: `{name}` = {getattr(self, name)!r}.")

  @property
  def implicit(self) -> bool:
    """True for implicit (confidence-weighted) feedback."""
    return self.feedback == "implicit"


def confidence(weights, alpha: float, transform: str, scale=None):
  """Implicit confidence c = 1 + alpha * f(w) * s (numpy or TF tensors).

  Example:
    >>> confidence([0.0, 3.0], alpha=2.0, transform="raw")
    array([1., 7.])

  Args:
    weights: [...] non-negative play counts (1 where the data has none).
    alpha: Slope.
    transform: `"raw"` (f(w) = w) or `"log1p"` (f(w) = log(1 + w)).
    scale: Optional [...] per-entry multiplier s (e.g. a recency decay).

  Returns:
    [...] confidences, same type as `weights`.
  """
  if isinstance(weights, (tf.Tensor, tf.Variable)):
    f = tf.math.log1p(weights) if transform == "log1p" else weights
  else:
    weights = np.asarray(weights, np.float64)
    f = np.log1p(weights) if transform == "log1p" else weights
  if scale is not None:
    f = f * scale
  return 1.0 + alpha * f


def edge_coefficients(values, params: ALSParams, scale=None):
  """Per observed entry, (a, b) of `A += a y y'` and `b += b y` (numpy or TF).

  Explicit: a = 1, b = rating. Implicit: a = c - 1, b = c (preference 1).
  `scale` multiplies the implicit confidence increment (ignored for explicit).
  """
  if params.implicit:
    c = confidence(values, params.alpha, params.weight, scale)
    return c - 1.0, c
  ones = tf.ones_like(values) if isinstance(values, tf.Tensor) else np.ones_like(values)
  return ones, values


# ------------------------------------------------------------------ layout
@dataclasses.dataclass
class _Block:
  rows: tf.Tensor   # [B] int32 rows solved (padding: the scratch row n)
  cols: tf.Tensor   # [B, D] int32 fixed-side rows (padding: 0 with a = b = 0)
  a: tf.Tensor      # [B, D] float32
  b: tf.Tensor      # [B, D] float32
  reg: tf.Tensor    # [B] float32 lambda_u (padding rows: 1)


def _padded_length(degree: np.ndarray) -> np.ndarray:
  """Rounds lengths up to 8, 16, 24, 32, 48, 64, 96, ... (half-octaves)."""
  degree = np.maximum(degree, 1)
  octave = 2 ** np.ceil(np.log2(degree)).astype(np.int64)
  step = np.maximum(8, octave // 2)
  return (np.ceil(degree / step) * step).astype(np.int64)


def _build_blocks(rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray,
                  n_rows: int, reg: float, reg_scaled: bool, block_entries: int
                  ) -> Tuple[List[_Block], np.ndarray]:
  """Lays the entries of every row out as padded dense blocks.

  Returns:
    (blocks, degree [n_rows]).
  """
  order = np.lexsort((cols, rows))
  rows, cols, a, b = rows[order], cols[order], a[order], b[order]
  degree = np.bincount(rows, minlength=n_rows)
  starts = np.concatenate([[0], np.cumsum(degree)])
  active = np.flatnonzero(degree > 0)
  lengths = _padded_length(degree[active])
  blocks = []
  for length in np.unique(lengths):
    members = active[lengths == length]
    height = max(1, block_entries // int(length))
    for lo in range(0, len(members), height):
      chunk = members[lo:lo + height]
      padded_height = min(height, 1 << int(math.ceil(math.log2(len(chunk)))))
      block_rows = np.full(padded_height, n_rows, np.int64)
      block_rows[:len(chunk)] = chunk
      block_cols = np.zeros((padded_height, length), np.int64)
      block_a = np.zeros((padded_height, length), np.float32)
      block_b = np.zeros((padded_height, length), np.float32)
      # Scatter each row's entries into its padded line.
      chunk_degree = degree[chunk]
      line = np.repeat(np.arange(len(chunk)), chunk_degree)
      position = np.arange(int(chunk_degree.sum())) - np.repeat(
          np.cumsum(chunk_degree) - chunk_degree, chunk_degree)
      entry = np.repeat(starts[chunk], chunk_degree) + position
      block_cols[line, position] = cols[entry]
      block_a[line, position] = a[entry]
      block_b[line, position] = b[entry]
      block_reg = np.ones(padded_height, np.float32)
      block_reg[:len(chunk)] = reg * (chunk_degree if reg_scaled else 1.0)
      blocks.append(_Block(tf.constant(block_rows, tf.int32), tf.constant(block_cols, tf.int32),
                           tf.constant(block_a), tf.constant(block_b), tf.constant(block_reg)))
  return blocks, degree


# ------------------------------------------------------------------ solves
def _normal_equations(fixed, gram, cols, a, b, reg):
  """A [B, k, k] and rhs [B, k] of a block (see the module docstring)."""
  yg = tf.gather(fixed, cols)                                       # [B, D, k]
  a_matrix = tf.linalg.matmul(yg * a[..., tf.newaxis], yg, transpose_a=True)
  eye = tf.eye(tf.shape(fixed)[1], dtype=fixed.dtype)
  a_matrix += gram[tf.newaxis] + reg[:, tf.newaxis, tf.newaxis] * eye
  rhs = tf.einsum("bd,bdk->bk", b, yg)
  return a_matrix, rhs


@tf.function(reduce_retracing=True)
def _cholesky_block(fixed, gram, cols, a, b, reg):
  a_matrix, rhs = _normal_equations(fixed, gram, cols, a, b, reg)
  chol = tf.linalg.cholesky(a_matrix)
  return tf.linalg.cholesky_solve(chol, rhs[..., tf.newaxis])[..., 0]


@tf.function(reduce_retracing=True)
def _cg_block(fixed, gram, cols, a, b, reg, x0, steps):
  yg = tf.gather(fixed, cols)                                       # [B, D, k]

  def matvec(v):
    proj = tf.einsum("bdk,bk->bd", yg, v) * a
    return (tf.linalg.matmul(v, gram) + tf.einsum("bd,bdk->bk", proj, yg)
            + reg[:, tf.newaxis] * v)

  rhs = tf.einsum("bd,bdk->bk", b, yg)
  x = x0
  r = rhs - matvec(x)
  p = r
  rs = tf.reduce_sum(r * r, axis=1, keepdims=True)
  for _ in tf.range(steps):
    ap = matvec(p)
    step = tf.math.divide_no_nan(rs, tf.reduce_sum(p * ap, axis=1, keepdims=True))
    x += step * p
    r -= step * ap
    rs_new = tf.reduce_sum(r * r, axis=1, keepdims=True)
    p = r + tf.math.divide_no_nan(rs_new, rs) * p
    rs = rs_new
  return x


def fold_in(item_factors: tf.Tensor, gram: tf.Tensor, cols: tf.Tensor, values: tf.Tensor,
            mask: tf.Tensor, params: ALSParams, scale: Optional[tf.Tensor] = None
            ) -> tf.Tensor:
  """Solves new users' vectors from their items, the item vectors fixed.

  One least-squares solve per user, the same normal equations as training
  (the projection for cold start). Works inside a SavedModel graph.

  Args:
    item_factors: [n_items, k] item vectors.
    gram: [k, k] Y'Y (implicit) or zeros (explicit).
    cols: [B, H] item indices (any valid index where `mask` is False).
    values: [B, H] ratings (explicit) or play counts (implicit).
    mask: [B, H] bool, True for real entries.
    params: The fit's `ALSParams`.
    scale: Optional [B, H] implicit confidence multipliers.

  Returns:
    [B, k] user vectors (zero for a user without entries in explicit mode).
  """
  values = tf.cast(values, tf.float32)
  maskf = tf.cast(mask, tf.float32)
  a, b = edge_coefficients(values, params,
                           None if scale is None else tf.cast(scale, tf.float32))
  count = tf.reduce_sum(maskf, axis=1)
  reg = params.reg * (tf.maximum(count, 1.0) if params.reg_scaled else tf.ones_like(count))
  a_matrix, rhs = _normal_equations(item_factors, gram, tf.cast(cols, tf.int32), a * maskf,
                                    b * maskf, reg)
  return tf.linalg.cholesky_solve(tf.linalg.cholesky(a_matrix), rhs[..., tf.newaxis])[..., 0]


class ALSSolver:
  """Alternating least squares over one sparse matrix of observations.

  Example:
    >>> solver = ALSSolver(users, items, ratings, n_users, n_items,
    ...                    ALSParams(rank=8, feedback="explicit"))
    >>> losses = solver.run()
    >>> solver.predict(users, items)

  Args:
    user_index: [N] user row of each observed entry (0 .. n_users - 1).
    item_index: [N] item row of each entry (0 .. n_items - 1).
    values: [N] ratings (explicit) or play counts (implicit).
    n_users: Number of user rows.
    n_items: Number of item rows.
    params: `ALSParams`.
    scale: Optional [N] implicit confidence multipliers (e.g. recency decay).

  Raises:
    ValueError: Shapes differ, indices are out of range, or values are not
      finite (implicit weights must also be non-negative).
  """

  def __init__(self, user_index, item_index, values, n_users: int, n_items: int,
               params: ALSParams, scale=None):
    user_index = np.asarray(user_index, np.int64)
    item_index = np.asarray(item_index, np.int64)
    values = np.asarray(values, np.float64)
    if not (len(user_index) == len(item_index) == len(values)):
      raise ValueError("`user_index`, `item_index` and `values` should have the same length. "
                       f"Received: {len(user_index)}, {len(item_index)}, {len(values)}.")
    for name, index, n in (("user_index", user_index, n_users), ("item_index", item_index, n_items)):
      if len(index) and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"`{name}` should be in [0, {n}). Received: values from "
                         f"{index.min()} to {index.max()}.")
    if not np.all(np.isfinite(values)):
      raise ValueError("`values` should be finite numbers. Received: "
                       f"{int((~np.isfinite(values)).sum())} non-finite values.")
    if params.implicit and len(values) and values.min() < 0:
      raise ValueError("Implicit `values` (play counts) should be non-negative. Received: "
                       f"minimum {values.min()}.")
    self.params = params
    self.n_users, self.n_items = int(n_users), int(n_items)
    self.user_index, self.item_index = user_index, item_index
    self.values = values.astype(np.float32)
    a, b = edge_coefficients(values, params,
                             None if scale is None else np.asarray(scale, np.float64))
    a, b = a.astype(np.float32), b.astype(np.float32)
    budget = params.block_entries
    self.user_blocks, self.user_degree = _build_blocks(
        user_index, item_index, a, b, n_users, params.reg, params.reg_scaled, budget)
    self.item_blocks, self.item_degree = _build_blocks(
        item_index, user_index, a, b, n_items, params.reg, params.reg_scaled, budget)
    rng = np.random.default_rng(params.seed)
    scale = params.init_scale / math.sqrt(params.rank)
    self.user_factors = tf.constant(
        (rng.normal(0.0, scale, (n_users, params.rank)) * (self.user_degree > 0)[:, None]
         ).astype(np.float32))
    self.item_factors = tf.constant(
        (rng.normal(0.0, scale, (n_items, params.rank)) * (self.item_degree > 0)[:, None]
         ).astype(np.float32))
    self._edge_users = tf.constant(user_index, tf.int32)
    self._edge_items = tf.constant(item_index, tf.int32)
    self._edge_a = tf.constant(a)
    self._edge_b = tf.constant(b)
    self.losses: List[float] = []

  # ----------------------------------------------------------------- steps
  def gram(self, factors: tf.Tensor) -> tf.Tensor:
    """[k, k] Y'Y for implicit feedback, zeros for explicit."""
    if self.params.implicit:
      return tf.linalg.matmul(factors, factors, transpose_a=True)
    return tf.zeros([self.params.rank, self.params.rank], tf.float32)

  def _half_step(self, blocks: Sequence[_Block], fixed: tf.Tensor, current: tf.Tensor
                 ) -> tf.Tensor:
    n = int(current.shape[0])
    gram = self.gram(fixed)
    padded = tf.concat([current, tf.zeros([1, self.params.rank])], axis=0)
    rows, solved = [], []
    for block in blocks:
      if self.params.solver == "cholesky":
        x = _cholesky_block(fixed, gram, block.cols, block.a, block.b, block.reg)
      else:
        x = _cg_block(fixed, gram, block.cols, block.a, block.b, block.reg,
                      tf.gather(padded, block.rows), tf.constant(self.params.cg_steps))
      rows.append(block.rows)
      solved.append(x)
    if not rows:
      return tf.zeros_like(current)
    out = tf.scatter_nd(tf.concat(rows, 0)[:, tf.newaxis], tf.concat(solved, 0),
                        [n + 1, self.params.rank])
    return out[:n]

  def step(self) -> float:
    """One alternating pass (users, then items); returns the loss after it."""
    self.user_factors = self._half_step(self.user_blocks, self.item_factors, self.user_factors)
    self.item_factors = self._half_step(self.item_blocks, self.user_factors, self.item_factors)
    loss = self.loss()
    if not math.isfinite(loss):
      raise FloatingPointError(
          f"ALS loss became {loss} at iteration {len(self.losses) + 1}. Raise `reg` "
          "(`--reg`) or lower `alpha` (`--alpha`).")
    self.losses.append(loss)
    return loss

  def run(self, iterations: Optional[int] = None,
          callback: Optional[Callable[[int, float], None]] = None) -> List[float]:
    """Runs `iterations` passes (default: the params'); returns the loss per pass.

    Args:
      iterations: Passes to run.
      callback: Called as `callback(iteration, loss)` after each pass (1-based).
    """
    iterations = self.params.iterations if iterations is None else iterations
    for _ in range(iterations):
      loss = self.step()
      logging.debug("ALS iteration %d: loss %.6g", len(self.losses), loss)
      if callback is not None:
        callback(len(self.losses), loss)
    return list(self.losses)

  def loss(self) -> float:
    """The training objective at the current factors (see the module docstring)."""
    return float(_objective(self.user_factors, self.item_factors, self._edge_users,
                            self._edge_items, self._edge_a, self._edge_b,
                            tf.constant(self.user_degree, tf.float32),
                            tf.constant(self.item_degree, tf.float32),
                            self.params.reg, self.params.reg_scaled, self.params.implicit))

  # --------------------------------------------------------------- scoring
  def predict(self, user_index, item_index) -> np.ndarray:
    """[N] x_u . y_i of (user row, item row) pairs."""
    x = tf.gather(self.user_factors, np.asarray(user_index, np.int64))
    y = tf.gather(self.item_factors, np.asarray(item_index, np.int64))
    return tf.reduce_sum(x * y, axis=1).numpy()

  def fold_in(self, cols: np.ndarray, values: np.ndarray, mask: np.ndarray,
              scale: Optional[np.ndarray] = None) -> np.ndarray:
    """[B, k] vectors of new users from padded (item rows, values, mask[, scale]) [B, H]."""
    return fold_in(self.item_factors, self.gram(self.item_factors),
                   tf.constant(np.asarray(cols, np.int64)), tf.constant(values, tf.float32),
                   tf.constant(mask, tf.bool), self.params,
                   None if scale is None else tf.constant(scale, tf.float32)).numpy()


@tf.function(reduce_retracing=True)
def _objective(x, y, users, items, a, b, user_degree, item_degree, reg, reg_scaled, implicit):
  scores = tf.reduce_sum(tf.gather(x, users) * tf.gather(y, items), axis=1)
  if implicit:
    # sum over all pairs of s^2 (confidence 1, preference 0), corrected on the
    # observed pairs: c (1 - s)^2 - s^2 with c = a + 1 = b.
    everything = tf.reduce_sum(tf.linalg.matmul(x, x, transpose_a=True)
                               * tf.linalg.matmul(y, y, transpose_a=True))
    data = everything + tf.reduce_sum(b * tf.square(1.0 - scores) - tf.square(scores))
  else:
    data = tf.reduce_sum(tf.square(b - scores))
  user_weight = user_degree if reg_scaled else tf.ones_like(user_degree)
  item_weight = item_degree if reg_scaled else tf.ones_like(item_degree)
  penalty = (tf.reduce_sum(user_weight * tf.reduce_sum(tf.square(x), axis=1))
             + tf.reduce_sum(item_weight * tf.reduce_sum(tf.square(y), axis=1)))
  return data + reg * penalty
