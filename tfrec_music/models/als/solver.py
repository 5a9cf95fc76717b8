"""ALS solver: padded blocks of rows (`layout`), solved with XLA-compiled batched tf.linalg.

The recommender idea: a rating (or a confidence that a user likes a track)
is the dot product of a user vector and a track vector. With the track
vectors fixed, every user's vector is the solution of a small ridge
regression, and the other way round, so the two sides are solved in turn.

- Explicit: minimize sum_obs (r_ui - x_u . y_i)^2 + lambda (sum_u n_u^s |x_u|^2
  + sum_i n_i^s |y_i|^2), s = 1 with `reg_scaled` (ALS-WR, as Spark), else 0.
- Implicit (Hu, Koren and Volinsky 2008): minimize sum_{u,i} c_ui (p_ui -
  x_u . y_i)^2 + the same penalty, c = 1 + alpha * f(plays) on observed pairs
  (p = 1), c = 1 elsewhere (p = 0). The Gram matrix Y'Y carries the
  unobserved pairs, so a solve touches only the row's observed entries.

Both are `A_u x_u = b_u`, `A_u = G + sum_e a_e y_e y_e' + lambda_u I`,
`b_u = sum_e b_e y_e` over the row's entries e (explicit: a = 1, b = r, G = 0;
implicit: a = c - 1, b = c, G = Y'Y).
"""

import concurrent.futures
import dataclasses
import logging
import math
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.als import layout

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
    block_entries: Padded entries per solve block (a block's gathered
      vectors, `block_entries * rank` floats, should stay in cache).
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
  block_entries: int = 1 << 13
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
      raise ValueError("`alpha` should be a non-negative number. "
                       f"Received: `alpha` = {self.alpha!r}.")
    if not isinstance(self.block_entries, (int, np.integer)) or self.block_entries <= 0:
      raise ValueError("`block_entries` should be a positive integer. "
                       f"Received: `block_entries` = {self.block_entries!r}.")
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


# ------------------------------------------------------------------ solves
def _data_loss(scores, b, count, implicit):
  """Sum over a block's real entries of the data term (see `ALSSolver.step`).

  Args:
    scores: [H, D] x_u . y_e of every entry of the block's lines.
    b: [H, D] entry coefficients (implicit: the confidence c).
    count: [H] real entries of each line (left-aligned).
    implicit: The feedback kind.
  """
  mask = tf.sequence_mask(count, tf.shape(scores)[1], scores.dtype)
  if implicit:
    # c (1 - s)^2 - s^2 (the s^2 of every pair is added once, via the Grams).
    return tf.reduce_sum(mask * (b * tf.square(1.0 - scores) - tf.square(scores)))
  return tf.reduce_sum(mask * tf.square(b - scores))


def _unpack(fixed, index, coef):
  """(yg [H, D, k], rows, count, a, b, reg) of a block (see `layout.Stack`)."""
  length = tf.shape(index)[1] - 2
  yg = tf.gather(fixed, index[:, 2:])
  return (yg, index[:, 0], index[:, 1], coef[:, :length], coef[:, length:2 * length],
          coef[:, 2 * length])


def _cg_rows(fixed, current, gram, index, coef, steps, implicit):
  """Warm-started conjugate gradient on one block; returns (x [H, k], data loss)."""
  yg, rows, count, a, b, reg = _unpack(fixed, index, coef)

  def matvec(v, proj, rhs=0.0):
    """A v - yg' rhs, given proj = yg v [H, D]."""
    return (tf.linalg.matmul(v, gram) + tf.linalg.matvec(yg, proj * a - rhs, transpose_a=True)
            + reg[:, tf.newaxis] * v)

  x = tf.gather(current, rows)
  scores = tf.linalg.matvec(yg, x)                                  # yg x, kept up to date
  r = -matvec(x, scores, b)  # b - A x in one pass over yg
  p = r
  rs = tf.reduce_sum(r * r, axis=1, keepdims=True)
  for _ in tf.range(steps):
    proj = tf.linalg.matvec(yg, p)
    ap = matvec(p, proj)
    step = tf.math.divide_no_nan(rs, tf.reduce_sum(p * ap, axis=1, keepdims=True))
    x += step * p
    scores += step * proj
    r -= step * ap
    rs_new = tf.reduce_sum(r * r, axis=1, keepdims=True)
    p = r + tf.math.divide_no_nan(rs_new, rs) * p
    rs = rs_new
  return x, _data_loss(scores, b, count, implicit)


@tf.function(jit_compile=True)
def _cg_stack(fixed, current, gram, index, coef, count, steps, implicit):
  """`_cg_rows` on the first `count` blocks of a stack in turn.

  One block's gathered vectors stay in cache, and a call solves many blocks
  (on CPU a call costs the thread pool a hand-off).

  Returns:
    (x [B H, k] (zeros for the blocks not solved), data loss).
  """
  def solve(i, x, loss):
    block_x, block_loss = _cg_rows(fixed, current, gram, index[i], coef[i], steps, implicit)
    return i + 1, tf.tensor_scatter_nd_update(x, [[i]], block_x[tf.newaxis]), loss + block_loss

  x = tf.zeros([tf.shape(index)[0], tf.shape(index)[1], tf.shape(gram)[0]], gram.dtype)
  _, x, loss = tf.while_loop(lambda i, *_: i < count, solve, (0, x, tf.zeros([], gram.dtype)))
  return tf.reshape(x, [-1, tf.shape(gram)[0]]), loss


