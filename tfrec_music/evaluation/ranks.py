"""Ranks and top-k lists of one chunk of negated scores (the retrieval evaluation's core).

Scores are negated so that ascending numpy routines (argpartition, lexsort,
NaN-last ordering) give the descending, index-stable ranking of
`tfrec_music.evaluation.retrieval`; excluded items hold a sentinel that sorts last.
"""

from typing import Tuple

import numpy as np


def exclusion_sentinel(neg: np.ndarray, start: int) -> float:
  """Checks a chunk of negated scores for NaN; picks the value marking exclusions.

  Excluded items must sort after every real score and never count as better or
  tied with a target. +inf does that as long as no real score is -inf (negated
  +inf), and keeps numpy's fast SIMD partition (NaN makes `argpartition` about
  4x slower). Chunks with real -inf scores use NaN, which compares false with
  everything and which numpy sorts last.

  Args:
    neg: [B, M] negated scores of rows `start`...
    start: Index of the chunk's first row, for the error message.

  Returns:
    `np.inf` or `np.nan`.

  Raises:
    ValueError: A score is NaN (the message names the row and item).
  """
  # One cheap reduction flags every row holding NaN or an infinity (or sums
  # overflowing, which only sends the row to the exact check below).
  with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is expected here.
    odd = np.flatnonzero(~np.isfinite(neg.sum(axis=1)))
  if not odd.size:
    return np.inf
  sub = neg[odd]
  nan_rows = np.isnan(sub).any(axis=1)
  if nan_rows.any():
    row = int(odd[np.argmax(nan_rows)])
    col = int(np.argmax(np.isnan(neg[row])))
    raise ValueError(f"Scores should not be NaN. Received: NaN at row {start + row} (item "
                     f"{col}). NaN cannot be ranked; check the model for NaN weights or inputs, "
                     "or give unscorable items -inf.")
  return np.nan if np.isposinf(sub).any() else np.inf


def target_ranks(neg: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """1-based stable-descending ranks of the targets.

  Args:
    neg: [B, M] negated scores, the sentinel of `exclusion_sentinel` where excluded.
    targets: [B] target indices (never excluded, so never the sentinel).

  Returns:
    int64 [B] ranks.
  """
  b, m = neg.shape
  own = neg[np.arange(b), targets][:, None]
  better = np.count_nonzero(neg < own, axis=1)
  equal = np.count_nonzero(neg == own, axis=1)  # Includes the target itself.
  # Exact ties are rare with float scores, so the index tie-break is only paid
  # for the rows that have them.
  tied = np.flatnonzero(equal > 1)
  if tied.size:
    lower = np.arange(m)[None, :] < targets[tied][:, None]
    better[tied] += np.count_nonzero((neg[tied] == own[tied]) & lower, axis=1)
  return better.astype(np.int64) + 1


def top_negated(neg: np.ndarray, k: int,
                 sentinel: float) -> Tuple[np.ndarray, np.ndarray]:
  """Top-k per row of negated scores (ascending, ties by index, excluded last).

  Args:
    neg: [B, M] negated scores, `sentinel` where excluded.
    k: Positive int; clamped to M.
    sentinel: `np.inf` or `np.nan`, as chosen by `exclusion_sentinel`.

  Returns:
    `(indices, values)`: int64 [B, min(k, M)] and the negated scores there;
    slots past a row's eligible items hold index -1 and the sentinel.
  """
  b, m = neg.shape
  k = min(k, m)
  if k < m and sentinel == np.inf and neg.dtype in (np.float32, np.float64):
    # TensorFlow's top_k (multi-threaded, partial heap) orders equal values by
    # lower index first, which is exactly this ranking, and is several times
    # faster than numpy's argpartition + tie repair + lexsort below. Excluded
    # items (+inf negated) come out last.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    values, indices = tf.math.top_k(tf.negative(tf.constant(neg)), k=k, sorted=True)
    vals = np.negative(values.numpy())
    idx = indices.numpy().astype(np.int64)
    idx[vals == sentinel] = -1
    return idx, vals
  if k == m:
    idx = np.argsort(neg, axis=1, kind="stable")
    vals = np.take_along_axis(neg, idx, axis=1)
  else:
    # With kth=k, positions < k hold the k smallest values and position k the
    # (k+1)-th, so a tie across the cut shows as "position k equals the
    # largest selected value". argpartition breaks such ties arbitrarily;
    # those rows are redone below with the index rule.
    part = np.argpartition(neg, k, axis=1)
    idx = part[:, :k]
    vals = np.take_along_axis(neg, idx, axis=1)
    cut = np.fmax.reduce(vals, axis=1)  # NaN (padding) ignored.
    after = np.take_along_axis(neg, part[:, k:k + 1], axis=1)[:, 0]
    # A cut at the sentinel means the row has fewer than k eligible items, all
    # of them selected already.
    tied = np.flatnonzero((after == cut) & (cut != sentinel))
    if tied.size:
      sub = neg[tied]
      cut_t = cut[tied][:, None]
      less = sub < cut_t
      need = k - np.count_nonzero(less, axis=1)
      equal = sub == cut_t
      # The lowest-index tied items fill the remaining slots.
      chosen = less | (equal & (np.cumsum(equal, axis=1, dtype=np.int32) <= need[:, None]))
      r, c = np.nonzero(chosen)  # Exactly k per row, row-major.
      idx[tied] = c.reshape(-1, k)
      vals[tied] = sub[r, c].reshape(-1, k)
    order = np.lexsort((idx, vals), axis=1)  # The sentinel (+inf or NaN) sorts last.
    idx = np.take_along_axis(idx, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
  idx = idx.astype(np.int64, copy=False)
  idx[np.isnan(vals) if np.isnan(sentinel) else vals == sentinel] = -1
  return idx, vals


def negated_scores(score_fn, chunk, start, n_chunk, n_items) -> np.ndarray:
  """Calls `score_fn`, checks its output and returns fresh negated scores.

  Working with negated scores lets ascending numpy routines (argpartition,
  lexsort, NaN-last ordering) give the descending, index-stable ranking.
  """
  raw = score_fn(chunk)
  scores = np.asarray(raw)
  if scores.ndim != 2 or scores.shape[0] != n_chunk or (
      n_items is not None and scores.shape[1] != n_items):
    want = f"[{n_chunk}, {n_items if n_items is not None else 'n_items'}]"
    raise ValueError(f"`score_fn` should return scores of shape [batch, n_items] = {want} "
                     f"for rows {start}..{start + n_chunk - 1}. Received: shape "
                     f"{tuple(scores.shape)}.")
  if scores.shape[1] == 0:
    raise ValueError("`score_fn` should score at least one item. Received: shape "
                     f"{tuple(scores.shape)}.")
  if scores.dtype.kind not in "fiu":
    raise ValueError("`score_fn` should return real numbers. Received: dtype "
                     f"{scores.dtype}.")
  if scores.dtype.kind != "f":
    scores = scores.astype(np.float64)
  elif scores.dtype.itemsize < 4:
    scores = scores.astype(np.float32)  # float16 is exact in float32 and much faster.
  return np.negative(scores)  # A new array: the caller's scores stay untouched.


def embedding_scorer(query_embeddings: np.ndarray, item_embeddings: np.ndarray):
  """Returns `scorer(start, stop)` -> negated dot-product scores [B, M]."""

  def scorer(start, stop):
    # Negating the small query block is exact and saves a pass over [B, M].
    return np.matmul(-query_embeddings[start:stop], item_embeddings.T)

  return scorer
