"""Full-ranking retrieval metrics over the whole catalogue.

Every metric ranks the held-out item against the entire catalogue, never
against sampled candidates: sampled metrics overrate models and reorder them
(Krichene & Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020).

Ranking rule, shared by `evaluate_retrieval`, `evaluate_embeddings` and
`top_k`: items are sorted by descending score, equal scores by ascending
catalogue index (a stable descending sort), and excluded items are removed.
So the rank of a row's target is

  1 + #{non-excluded items with a strictly greater score}
    + #{non-excluded items with an equal score and a lower catalogue index}.

Rows are (query, target) pairs: leave-one-out evaluation gives one target per
row, and a user with several held-out items appears as several rows.

The work is done chunk by chunk in numpy (float32 BLAS matmul for embeddings,
counting for ranks) and TensorFlow's `top_k` for top-K lists (numpy's
`argpartition` where a chunk holds real infinite scores), so no [N, n_items] matrix
is ever held in memory.
"""

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

ScoreFn = Callable[[Any], Any]
Exclude = Union[Tuple[Any, Any], Sequence[Any], None]

__all__ = ["evaluate_retrieval", "evaluate_embeddings", "top_k", "prefix_metrics"]

_ALL = "all"


def evaluate_retrieval(score_fn: ScoreFn,
                       queries: Any,
                       targets: Any,
                       *,
                       n_items: int,
                       exclude: Exclude = None,
                       item_slices: Optional[Mapping[str, Any]] = None,
                       ks: Sequence[int] = (10, 50),
                       chunk_size: int = 512,
                       item_popularity: Any = None,
                       lists: bool = True) -> Dict[str, float]:
  """Full-ranking retrieval metrics for (query, target) rows.

  Metrics, each under `<slice>/<metric>` (e.g. `all/hr@10`, `cold/ndcg@10`):

  - `hr@K`: share of rows whose target has rank <= K.
  - `recall@K`: the same number (one target per row); both names are kept so
    reports that expect either find it.
  - `ndcg@K`: mean of 1 / log2(rank + 1) when rank <= K, else 0 (the ideal DCG
    of a single relevant item is 1).
  - `mrr`: mean of 1 / rank over the full ranking (no cut-off).
  - `count`: number of rows in the slice (an `int`).

  and for the `all` slice only (they describe the recommendation lists, not the
  targets):

  - `coverage@K`: share of the catalogue that appears in at least one top-K
    list (lists are taken after exclusions).
  - `avg_popularity@K`: mean `item_popularity` of every recommended item of
    every top-K list; only when `item_popularity` is given.

  A row belongs to a slice when its target item is in the slice's mask. A slice
  with no rows reports only `<slice>/count` = 0: its metrics are absent rather
  than NaN, so averaging or plotting the file never trips on NaN. The same holds
  for `all` when there are no rows at all.

  When K exceeds the catalogue, `hr@K` counts every row (every rank is at most
  `n_items`) and top-K lists hold the whole eligible catalogue. A row with fewer
  than K eligible items (after exclusions) recommends fewer than K items; only
  real items count towards coverage and popularity.

  Args:
    score_fn: Called as `score_fn(queries_chunk)`; returns float scores
      [B, n_items] over the catalogue in catalogue-index order (numpy, or
      anything `np.asarray` accepts, e.g. an eager tensor). Its output is
      copied, never modified. Larger is better; `-inf` is a valid score (such
      an item still ranks, after all finite ones); NaN is an error.
    queries: [N] anything sliceable by position: a numpy array, a list, a
      pandas Series (sliced with `.iloc`), a tensor, or a dict of such arrays
      (e.g. feature columns; each value is sliced). `queries[i]` belongs to
      row `i`.
    targets: [N] int catalogue index of each row's held-out item.
    n_items: Catalogue size; the width of `score_fn`'s output.
    exclude: Items to remove from each row's ranking (e.g. the user's training
      items): a CSR pair `(indptr [N + 1], indices [nnz])` given as a tuple (or
      any object with `indptr` and `indices` attributes, such as a scipy CSR
      matrix), or a list of N int arrays (None entries mean nothing excluded).
      Duplicates are harmless. A row's own target is never excluded, even if
      listed. Default: nothing excluded.
    item_slices: Dict slice name -> bool mask [n_items] (e.g. `{"cold": ...,
      "warm": ...}`). Names are non-empty strings without `/`; `all` is always
      reported and cannot be redefined.
    ks: Cut-offs K (positive ints) for `hr`, `ndcg`, `recall`, `coverage` and
      `avg_popularity`. Default (10, 50).
    chunk_size: Rows scored at a time; memory is about
      `chunk_size * n_items * 13` bytes. Default 512.
    item_popularity: Optional [n_items] finite numbers (e.g. training
      interaction counts) averaged over recommended items.
    lists: Also build the top-K lists behind `coverage@K` and
      `avg_popularity@K`. False gives the rank metrics only (`hr`, `recall`,
      `ndcg`, `mrr`), the same numbers several times faster: what early
      stopping and tuning need.

  Returns:
    Dict `<slice>/<metric>` -> value (floats; `count` is an int).

  Raises:
    ValueError: An argument has the wrong type, shape or range, or `score_fn`
      returns scores of the wrong shape or NaN scores (the message names the
      row).
  """
  n_items = _check_positive_int(n_items, "n_items")
  n_rows = _length(queries, "queries")

  def scorer(start, stop):
    return _negated_user_scores(score_fn, _take(queries, start, stop), start, stop - start,
                                n_items)

  return _checked_evaluate(scorer, n_rows, n_items, targets, exclude, item_slices, ks,
                           chunk_size, item_popularity, lists)


