"""Top-K cosine neighbours of every item over a sparse matrix's columns.

Shared by the families that score with item neighbours: `itemknn` (a user's
history through its items' neighbours) and `playlist_mf` (the seeds'
co-occurrence term).
"""

from typing import Tuple

import numpy as np
import scipy.sparse as sp

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
