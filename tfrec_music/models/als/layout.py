"""ALS layout: each side's rows, their entries padded into dense blocks stacked by shape.

A block is H rows of about the same number of entries (rounded up to a
length class, `padded_length`), left-aligned in lines of D; blocks of one
shape are stacked so one call of one compiled program solves many of them
(`build_stacks`), and every stack of a shape runs the same program, whatever
the data set.
"""

import dataclasses
import itertools
import math
from typing import List, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

__all__ = ["Stack", "block_bounds", "build_stacks", "padded_length", "positions"]


@dataclasses.dataclass
class Stack:
  """A stack of B blocks of H rows of one side, entries left-aligned in lines of D.

  `index` [B, H, 2 + D] int32: the row solved (padding lines: the scratch
  row n), its number of entries, then the fixed-side rows of its entries
  (padding: 0). `coef` [B, H, 2 D + 1] float32: a, then b of each entry (0
  for padding), then the row's lambda (padding lines: 1). Blocks from
  `count` on are padding (scratch rows only) and are not solved.
  """

  index: tf.Tensor
  coef: tf.Tensor
  count: tf.Tensor

  @property
  def rows(self) -> tf.Tensor:
    """[B H] rows solved."""
    return tf.reshape(self.index[..., 0], [-1])

  @property
  def entries(self) -> int:
    """Padded entries of the blocks solved (the work of a solve)."""
    _, h, d = self.index.shape
    return int(self.count) * h * (d - 2)


def padded_length(degree: np.ndarray) -> np.ndarray:
  """Rounds row lengths up to 4, 6, 8, 12, 16, 24, 32, 48, ... (half-octaves)."""
  degree = np.maximum(degree, 1)
  octave = 2 ** np.ceil(np.log2(degree)).astype(np.int64)
  step = np.maximum(2, octave // 4)
  return np.maximum(4, np.ceil(degree / step) * step).astype(np.int64)


def block_bounds(lengths: np.ndarray, block_entries: int) -> List[Tuple[int, int, int, int]]:
  """Splits rows sorted by decreasing length into blocks of about `block_entries`.

  A block is [H, D]: D is the length of its first (longest) row and
  H = block_entries // D, so every block of rows of one length class has the
  same shape and XLA compiles it once. The last block's height is rounded up
  to a power of two (at least 8) instead.

  Returns:
    [(start, stop, height, length)] over the sorted rows.
  """
  out, start, n = [], 0, len(lengths)
  while start < n:
    length = int(lengths[start])
    height = max(1, block_entries // length)
    stop = min(n, start + height)
    if stop - start < height:
      height = min(height, max(8, 1 << int(math.ceil(math.log2(stop - start)))))
    out.append((start, stop, height, length))
    start = stop
  return out


def build_stacks(rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray,
                 n_rows: int, reg: float, reg_scaled: bool, block_entries: int,
                 stack: int) -> Tuple[List[Stack], np.ndarray]:
  """Lays the entries of every row out as padded dense blocks, stacked (see `_stacks`).

  Args:
    rows: [N] row (of this side) of each entry.
    cols: [N] fixed-side row of each entry.
    a: [N] entry coefficients a (see the solver module).
    b: [N] entry coefficients b.
    n_rows: Rows of this side (row n is the scratch row).
    reg: Lambda.
    reg_scaled: Scale lambda by each row's number of entries.
    block_entries: Padded entries a block (see `block_bounds`).
    stack: Blocks of `block_entries` a stack holds at most (0: one block).

  Returns:
    (stacks, largest first; degree [n_rows]).
  """
  order = np.lexsort((cols, rows))
  rows, cols, a, b = rows[order], cols[order], a[order], b[order]
  degree = np.bincount(rows, minlength=n_rows)
  starts = np.concatenate([[0], np.cumsum(degree)])
  active = np.flatnonzero(degree > 0)
  active = active[np.argsort(-degree[active], kind="stable")]
  blocks = []  # [(index, coef)] of each block
  for lo, hi, height, length in block_bounds(padded_length(degree[active]), block_entries):
    chunk = active[lo:hi]
    chunk_degree = degree[chunk]
    # Scatter each row's entries into its padded line.
    line = np.repeat(np.arange(len(chunk)), chunk_degree)
    position = np.arange(int(chunk_degree.sum())) - np.repeat(
        np.cumsum(chunk_degree) - chunk_degree, chunk_degree)
    entry = np.repeat(starts[chunk], chunk_degree) + position
    block_cols = np.zeros((height, length), np.int32)
    block_a = np.zeros((height, length), np.float32)
    block_b = np.zeros((height, length), np.float32)
    block_cols[line, position] = cols[entry]
    block_a[line, position] = a[entry]
    block_b[line, position] = b[entry]
    block_rows = np.full(height, n_rows, np.int32)
    block_rows[:len(chunk)] = chunk
    block_reg = np.ones(height, np.float32)
    block_reg[:len(chunk)] = reg * (chunk_degree if reg_scaled else 1.0)
    block_count = np.zeros(height, np.int32)
    block_count[:len(chunk)] = chunk_degree
    blocks.append((np.hstack([block_rows[:, None], block_count[:, None], block_cols]),
                   np.hstack([block_a, block_b, block_reg[:, None]])))
  return _stacks(blocks, n_rows, block_entries, stack), degree


def _stacks(blocks: List[Tuple[np.ndarray, np.ndarray]], n_rows: int, block_entries: int,
            stack: int) -> List[Stack]:
  """Stacks runs of consecutive blocks of one shape, largest stacks first.

  A stack holds up to `stack` * `block_entries` entries (at least one
  block; `stack` 0: one) and at most the run's length rounded up to a power
  of two: it is one call of one compiled program that solves its blocks in
  turn. The last stack of a run is padded with empty blocks to the height of
  the others, so the stacks of a shape share one program, the same for data
  sets of about the same size.
  """
  stacks = []
  for _, run in itertools.groupby(blocks, key=lambda block: block[0].shape):
    run = list(run)
    (lines, width), coef_width = run[0][0].shape, run[0][1].shape[1]
    height = max(1, min(stack * block_entries // (lines * (width - 2)),
                        1 << int(math.ceil(math.log2(len(run))))))
    # Empty blocks: scratch rows, lambda 1, nothing else.
    empty = (np.tile(np.eye(1, width, dtype=np.int32) * n_rows, (lines, 1)),
             np.tile(np.eye(1, coef_width, coef_width - 1, np.float32), (lines, 1)))
    for start in range(0, len(run), height):
      part = run[start:start + height]
      part += [empty] * (height - len(part))
      stacks.append(Stack(tf.constant(np.stack([i for i, _ in part])),
                          tf.constant(np.stack([c for _, c in part])),
                          tf.constant(min(height, len(run) - start))))
  return sorted(stacks, key=lambda s: -s.entries)


def positions(stacks: List[Stack], n_rows: int, height: int) -> tf.Tensor:
  """[height] line of each row in the stacks' concatenated solutions.

  Rows of no stack (no entries, or past `n_rows`) get one past the last line.
  """
  rows = np.concatenate([b.rows.numpy() for b in stacks] + [np.zeros(0, np.int32)])
  lines = np.flatnonzero(rows < n_rows)
  out = np.full(height, len(rows), np.int32)
  out[rows[lines]] = lines
  return tf.constant(out)