def _checked_evaluate(scorer, n_rows, n_items, targets, exclude, item_slices, ks, chunk_size,
                      item_popularity, lists=True) -> Dict[str, float]:
  """Checks the arguments shared by both entry points, then evaluates."""
  ks = _check_ks(ks)
  chunk_size = _check_positive_int(chunk_size, "chunk_size")
  targets = _check_targets(targets, n_rows, n_items)
  indptr, indices = _to_csr(exclude, n_rows)
  _check_exclude_range(indices, n_items)
  slices = _check_slices(item_slices, n_items)
  popularity = _check_popularity(item_popularity, n_items)
  return _evaluate(scorer, targets, n_rows, n_items, indptr, indices, slices, ks,
                   chunk_size, popularity, lists)


def evaluate_embeddings(query_embeddings: Any,
                        item_embeddings: Any,
                        targets: Any,
                        *,
                        exclude: Exclude = None,
                        item_slices: Optional[Mapping[str, Any]] = None,
                        ks: Sequence[int] = (10, 50),
                        chunk_size: int = 512,
                        item_popularity: Any = None,
                        lists: bool = True) -> Dict[str, float]:
  """`evaluate_retrieval` with scores = dot(query embedding, item embedding).

  Scores are computed chunk by chunk as float32 BLAS matmuls (float64 inputs are
  cast to float32 first), so no full [N, M] matrix is built. The catalogue is
  the rows of `item_embeddings`; all other arguments and the returned metrics
  are those of `evaluate_retrieval`.

  Args:
    query_embeddings: [N, d] finite query (user) embeddings, one per row.
    item_embeddings: [M, d] finite item embeddings in catalogue-index order.
    targets: [N] int catalogue index of each row's held-out item.
    exclude: As in `evaluate_retrieval`.
    item_slices: As in `evaluate_retrieval` (masks [M]).
    ks: As in `evaluate_retrieval`.
    chunk_size: As in `evaluate_retrieval`.
    item_popularity: As in `evaluate_retrieval` ([M]).
    lists: As in `evaluate_retrieval`.

  Returns:
    Dict `<slice>/<metric>` -> value, as `evaluate_retrieval`.

  Raises:
    ValueError: Embeddings are not 2-D, disagree in width, or are not finite;
      or any error of `evaluate_retrieval`.
  """
  query_embeddings, item_embeddings = _check_embeddings(query_embeddings, item_embeddings)
  n_rows, n_items = len(query_embeddings), len(item_embeddings)
  return _checked_evaluate(_embedding_scorer(query_embeddings, item_embeddings), n_rows,
                           n_items, targets, exclude, item_slices, ks, chunk_size,
                           item_popularity, lists)


