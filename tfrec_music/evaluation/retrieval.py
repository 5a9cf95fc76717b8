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
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfrec_music.evaluation.exclusions import Exclude
from tfrec_music.evaluation.exclusions import check_exclusion_range
from tfrec_music.evaluation.exclusions import chunk_exclusions
from tfrec_music.evaluation.exclusions import exclusions_csr
from tfrec_music.evaluation.ranks import embedding_scorer
from tfrec_music.evaluation.ranks import exclusion_sentinel
from tfrec_music.evaluation.ranks import negated_scores
from tfrec_music.evaluation.ranks import target_ranks
from tfrec_music.evaluation.ranks import top_negated
from tfrec_music.evaluation.retrieval_inputs import ALL
from tfrec_music.evaluation.retrieval_inputs import check_embeddings
from tfrec_music.evaluation.retrieval_inputs import check_ks
from tfrec_music.evaluation.retrieval_inputs import check_popularity
from tfrec_music.evaluation.retrieval_inputs import check_positive_int
from tfrec_music.evaluation.retrieval_inputs import check_slices
from tfrec_music.evaluation.retrieval_inputs import check_targets
from tfrec_music.evaluation.retrieval_inputs import row_count
from tfrec_music.evaluation.retrieval_inputs import take_rows

ScoreFn = Callable[[Any], Any]

__all__ = ["evaluate_retrieval", "evaluate_embeddings", "top_k", "prefix_metrics"]


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
  n_items = check_positive_int(n_items, "n_items")
  n_rows = row_count(queries, "queries")

  def scorer(start, stop):
    return negated_scores(score_fn, take_rows(queries, start, stop), start, stop - start,
                                n_items)

  return _checked_evaluate(scorer, n_rows, n_items, targets, exclude, item_slices, ks,
                           chunk_size, item_popularity, lists)


def _checked_evaluate(scorer, n_rows, n_items, targets, exclude, item_slices, ks, chunk_size,
                      item_popularity, lists=True) -> Dict[str, float]:
  """Checks the arguments shared by both entry points, then evaluates."""
  ks = check_ks(ks)
  chunk_size = check_positive_int(chunk_size, "chunk_size")
  targets = check_targets(targets, n_rows, n_items)
  indptr, indices = exclusions_csr(exclude, n_rows)
  check_exclusion_range(indices, n_items)
  slices = check_slices(item_slices, n_items)
  popularity = check_popularity(item_popularity, n_items)
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
  query_embeddings, item_embeddings = check_embeddings(query_embeddings, item_embeddings)
  n_rows, n_items = len(query_embeddings), len(item_embeddings)
  return _checked_evaluate(embedding_scorer(query_embeddings, item_embeddings), n_rows,
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
  k = check_positive_int(k, "k")
  chunk_size = check_positive_int(chunk_size, "chunk_size")
  n_rows = row_count(queries, "queries")
  indptr, indices = exclusions_csr(exclude, n_rows)
  if n_rows == 0:
    return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
  out_idx, out_scores = [], []
  n_items = None
  for start in range(0, n_rows, chunk_size):
    stop = min(start + chunk_size, n_rows)
    chunk = take_rows(queries, start, stop)
    neg = negated_scores(score_fn, chunk, start, stop - start, n_items)
    if n_items is None:
      # The catalogue size is only known once the first chunk is scored.
      n_items = neg.shape[1]
      check_exclusion_range(indices, n_items)
    sentinel = exclusion_sentinel(neg, start)
    rows, cols = chunk_exclusions(indptr, indices, start, stop)
    neg[rows, cols] = sentinel
    idx, vals = top_negated(neg, k, sentinel)
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
    sentinel = exclusion_sentinel(neg, start)
    chunk_targets = targets[start:stop]
    rows, cols = chunk_exclusions(indptr, indices, start, stop)
    keep = cols != chunk_targets[rows]  # A row's own target is never excluded.
    neg[rows[keep], cols[keep]] = sentinel
    ranks[start:stop] = target_ranks(neg, chunk_targets)
    if not lists:
      continue
    idx, _ = top_negated(neg, k_max, sentinel)
    for j, k in enumerate(ks):
      top = idx[:, :min(k, n_items)]
      top = top[top >= 0]
      covered[j, top] = True
      if popularity is not None:
        pop_sums[j] += popularity[top].sum()
        pop_counts[j] += top.size

  metrics: Dict[str, float] = {}
  in_slice = {ALL: np.ones(n_rows, bool)}
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
      if name == ALL and lists:
        for j, k in enumerate(ks):
          metrics[f"{name}/coverage@{k}"] = float(covered[j].sum() / n_items)
          if popularity is not None:
            metrics[f"{name}/avg_popularity@{k}"] = (
                float(pop_sums[j] / pop_counts[j]) if pop_counts[j] else math.nan)
    metrics[f"{name}/count"] = count
  return metrics
