"""Item-based k-nearest neighbours: cosine neighbours (`tfrec_music.models.neighbours`) and
their scoring.

sim(a, b) = x_a . x_b / (|x_a| |x_b| + shrink) over the items' user columns;
each item keeps its `k` most similar other items, and a user's score of
item j is the sum of sim(i, j) over their history items i that have j
among their neighbours (weighted by x_ui).
"""

import numpy as np
import scipy.sparse as sp

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.models.neighbours import cosine_neighbours  # noqa: F401  (the family's)
from tfrec_music.models.neighbours import neighbour_matrix  # noqa: F401


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