def top_k(score_fn: ScoreFn,
          queries: Any,
          k: int,
          *,
          exclude: Exclude = None,
          chunk_size: int = 512) -> Tuple[np.ndarray, np.ndarray]:
  """Top-k items per query, ranked as in `evaluate_retrieval`.

  Descending score, equal scores by ascending catalogue index, excluded items
  removed. `k` larger than the catalogue is clamped to `n_items` (the width of
  `score_fn`'s output) rather than rejected, so a fixed `k` works on tiny test
  catalogues. A row with fewer than k eligible items (after exclusions) is
  padded at the end with index -1 and score -inf.

  Args:
    score_fn: As in `evaluate_retrieval`.
    queries: [N] as in `evaluate_retrieval`.
    k: Positive int, number of items per row.
    exclude: As in `evaluate_retrieval`, except that nothing is protected: every
      listed item is removed.
    chunk_size: Rows scored at a time. Default 512.

  Returns:
    `(indices, scores)`: int64 [N, min(k, n_items)] catalogue indices, best
    first, and their float scores [N, min(k, n_items)]. With N = 0 the catalogue
    size is unknown and the shapes are [0, k] (scores float32).

  Raises:
    ValueError: An argument has the wrong type, shape or range, `score_fn`
      returns scores of the wrong shape or width changing between chunks, or NaN
      scores (the message names the row).
  """
  k = _check_positive_int(k, "k")
  chunk_size = _check_positive_int(chunk_size, "chunk_size")
  n_rows = _length(queries, "queries")
  indptr, indices = _to_csr(exclude, n_rows)
  if n_rows == 0:
    return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
  out_idx, out_scores = [], []
  n_items = None
  for start in range(0, n_rows, chunk_size):
    stop = min(start + chunk_size, n_rows)
    chunk = _take(queries, start, stop)
    neg = _negated_user_scores(score_fn, chunk, start, stop - start, n_items)
    if n_items is None:
      # The catalogue size is only known once the first chunk is scored.
      n_items = neg.shape[1]
      _check_exclude_range(indices, n_items)
    sentinel = _sentinel(neg, start)
    rows, cols = _chunk_exclusions(indptr, indices, start, stop)
    neg[rows, cols] = sentinel
    idx, vals = _top_negated(neg, k, sentinel)
    out_idx.append(idx)
    out_scores.append(-vals)
  idx = np.concatenate(out_idx)
  scores = np.concatenate(out_scores)
  scores[idx < 0] = -np.inf  # Padding slots.
  return idx, scores


def prefix_metrics(metrics: Mapping[str, Any], split: str) -> Dict[str, Any]:
  """Prefixes metric keys with a split name, as `metrics.json` expects.

  Example:
    >>> prefix_metrics({"all/hr@10": 0.5}, "test")
    {'test/all/hr@10': 0.5}

  Args:
    metrics: Dict `<slice>/<metric>` -> value, e.g. from `evaluate_retrieval`.
    split: Split name such as `"test"` or `"valid"`; a non-empty string without
      `/`.

  Returns:
    New dict `<split>/<slice>/<metric>` -> value, in the same order.

  Raises:
    ValueError: `split` is not a non-empty string without `/`.
  """
  if not isinstance(split, str) or not split or "/" in split:
    raise ValueError("`split` should be a non-empty string without `/`, such as 'test'. "
                     f"Received: `split` = {split!r}.")
  return {f"{split}/{key}": value for key, value in metrics.items()}


# --- Core ------------------------------------------------------------------------