@tf.function(jit_compile=True)
def _normal_block(fixed, gram, index, coef):
  """A [H, k, k] and rhs [H, k] of one block."""
  yg, _, _, a, b, reg = _unpack(fixed, index, coef)
  eye = tf.eye(tf.shape(gram)[0], dtype=gram.dtype)
  a_matrix = (tf.linalg.matmul(yg * a[..., tf.newaxis], yg, transpose_a=True) + gram
              + reg[:, tf.newaxis, tf.newaxis] * eye)
  return a_matrix, tf.linalg.matvec(yg, b, transpose_a=True)


@tf.function(jit_compile=True)
def _block_loss(fixed, index, coef, x, implicit):
  yg, _, count, _, b, _ = _unpack(fixed, index, coef)
  return _data_loss(tf.linalg.matvec(yg, x), b, count, implicit)


@tf.function(jit_compile=True)
def _objective(users, items, user_gram, item_gram, user_weight, item_weight, data, reg):
  """`data` + trace(X'X Y'Y) (zero Grams: explicit) + reg * the penalty."""
  penalty = (tf.reduce_sum(user_weight * tf.reduce_sum(tf.square(users), axis=1))
             + tf.reduce_sum(item_weight * tf.reduce_sum(tf.square(items), axis=1)))
  return data + tf.reduce_sum(user_gram * item_gram) + reg * penalty


def _flat(fn, *args) -> Callable:
  """`fn` traced for `args` (Python values static): tensor arguments -> list of outputs.

  The solver calls one program per stack and half-step; the traced
  function's flat call (TF 2.20) costs a tenth of the Python time of a
  `tf.function` call.
  """
  concrete = fn.get_concrete_function(*args)
  inference = getattr(concrete, "inference_fn", None)
  if inference is not None and hasattr(inference, "call_flat"):
    return inference.call_flat
  return lambda *tensors: tf.nest.flatten(concrete(*tensors))


class _StackSolve:
  """One stack's compiled solve: `(fixed, current, gram) -> (x [B H, k], data loss)`."""

  def __init__(self, block: layout.Stack, fixed: tf.Tensor, current: tf.Tensor,
               gram: tf.Tensor, params: ALSParams):
    self.cholesky = params.solver == "cholesky"
    self.steps = tf.constant(params.cg_steps)
    if self.cholesky:  # stacks of one block
      self.index, self.coef = block.index[0], block.coef[0]
      self._normal = _flat(_normal_block, fixed, gram, self.index, self.coef)
      x = tf.TensorSpec([self.index.shape[0], params.rank], tf.float32)
      self._loss = _flat(_block_loss, fixed, self.index, self.coef, x, params.implicit)
    else:
      self.index, self.coef, self.count = block.index, block.coef, block.count
      self._cg = _flat(_cg_stack, fixed, current, gram, block.index, block.coef, block.count,
                       self.steps, params.implicit)

  def __call__(self, fixed: tf.Tensor, current: tf.Tensor, gram: tf.Tensor):
    if not self.cholesky:
      return self._cg(fixed, current, gram, self.index, self.coef, self.count, self.steps)
    # XLA builds A; TF's batched Cholesky (much faster than XLA's on CPU) solves it.
    a_matrix, rhs = self._normal(fixed, gram, self.index, self.coef)
    x = tf.linalg.cholesky_solve(tf.linalg.cholesky(a_matrix), rhs[..., tf.newaxis])[..., 0]
    return x, self._loss(fixed, self.index, self.coef, x)[0]


_POOL: Optional[concurrent.futures.ThreadPoolExecutor] = None
# Blocks of `block_entries` a CG stack holds at most.
_STACK_BLOCKS = 8


def _map(fn: Callable, items: Sequence) -> list:
  """`[fn(item) for item in items]` on a pool of one thread per core.

  On CPU, XLA programs launched from one graph run one at a time; eager
  calls from several threads run side by side, so the stacks of a half-step
  are dispatched from threads, largest first (the inter-op thread setting
  bounds them).
  """
  global _POOL
  if _POOL is None:
    workers = tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count() or 1
    _POOL = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="als_block")
  return list(_POOL.map(fn, items))


