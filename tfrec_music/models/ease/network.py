"""EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019) in closed form.

B = I - P / diag(P) with P = (X^T X + lambda I)^-1 and diag(B) = 0; a user's
scores are x_u B. With fewer users than items the inverse goes through the
users (Woodbury): P = (I - X^T M X) / lambda with M = (X X^T + lambda I)^-1,
so only a users x users matrix is inverted, and the training users' scores
X B = X - lambda (M X) / (1 - q), q = diag(X^T M X), need no items x items
matrix at all: that is how lambda is chosen cheaply.
"""

from typing import Dict

import numpy as np
from scipy.linalg import lapack
import scipy.sparse as sp

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


def dense_bytes(n_items: int) -> int:
  """Bytes of one float32 items x items matrix."""
  return 4 * int(n_items) ** 2


def check_catalogue(n_items: int, max_items: int) -> None:
  """Refuses a catalogue whose dense items x items matrix is over the limit.

  Raises:
    ValueError: naming the item count, the memory and how to go on.
  """
  if n_items > max_items:
    raise ValueError(
        f"EASE needs a dense items x items matrix: {n_items:,} items take "
        f"{dense_bytes(n_items) / 1e9:.2f} GB (float32), about 3 times that while fitting and "
        f"exporting, and the catalogue is over `max_items` = {max_items}. Raise the limit on "
        f"a machine with the memory (`--set max_items={n_items}`), keep fewer items (a higher "
        "`--kcore`), or use `--model itemknn` (sparse top-K neighbours).")


def _mirror_upper(a: np.ndarray, block: int = 512) -> np.ndarray:
  """Copies the upper triangle of square `a` onto its lower one, in place, by blocks."""
  for start in range(0, len(a), block):
    stop = min(len(a), start + block)
    a[start:stop, :start] = a[:start, start:stop].T
    diagonal = a[start:stop, start:stop]
    lower = np.tril_indices(stop - start, -1)
    diagonal[lower] = diagonal.T[lower]
  return a


# Memory the solver may keep in solved inverses.
CACHE_BYTES = 1 << 30


class EASESolver:
  """The closed form for several lambdas on one training matrix.

  Args:
    matrix: [U, n_items] user x item values X.
  """

  def __init__(self, matrix: sp.csr_matrix):
    self.matrix = matrix.astype(np.float32).tocsr()
    self.by_item = self.matrix.T.tocsr()
    users, items = matrix.shape
    self.dual = users < items
    product = (self.matrix @ self.by_item) if self.dual else (self.by_item @ self.matrix)
    self.gram = product.toarray().astype(np.float32)
    # Inverses kept by lambda, so `weights` after a selection does not solve again: the
    # last three (a local search's best is among them) while they fit in about 1 GB.
    self._inverses: Dict[float, np.ndarray] = {}
    self._keep = int(min(3, max(1, CACHE_BYTES // (4 * len(self.gram) ** 2))))

  def _inverse(self, lam: float) -> np.ndarray:
    """float32 (gram + lam I)^-1 by Cholesky (symmetric positive definite).

    float32 is enough: the relative error of the inverse is about cond * 1e-7
    (5e-7 measured at 4,750 users), far below what changes a ranking.
    """
    if lam in self._inverses:
      return self._inverses[lam]
    factor, info = lapack.spotrf(self.gram + np.float32(lam) * np.eye(len(self.gram),
                                                                     dtype=np.float32),
                                 lower=False, overwrite_a=True)
    if info == 0:
      inverse, info = lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
      raise FloatingPointError(f"EASE: the Cholesky factorization failed (LAPACK info {info}) "
                               f"at lambda = {lam}; use a larger lambda.")
    while len(self._inverses) >= self._keep:
      self._inverses.pop(next(iter(self._inverses)))
    self._inverses[lam] = _mirror_upper(inverse)
    return self._inverses[lam]

  def _dual_terms(self, lam: float):
    """(M X [U, n] float32, q [n] float64) of the user-side form."""
    m_x = np.asarray(self.by_item @ self._inverse(lam), np.float32).T
    q = np.asarray(self.matrix.multiply(m_x).sum(axis=0), np.float64).ravel()
    return np.ascontiguousarray(m_x), q

  def weights(self, lam: float) -> np.ndarray:
    """[n_items, n_items] float32 B of `lam` (zero diagonal)."""
    if self.dual:
      m_x, q = self._dual_terms(lam)
      # Off the diagonal B_ij = (X^T M X)_ij / (1 - q_j).
      b = np.asarray(self.by_item @ m_x, np.float32)
      b /= (1.0 - q).astype(np.float32)[None, :]
    else:
      p = self._inverse(lam)
      b = p / -np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b

  def training_scores(self, lam: float) -> np.ndarray:
    """[U, n_items] float32 X B of the training rows themselves."""
    if not self.dual:
      return np.asarray(self.matrix @ self.weights(lam), np.float32)
    m_x, q = self._dual_terms(lam)
    m_x *= (-lam / (1.0 - q)).astype(np.float32)[None, :]
    coo = self.matrix.tocoo()
    m_x[coo.row, coo.col] += coo.data
    return m_x


class DenseProduct(tf.Module):
  """History entries -> [B, n_items] scores x B through the dense B.

  Args:
    weights: [n_items, n_items] B.
  """

  def __init__(self, weights: np.ndarray):
    super().__init__(name="dense_product")
    self.n_items = int(weights.shape[1])
    self.weights = tf.Variable(weights, trainable=False, name="ease_weights")

  def __call__(self, rows: tf.Tensor, cols: tf.Tensor, values: tf.Tensor,
               batch: tf.Tensor) -> tf.Tensor:
    """[B, n_items] = (sparse history vectors) @ B."""
    shape = tf.stack([tf.cast(batch, tf.int64), tf.constant(self.n_items, tf.int64)])
    histories = tf.sparse.reorder(tf.SparseTensor(tf.stack([rows, cols], axis=1), values, shape))
    return tf.sparse.sparse_dense_matmul(histories, self.weights)