def _evaluate(scorer, targets, n_rows, n_items, indptr, indices, slices, ks, chunk_size,
              popularity, lists=True) -> Dict[str, float]:
  """Scores every chunk, then aggregates ranks and top-K lists into metrics."""
  k_max = min(max(ks), n_items)
  ranks = np.empty(n_rows, np.int64)
  # Coverage only needs "was this item ever recommended within the top K".
  covered = np.zeros((len(ks), n_items), bool)
  pop_sums = np.zeros(len(ks))
  pop_counts = np.zeros(len(ks), np.int64)
  for start in range(0, n_rows, chunk_size):
    stop = min(start + chunk_size, n_rows)
    neg = scorer(start, stop)
    sentinel = _sentinel(neg, start)
    chunk_targets = targets[start:stop]
    rows, cols = _chunk_exclusions(indptr, indices, start, stop)
    keep = cols != chunk_targets[rows]  # A row's own target is never excluded.
    neg[rows[keep], cols[keep]] = sentinel
    ranks[start:stop] = _ranks(neg, chunk_targets)
    if not lists:
      continue
    idx, _ = _top_negated(neg, k_max, sentinel)
    for j, k in enumerate(ks):
      top = idx[:, :min(k, n_items)]
      top = top[top >= 0]
      covered[j, top] = True
      if popularity is not None:
        pop_sums[j] += popularity[top].sum()
        pop_counts[j] += top.size

  metrics: Dict[str, float] = {}
  in_slice = {_ALL: np.ones(n_rows, bool)}
  for name, mask in slices.items():
    in_slice[name] = mask[targets]
  for name, rows in in_slice.items():
    slice_ranks = ranks[rows]
    count = int(slice_ranks.size)
    if count:
      for k in ks:
        hit = slice_ranks <= k
        metrics[f"{name}/hr@{k}"] = float(hit.mean())
        metrics[f"{name}/recall@{k}"] = float(hit.mean())
        gain = np.where(hit, 1.0 / np.log2(slice_ranks + 1.0), 0.0)
        metrics[f"{name}/ndcg@{k}"] = float(gain.mean())
      metrics[f"{name}/mrr"] = float((1.0 / slice_ranks).mean())
      if name == _ALL and lists:
        for j, k in enumerate(ks):
          metrics[f"{name}/coverage@{k}"] = float(covered[j].sum() / n_items)
          if popularity is not None:
            metrics[f"{name}/avg_popularity@{k}"] = (
                float(pop_sums[j] / pop_counts[j]) if pop_counts[j] else math.nan)
    metrics[f"{name}/count"] = count
  return metrics


def _sentinel(neg: np.ndarray, start: int) -> float:
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