def _normal_equations(fixed, gram, cols, a, b, reg):
  """A [B, k, k] and rhs [B, k] of padded rows (fold-in; no XLA)."""
  yg = tf.gather(fixed, cols)                                       # [B, D, k]
  a_matrix = tf.linalg.matmul(yg * a[..., tf.newaxis], yg, transpose_a=True)
  eye = tf.eye(tf.shape(fixed)[1], dtype=fixed.dtype)
  a_matrix += gram[tf.newaxis] + reg[:, tf.newaxis, tf.newaxis] * eye
  rhs = tf.einsum("bd,bdk->bk", b, yg)
  return a_matrix, rhs


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

  Each row's entries are laid out in padded blocks (rows grouped by length,
  `layout.block_bounds`); a block gathers its fixed-side vectors once and
  solves all its rows together, in one XLA program per stack of blocks of
  one shape (the data term of the loss comes out of the item blocks), the
  stacks of a half-step dispatched from a pool of threads, so the same code
  runs on CPU, GPU or TPU.

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
    for name, index, n in (("user_index", user_index, n_users),
                           ("item_index", item_index, n_items)):
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
    a, b = edge_coefficients(values, params,
                             None if scale is None else np.asarray(scale, np.float64))
    a, b = a.astype(np.float32), b.astype(np.float32)
    shape = (params.reg, params.reg_scaled, params.block_entries,
             0 if params.solver == "cholesky" else _STACK_BLOCKS)
    self.user_blocks, self.user_degree = layout.build_stacks(
        user_index, item_index, a, b, n_users, *shape)
    self.item_blocks, self.item_degree = layout.build_stacks(
        item_index, user_index, a, b, n_items, *shape)
    rng = np.random.default_rng(params.seed)
    scale = params.init_scale / math.sqrt(params.rank)
    # Both sides' factors are kept padded with zero rows to one height (the
    # scratch row n of each side, where padding lines point, among them):
    # blocks of one shape then share one compiled program across the sides.
    height = max(self.n_users, self.n_items) + 1
    initial = [rng.normal(0.0, scale, (n, params.rank)) * (degree > 0)[:, None]
               for n, degree in ((n_users, self.user_degree), (n_items, self.item_degree))]
    self._factors = [tf.constant(np.pad(x, [[0, height - len(x)], [0, 0]]).astype(np.float32))
                     for x in initial]
    self._weights = tuple(tf.constant(np.pad(d if params.reg_scaled else np.ones_like(d),
                                             [0, height - len(d)]), tf.float32)
                          for d in (self.user_degree, self.item_degree))
    self._reg = tf.constant(params.reg, tf.float32)  # a tensor: one trace for every lambda
    self._solves = [None, None]
    self._positions = tuple(layout.positions(blocks, n, height) for blocks, n in (
        (self.user_blocks, n_users), (self.item_blocks, n_items)))
    self.losses: List[float] = []

  # ----------------------------------------------------------------- steps
  def gram(self, factors: tf.Tensor) -> tf.Tensor:
    """[k, k] Y'Y for implicit feedback, zeros for explicit."""
    if self.params.implicit:
      return tf.linalg.matmul(factors, factors, transpose_a=True)
    return tf.zeros([self.params.rank, self.params.rank], tf.float32)

  @property
  def user_factors(self) -> tf.Tensor:
    """[n_users, k] user vectors."""
    return self._factors[0][:self.n_users]

  @property
  def item_factors(self) -> tf.Tensor:
    """[n_items, k] item vectors."""
    return self._factors[1][:self.n_items]

  def _solve_side(self, side: int, fixed: tf.Tensor, current: tf.Tensor, gram: tf.Tensor
                  ) -> Tuple[tf.Tensor, tf.Tensor]:
    """`_half_step` on factors padded to the common height (see `__init__`).

    The stacks' solutions are concatenated and gathered back into row order
    (rows without entries: zero).
    """
    if self._solves[side] is None:
      blocks = (self.user_blocks, self.item_blocks)[side]
      self._solves[side] = [_StackSolve(b, fixed, current, gram, self.params) for b in blocks]
    solved = _map(lambda solve: solve(fixed, current, gram), self._solves[side])
    if not solved:
      return tf.zeros_like(current), tf.zeros([])
    lines = tf.concat([x for x, _ in solved] + [tf.zeros([1, current.shape[1]])], 0)
    return tf.gather(lines, self._positions[side]), tf.add_n([loss for _, loss in solved])

  def _half_step(self, side: int, fixed: tf.Tensor, current: tf.Tensor
                 ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Solves every row of one side (0: users, 1: items) given `fixed`.

    Returns:
      (new factors of the side, data loss of its entries at them).
    """
    height = int(self._factors[0].shape[0])
    out, loss = self._solve_side(
        side, tf.pad(fixed, [[0, height - int(fixed.shape[0])], [0, 0]]),
        tf.pad(current, [[0, height - int(current.shape[0])], [0, 0]]), self.gram(fixed))
    return out[:int(current.shape[0])], loss

  def step(self) -> float:
    """One alternating pass (users, then items); returns the objective after it.

    Implicit: sum over all pairs of s^2 (trace of X'X Y'Y) plus, over the
    observed pairs, c (1 - s)^2 - s^2; explicit: (r - s)^2 over the observed
    pairs; then the penalty (see the module docstring).
    """
    users, items = self._factors
    users, _ = self._solve_side(0, items, users, self.gram(items))
    user_gram = self.gram(users)
    items, data = self._solve_side(1, users, items, user_gram)
    self._factors = [users, items]
    loss = float(_objective(users, items, user_gram, self.gram(items), *self._weights, data,
                            self._reg))
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
