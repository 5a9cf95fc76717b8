"""EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019) in closed form.

B = I - P / diag(P) with P = (X^T X + lambda I)^-1 and diag(B) = 0; a user's
scores are x_u B. With fewer users than items the inverse goes through the
users (Woodbury): P = (I - X^T M X) / lambda with M = (X X^T + lambda I)^-1,
so only a users x users matrix is inverted, and the training users' scores
X B = X - lambda (M X) / (1 - q), q = diag(X^T M X), need no items x items
matrix at all: that is how lambda is chosen cheaply.
"""

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
    self.gram = product.toarray().astype(np.float64)
    self._last = (None, None)  # (lambda, inverse): `weights` after a selection reuses it

  def _inverse(self, lam: float) -> np.ndarray:
    """(gram + lam I)^-1 by Cholesky (the matrix is symmetric positive definite)."""
    if self._last[0] == lam:
      return self._last[1]
    factor, info = lapack.dpotrf(self.gram + lam * np.eye(len(self.gram)), lower=False)
    if info == 0:
      inverse, info = lapack.dpotri(factor, lower=False)
    if info != 0:
      raise FloatingPointError(f"EASE: the Cholesky factorization failed (LAPACK info {info}) "
                               f"at lambda = {lam}; use a larger lambda.")
    self._last = (lam, _mirror_upper(inverse))
    return self._last[1]

  def _dual_terms(self, lam: float):
    """(M X [U, n] float32, q [n] float64) of the user-side form."""
    m_x = np.asarray(self.by_item @ self._inverse(lam).astype(np.float32), np.float32).T
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
      b = (p / -np.diag(p)[None, :]).astype(np.float32)
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
