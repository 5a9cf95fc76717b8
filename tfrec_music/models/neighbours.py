"""Top-K cosine neighbours of every item, and scoring through them in TensorFlow.

Shared by the families that score with item neighbours: `itemknn` (a user's
history through its items' neighbours) and `playlist_mf` (the seeds'
co-occurrence term).
"""

from typing import Tuple

import numpy as np
import scipy.sparse as sp

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

# Similarity entries a block of items may hold while its neighbours are chosen.
BLOCK_ENTRIES = 1 << 24


def cosine_neighbours(matrix: sp.csr_matrix, k: int, shrink: float = 0.0,
                      block_entries: int = BLOCK_ENTRIES) -> Tuple[np.ndarray, np.ndarray]:
  """The top-`k` cosine neighbours of every item, most similar first.

  Only pairs of items that share a user have a similarity above zero, so the
  work is the sparse product of the items' columns with the matrix, a block
  of items at a time, never an items x items array: a 170k-track catalogue of
  5k playlists takes seconds where a dense pass over every pair took minutes.

  Args:
    matrix: [U, n_items] user x item values (>= 0).
    k: Neighbours kept per item (clamped to n_items - 1).
    shrink: Added to the cosine denominator (damps pairs of rare items).
    block_entries: Bound on the similarity entries a block of items may hold
      (memory: about 16 bytes each), from each item's users' row lengths.

  Returns:
    `(indices [n_items, k] int64, sims [n_items, k] float32)`; an item with
    fewer than `k` neighbours of positive similarity is padded with index -1
    and similarity 0. Equal similarities keep the lower item index first.
  """
  matrix = sp.csr_matrix(matrix)
  n = matrix.shape[1]
  k = max(0, min(int(k), n - 1))
  by_item = matrix.T.tocsr()
  norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1), np.float64).ravel())
  indices = np.full((n, k), -1, np.int64)
  sims = np.zeros((n, k), np.float32)
  if k == 0:
    return indices, sims
  # An item's similarities are at most the summed lengths of its users' rows.
  reach = np.cumsum(np.asarray(by_item @ np.diff(matrix.indptr).astype(np.float64)).ravel())
  start = 0
  while start < n:
    before = reach[start - 1] if start else 0.0
    stop = max(start + 1, min(n, int(np.searchsorted(reach, before + block_entries, "right"))))
    _block_neighbours(by_item[start:stop] @ matrix, start, norms, shrink, k, indices, sims)
    start = stop
  return indices, sims


def _block_neighbours(product: sp.spmatrix, start: int, norms: np.ndarray, shrink: float,
                      k: int, indices: np.ndarray, sims: np.ndarray) -> None:
  """Writes the top-`k` rows of items `start`.. from their sparse dot products [b, n]."""
  product = sp.csr_matrix(product)
  rows = np.repeat(np.arange(product.shape[0]), np.diff(product.indptr))
  cols, dots = product.indices.astype(np.int64), product.data.astype(np.float32)
  denominator = (norms[start + rows] * norms[cols] + shrink).astype(np.float32)
  sim = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
  keep = (sim > 0) & (cols != start + rows)  # never its own neighbour
  rows, cols, sim = rows[keep], cols[keep], sim[keep]
  order = np.lexsort((cols, -sim, rows))
  rows, cols, sim = rows[order], cols[order], sim[order]
  rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
  take = rank < k
  indices[start + rows[take], rank[take]] = cols[take]
  sims[start + rows[take], rank[take]] = sim[take]


def neighbour_matrix(indices: np.ndarray, sims: np.ndarray, k: int) -> sp.csr_matrix:
  """[n_items, n_items] CSR of each item's first `k` neighbours (row i: item i's)."""
  n = len(indices)
  cols, values = indices[:, :k], sims[:, :k]
  keep = cols >= 0
  rows = np.broadcast_to(np.arange(n)[:, None], cols.shape)
  return sp.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=(n, n), dtype=np.float32)


class NeighbourProduct(tf.Module):
  """History entries -> [B, n_items] scores through each item's neighbour list.

  Args:
    matrix: [n_items, n_items] CSR neighbour matrix (`neighbour_matrix`).
  """

  def __init__(self, matrix: sp.csr_matrix):
    super().__init__(name="neighbour_product")
    n = matrix.shape[0]
    width = max(1, int(np.diff(matrix.indptr).max(initial=0)))
    # int32 ids: an export holds n_items x width of them (8 bytes a slot with the sims).
    cols = np.zeros((n, width), np.int32)
    values = np.zeros((n, width), np.float32)
    counts = np.diff(matrix.indptr)
    slots = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
    rows = np.repeat(np.arange(n), counts)
    cols[rows, slots] = matrix.indices
    values[rows, slots] = matrix.data
    self.n_items = n
    # Padding slots point at item 0 with similarity 0: they add nothing.
    self.neighbours = tf.Variable(cols, trainable=False, name="neighbours")
    self.similarities = tf.Variable(values, trainable=False, name="similarities")

  def __call__(self, rows: tf.Tensor, cols: tf.Tensor, values: tf.Tensor,
               batch: tf.Tensor) -> tf.Tensor:
    """[B, n_items] sum over entries (row, col, value) of value * sim(col, .)."""
    targets = rows[:, tf.newaxis] * self.n_items + tf.cast(tf.gather(self.neighbours, cols),
                                                           tf.int64)
    contributions = tf.gather(self.similarities, cols) * values[:, tf.newaxis]
    batch = tf.cast(batch, tf.int64)
    flat = tf.math.unsorted_segment_sum(tf.reshape(contributions, [-1]),
                                        tf.reshape(targets, [-1]), batch * self.n_items)
    return tf.reshape(flat, [batch, self.n_items])