def _ranks(neg: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """1-based stable-descending ranks of the targets.

  Args:
    neg: [B, M] negated scores, the sentinel of `_sentinel` where excluded.
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


def _top_negated(neg: np.ndarray, k: int,
                 sentinel: float) -> Tuple[np.ndarray, np.ndarray]:
  """Top-k per row of negated scores (ascending, ties by index, excluded last).

  Args:
    neg: [B, M] negated scores, `sentinel` where excluded.
    k: Positive int; clamped to M.
    sentinel: `np.inf` or `np.nan`, as chosen by `_sentinel`.

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


def _negated_user_scores(score_fn, chunk, start, n_chunk, n_items) -> np.ndarray:
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


def _embedding_scorer(query_embeddings: np.ndarray, item_embeddings: np.ndarray):
  """Returns `scorer(start, stop)` -> negated dot-product scores [B, M]."""

  def scorer(start, stop):
    # Negating the small query block is exact and saves a pass over [B, M].
    return np.matmul(-query_embeddings[start:stop], item_embeddings.T)

  return scorer


# --- Exclusions -------------------------------------------------------------------


def _to_csr(exclude: Exclude, n_rows: int) -> Tuple[np.ndarray, np.ndarray]:
  """Normalizes `exclude` to int64 `(indptr [n_rows + 1], indices)`."""
  if exclude is None:
    return np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int64)
  if isinstance(exclude, tuple) or (hasattr(exclude, "indptr") and hasattr(exclude, "indices")):
    if isinstance(exclude, tuple):
      if len(exclude) != 2:
        raise ValueError("`exclude` given as a tuple should be a CSR pair (indptr, indices); "
                         "pass a list for per-row arrays. Received: a tuple of length "
                         f"{len(exclude)}.")
      indptr, indices = exclude
    else:
      indptr, indices = exclude.indptr, exclude.indices
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indices.size == 0:
      indices = indices.astype(np.int64).reshape(0)
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu" or len(indptr) != n_rows + 1:
      raise ValueError(f"`exclude` indptr should be int [N + 1] = [{n_rows + 1}]. Received: "
                       f"dtype {indptr.dtype}, shape {indptr.shape}.")
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
      raise ValueError("`exclude` indices should be a 1-D int array. Received: dtype "
                       f"{indices.dtype}, shape {indices.shape}.")
    if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
      raise ValueError("`exclude` indptr should start at 0, never decrease and end at "
                       f"len(indices) = {len(indices)}. Received: indptr[0] = {indptr[0]}, "
                       f"indptr[-1] = {indptr[-1]}.")
    return indptr.astype(np.int64), indices.astype(np.int64)
  if isinstance(exclude, (str, bytes)) or not hasattr(exclude, "__len__"):
    raise ValueError("`exclude` should be a CSR tuple (indptr, indices) or a list of int "
                     f"arrays. Received: {type(exclude).__name__}.")
  if len(exclude) != n_rows:
    raise ValueError(f"`exclude` should have one entry per row, N = {n_rows}. Received: "
                     f"{len(exclude)} entries.")
  parts = []
  for row, items in enumerate(exclude):
    items = np.zeros(0, np.int64) if items is None else np.asarray(items)
    if items.size == 0:
      items = np.zeros(0, np.int64)
    if items.ndim != 1 or items.dtype.kind not in "iu":
      raise ValueError(f"`exclude[{row}]` should be a 1-D array of int item indices. Received: "
                       f"dtype {items.dtype}, shape {items.shape}.")
    parts.append(items.astype(np.int64))
  lengths = np.fromiter((len(p) for p in parts), np.int64, count=n_rows)
  indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  indices = np.concatenate(parts) if parts else np.zeros(0, np.int64)
  return indptr, indices


def _check_exclude_range(indices: np.ndarray, n_items: int) -> None:
  if indices.size and (indices.min() < 0 or indices.max() >= n_items):
    bad = int(indices[(indices < 0) | (indices >= n_items)][0])
    raise ValueError(f"`exclude` item indices should be in [0, n_items) = [0, {n_items}). "
                     f"Received: {bad}.")


def _chunk_exclusions(indptr, indices, start, stop) -> Tuple[np.ndarray, np.ndarray]:
  """(row within chunk, item) pairs excluded in rows [start, stop)."""
  counts = np.diff(indptr[start:stop + 1])
  rows = np.repeat(np.arange(stop - start), counts)
  return rows, indices[indptr[start]:indptr[stop]]


# --- Argument checks --------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"`{name}` should be a positive integer. Received: `{name}` = {value!r}.")
  return int(value)


def _check_ks(ks: Sequence[int]) -> Tuple[int, ...]:
  if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
    ks = (ks,)
  try:
    values = list(ks)
  except TypeError:
    values = None
  if not values or any(isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer))
                       or k < 1 for k in values):
    raise ValueError("`ks` should be a non-empty sequence of positive integers. "
                     f"Received: `ks` = {ks!r}.")
  return tuple(sorted({int(k) for k in values}))


def _length(queries: Any, name: str) -> int:
  if isinstance(queries, Mapping):
    if not queries:
      raise ValueError(f"`{name}` given as a dict should hold at least one array. Received: {{}}.")
    lengths = {key: len(value) for key, value in queries.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"`{name}` arrays should all have the same length. Received: "
                       f"lengths {lengths}.")
    return next(iter(lengths.values()))
  try:
    return len(queries)
  except TypeError:
    raise ValueError(f"`{name}` should be an array, list, Series, tensor or dict of arrays. "
                     f"Received: {type(queries).__name__}.") from None


