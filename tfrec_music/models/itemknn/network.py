"""Item-based k-nearest neighbours: cosine neighbours and their scoring.

sim(a, b) = x_a . x_b / (|x_a| |x_b| + shrink) over the items' user columns;
each item keeps its `k` most similar other items, and a user's score of
item j is the sum of sim(i, j) over their history items i that have j
among their neighbours (weighted by x_ui).
"""

from typing import Tuple

import numpy as np
import scipy.sparse as sp

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

# Dense similarity entries computed at a time (a block of items x the catalogue).
BLOCK_ENTRIES = 1 << 24


def cosine_neighbours(matrix: sp.csr_matrix, k: int, shrink: float = 0.0,
                      block_entries: int = BLOCK_ENTRIES) -> Tuple[np.ndarray, np.ndarray]:
  """The top-`k` cosine neighbours of every item, most similar first.

  Args:
    matrix: [U, n_items] user x item values.
    k: Neighbours kept per item (clamped to n_items - 1).
    shrink: Added to the cosine denominator (damps pairs of rare items).
    block_entries: Dense similarities held at a time (memory: 4 bytes each).

  Returns:
    `(indices [n_items, k] int64, sims [n_items, k] float32)`; an item with
    fewer than `k` neighbours of positive similarity is padded with index -1
    and similarity 0. Equal similarities keep the lower item index first.
  """
  n = matrix.shape[1]
  k = max(0, min(int(k), n - 1))
  by_item = matrix.T.tocsr()
  norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1), np.float64).ravel())
  indices = np.full((n, k), -1, np.int64)
  sims = np.zeros((n, k), np.float32)
  if k == 0:
    return indices, sims
  block = max(1, block_entries // n)
  for start in range(0, n, block):
    stop = min(n, start + block)
    dots = (by_item[start:stop] @ matrix).toarray()
    denominator = (norms[start:stop, None] * norms[None, :] + shrink).astype(np.float32)
    sim = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
    sim[np.arange(stop - start), np.arange(start, stop)] = 0.0  # never its own neighbour
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sim, top, axis=1)
    order = np.lexsort((top, -top_sims), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    top_sims = np.take_along_axis(top_sims, order, axis=1)
    positive = top_sims > 0
    indices[start:stop] = np.where(positive, top, -1)
    sims[start:stop] = np.where(positive, top_sims, 0.0)
  return indices, sims


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
    cols = np.zeros((n, width), np.int64)
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
    targets = rows[:, tf.newaxis] * self.n_items + tf.gather(self.neighbours, cols)
    contributions = tf.gather(self.similarities, cols) * values[:, tf.newaxis]
    batch = tf.cast(batch, tf.int64)
    flat = tf.math.unsorted_segment_sum(tf.reshape(contributions, [-1]),
                                        tf.reshape(targets, [-1]), batch * self.n_items)
    return tf.reshape(flat, [batch, self.n_items])