def _take(queries: Any, start: int, stop: int) -> Any:
  if isinstance(queries, Mapping):
    return {key: _take(value, start, stop) for key, value in queries.items()}
  if hasattr(queries, "iloc"):
    return queries.iloc[start:stop]  # Positional, whatever the pandas index.
  return queries[start:stop]


def _check_targets(targets: Any, n_rows: int, n_items: int) -> np.ndarray:
  targets = np.asarray(targets)
  if targets.size == 0:
    targets = targets.astype(np.int64).reshape(0)
  if targets.ndim != 1 or targets.dtype.kind not in "iu":
    raise ValueError("`targets` should be a 1-D array of int catalogue indices. Received: "
                     f"dtype {targets.dtype}, shape {targets.shape}.")
  if len(targets) != n_rows:
    raise ValueError(f"`targets` should have one entry per query, N = {n_rows}. Received: "
                     f"{len(targets)} targets.")
  if targets.size and (targets.min() < 0 or targets.max() >= n_items):
    row = int(np.flatnonzero((targets < 0) | (targets >= n_items))[0])
    raise ValueError(f"`targets` should be in [0, n_items) = [0, {n_items}). Received: "
                     f"`targets[{row}]` = {targets[row]}.")
  return targets.astype(np.int64)


def _check_slices(item_slices: Optional[Mapping[str, Any]], n_items: int) -> Dict[str, np.ndarray]:
  if item_slices is None:
    return {}
  if not isinstance(item_slices, Mapping):
    raise ValueError("`item_slices` should be a dict of slice name -> bool mask [n_items]. "
                     f"Received: {type(item_slices).__name__}.")
  out = {}
  for name, mask in item_slices.items():
    if not isinstance(name, str) or not name or "/" in name or name == _ALL:
      raise ValueError("`item_slices` names should be non-empty strings without `/`, other "
                       f"than 'all' (always reported). Received: {name!r}.")
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_items,):
      raise ValueError(f"`item_slices[{name!r}]` should be a bool mask of shape [n_items] = "
                       f"[{n_items}]. Received: dtype {mask.dtype}, shape {mask.shape}.")
    out[name] = mask
  return out


def _check_popularity(item_popularity: Any, n_items: int) -> Optional[np.ndarray]:
  if item_popularity is None:
    return None
  pop = np.asarray(item_popularity)
  if pop.shape != (n_items,) or pop.dtype.kind not in "fiu":
    raise ValueError(f"`item_popularity` should be numbers of shape [n_items] = [{n_items}]. "
                     f"Received: dtype {pop.dtype}, shape {pop.shape}.")
  pop = pop.astype(np.float64)
  if not np.all(np.isfinite(pop)):
    raise ValueError("`item_popularity` should be finite. Received: a non-finite value at "
                     f"item {int(np.flatnonzero(~np.isfinite(pop))[0])}.")
  return pop


def _check_embeddings(query_embeddings: Any,
                      item_embeddings: Any) -> Tuple[np.ndarray, np.ndarray]:
  out = []
  for name, value in (("query_embeddings", query_embeddings),
                      ("item_embeddings", item_embeddings)):
    array = np.asarray(value)
    if array.ndim != 2 or array.dtype.kind not in "fiu":
      raise ValueError(f"`{name}` should be a 2-D array of numbers. Received: dtype "
                       f"{array.dtype}, shape {array.shape}.")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
      row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
      raise ValueError(f"`{name}` should be finite. Received: a non-finite value in row {row}.")
    out.append(array)
  queries, items = out
  if queries.shape[1] != items.shape[1]:
    raise ValueError("`query_embeddings` and `item_embeddings` should have the same width d. "
                     f"Received: {queries.shape[1]} and {items.shape[1]}.")
  if len(items) == 0:
    raise ValueError("`item_embeddings` should hold at least one item. Received: shape "
                     f"{items.shape}.")
  return queries, items
