"""Tests of tfrec_music.evaluation: golden numbers, a numpy reference, input errors."""

import math

import numpy as np
import pandas as pd
import pytest

from tfrec_music.evaluation import binary_metrics
from tfrec_music.evaluation import evaluate_embeddings
from tfrec_music.evaluation import evaluate_retrieval
from tfrec_music.evaluation import prefix_metrics
from tfrec_music.evaluation import rating_metrics
from tfrec_music.evaluation import top_k

INF = np.inf

# --- Tier 1: golden numbers worked by hand ---------------------------------------

# Two users x four items, with a tie and exclusions.
GOLDEN_SCORES = np.array([[0.9, 0.5, 0.5, 0.1],
                          [0.2, 0.8, 0.9, 0.4]], np.float32)
GOLDEN_TARGETS = np.array([2, 0])
GOLDEN_EXCLUDE = [np.array([0]), np.array([1, 0])]  # Row 1 lists its own target 0.
GOLDEN_SLICES = {"cold": np.array([False, False, True, True]),
                 "warm": np.array([True, True, False, False]),
                 "empty": np.zeros(4, bool)}
GOLDEN_POPULARITY = np.array([10.0, 20.0, 30.0, 40.0])


def _golden_score_fn(rows):
  return GOLDEN_SCORES[rows]


@pytest.mark.parametrize("chunk_size", [1, 2, 512])
def test_golden_retrieval_metrics(chunk_size):
  metrics = evaluate_retrieval(_golden_score_fn, np.arange(2), GOLDEN_TARGETS, n_items=4,
                               exclude=GOLDEN_EXCLUDE, item_slices=GOLDEN_SLICES, ks=(1, 2),
                               chunk_size=chunk_size, item_popularity=GOLDEN_POPULARITY)
  # Row 0: item 0 excluded; target 2 scores 0.5; nothing is strictly higher;
  #   item 1 ties at 0.5 with a lower index -> rank = 1 + 0 + 1 = 2.
  #   List: [1 (0.5), 2 (0.5), 3 (0.1)].
  # Row 1: item 1 excluded, item 0 is the target so it stays; target scores 0.2;
  #   items 2 (0.9) and 3 (0.4) are higher -> rank = 1 + 2 + 0 = 3.
  #   List: [2 (0.9), 3 (0.4), 0 (0.2)].
  ndcg_rank2 = 1.0 / math.log2(3.0)  # 0.6309...
  expected = {
      # hr@1: no rank 1. hr@2: row 0 only -> 1/2.
      "all/hr@1": 0.0, "all/recall@1": 0.0, "all/ndcg@1": 0.0,
      "all/hr@2": 0.5, "all/recall@2": 0.5, "all/ndcg@2": (ndcg_rank2 + 0.0) / 2,
      "all/mrr": (1 / 2 + 1 / 3) / 2,  # 5/12
      # Top-1 lists {1}, {2} -> 2 of 4 items; top-2 lists {1, 2}, {2, 3} -> 3 of 4.
      "all/coverage@1": 2 / 4, "all/coverage@2": 3 / 4,
      # Popularity of [1], [2] -> (20 + 30) / 2; of [1, 2], [2, 3] -> (20+30+30+40) / 4.
      "all/avg_popularity@1": 25.0, "all/avg_popularity@2": 30.0,
      "all/count": 2,
      # Row 0's target 2 is cold, row 1's target 0 is warm.
      "cold/hr@1": 0.0, "cold/recall@1": 0.0, "cold/ndcg@1": 0.0,
      "cold/hr@2": 1.0, "cold/recall@2": 1.0, "cold/ndcg@2": ndcg_rank2,
      "cold/mrr": 0.5, "cold/count": 1,
      "warm/hr@1": 0.0, "warm/recall@1": 0.0, "warm/ndcg@1": 0.0,
      "warm/hr@2": 0.0, "warm/recall@2": 0.0, "warm/ndcg@2": 0.0,
      "warm/mrr": 1 / 3, "warm/count": 1,
      # An empty slice reports only its count.
      "empty/count": 0,
  }
  assert metrics.keys() == expected.keys()
  for key, value in expected.items():
    assert metrics[key] == pytest.approx(value, rel=1e-12, abs=0), key
  assert isinstance(metrics["all/count"], int)


def test_golden_top_k_ties_exclusions_and_clamp():
  idx, scores = top_k(_golden_score_fn, np.arange(2), 2, exclude=GOLDEN_EXCLUDE)
  # Row 0: 0.5 at items 1 and 2 -> the lower index first. Row 1: 0.9, 0.4; item 0
  # is excluded here (top_k protects no target).
  np.testing.assert_array_equal(idx, [[1, 2], [2, 3]])
  np.testing.assert_array_equal(scores, np.array([[0.5, 0.5], [0.9, 0.4]], np.float32))
  assert scores.dtype == np.float32  # The scorer's dtype is kept.
  # k = 9 > 4 items clamps to 4; row 0 has 3 eligible items, row 1 has 2: padding.
  idx, scores = top_k(_golden_score_fn, np.arange(2), 9, exclude=GOLDEN_EXCLUDE)
  np.testing.assert_array_equal(idx, [[1, 2, 3, -1], [2, 3, -1, -1]])
  np.testing.assert_array_equal(scores, np.array([[0.5, 0.5, 0.1, -INF], [0.9, 0.4, -INF, -INF]],
                                                 np.float32))


def test_golden_real_minus_inf_scores_rank_after_finite_and_by_index():
  scores = np.array([[-INF, 0.3, -INF, -INF],
                     [0.1, 0.2, 0.3, 0.4]], np.float32)
  # Row 0: item 1 excluded, target 3 at -inf: nothing higher among the rest,
  #   items 0 and 2 tie at -inf with lower indices -> rank 3 (the excluded item
  #   must not count as a tie). Row 1: target 0 is the lowest -> rank 4.
  metrics = evaluate_retrieval(lambda rows: scores[rows], np.arange(2), [3, 0], n_items=4,
                               exclude=[[1], []], ks=(3,))
  assert metrics["all/mrr"] == pytest.approx((1 / 3 + 1 / 4) / 2)  # 7/24
  assert metrics["all/hr@3"] == 0.5
  # Top-3 lists: [0, 2, 3] (all -inf, by index) and [3, 2, 1] -> {0,1,2,3} covered.
  assert metrics["all/coverage@3"] == 1.0
  idx, top = top_k(lambda rows: scores[rows], np.arange(2), 4, exclude=[[1], []])
  np.testing.assert_array_equal(idx, [[0, 2, 3, -1], [3, 2, 1, 0]])
  np.testing.assert_array_equal(top[0], [-INF, -INF, -INF, -INF])


def test_golden_everything_excluded_but_target():
  scores = np.array([[5.0, 1.0, 7.0]])
  metrics = evaluate_retrieval(lambda rows: scores[rows], [0], [1], n_items=3,
                               exclude=(np.array([0, 3]), np.array([0, 1, 2])), ks=(1,))
  # Only the target (item 1) is left -> rank 1; the top-1 list is [1].
  assert metrics["all/hr@1"] == 1.0 and metrics["all/mrr"] == 1.0
  assert metrics["all/coverage@1"] == pytest.approx(1 / 3)
  idx, top = top_k(lambda rows: scores[rows], [0], 2, exclude=[[0, 1, 2]])
  np.testing.assert_array_equal(idx, [[-1, -1]])
  np.testing.assert_array_equal(top, [[-INF, -INF]])


def test_golden_embeddings():
  queries = np.array([[1.0, 0.0], [1.0, 1.0]])
  items = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
  # Scores: row 0 [2, 0, 1]; row 1 [2, 3, 2].
  # Row 0, target 2 (score 1): item 0 higher -> rank 2.
  # Row 1, target 2 (score 2): item 1 higher, item 0 ties with a lower index -> rank 3.
  metrics = evaluate_embeddings(queries, items, [2, 2], ks=(2,))
  assert metrics["all/mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
  assert metrics["all/ndcg@2"] == pytest.approx((1 / math.log2(3) + 0) / 2)
  # Top-2 lists [0, 2] and [1, 0] -> 3 of 3 items.
  assert metrics["all/coverage@2"] == 1.0


def test_golden_rating_metrics():
  # Errors (pred - true): [-0.5, 0, 1, -2]; squares [0.25, 0, 1, 4] sum 5.25.
  metrics = rating_metrics([3, 5, 2, 4], np.array([[2.5], [5.0], [3.0], [2.0]]))
  assert metrics["mse"] == pytest.approx(5.25 / 4)  # 1.3125
  assert metrics["rmse"] == pytest.approx(math.sqrt(1.3125))  # 1.1456...
  assert metrics["mae"] == pytest.approx((0.5 + 0 + 1 + 2) / 4)  # 0.875
  assert metrics["count"] == 4


def test_golden_binary_metrics_with_tied_probabilities():
  labels = [1, 0, 1, 0, 1]
  probabilities = [0.9, 0.3, 0.3, 0.6, 0.8]
  metrics = binary_metrics(labels, probabilities)
  # p > 0.5 -> [1, 0, 0, 1, 1]; right at rows 0, 1, 4 -> 3/5.
  assert metrics["accuracy"] == pytest.approx(0.6)
  # Ascending ranks: 0.3, 0.3 -> (1+2)/2 = 1.5 each; 0.6 -> 3; 0.8 -> 4; 0.9 -> 5.
  # Positives 0.9, 0.3, 0.8 -> 5 + 1.5 + 4 = 10.5; AUC = (10.5 - 3*4/2) / (3*2) = 0.75.
  # Pairwise check: 0.9 beats both (2), 0.3 ties 0.3 (0.5), 0.8 beats both (2) -> 4.5/6.
  assert metrics["auc"] == pytest.approx(0.75)
  # -(ln .9 + ln .7 + ln .3 + ln .4 + ln .8) / 5
  # = (0.1053605 + 0.3566749 + 1.2039728 + 0.9162907 + 0.2231436) / 5 = 0.5610885
  assert metrics["log_loss"] == pytest.approx(0.5610885094, rel=1e-9)
  assert metrics["count"] == 5


def test_golden_log_loss_clips_confident_mistakes():
  # p = 0 for a positive and p = 1 for a negative both cost -ln(1e-7) = 16.1180957.
  metrics = binary_metrics([1, 0], [0.0, 1.0])
  assert metrics["log_loss"] == pytest.approx(16.11809565, rel=1e-6)
  assert metrics["auc"] == 0.0 and metrics["accuracy"] == 0.0


def test_auc_is_nan_with_one_class():
  assert math.isnan(binary_metrics([1, 1, 1], [0.2, 0.5, 0.9])["auc"])
  assert math.isnan(binary_metrics([False, False], [0.2, 0.5])["auc"])


def test_prefix_metrics():
  assert prefix_metrics({"all/hr@10": 0.5, "cold/count": 3}, "test") == {
      "test/all/hr@10": 0.5, "test/cold/count": 3}


# --- Tier 2: a brute-force numpy reference on random data -------------------------


def _reference_lists(scores, exclude_lists, targets=None):
  """Per row: eligible items in stable descending order (full argsort)."""
  lists = []
  for row, row_scores in enumerate(scores):
    eligible = np.ones(len(row_scores), bool)
    eligible[np.asarray(exclude_lists[row], int)] = False
    if targets is not None:
      eligible[targets[row]] = True
    items = np.flatnonzero(eligible)
    lists.append(items[np.argsort(-row_scores[items], kind="stable")])
  return lists


def _reference_metrics(scores, targets, exclude_lists, slices, ks, popularity):
  lists = _reference_lists(scores, exclude_lists, targets)
  ranks = np.array([int(np.flatnonzero(lst == t)[0]) + 1 for lst, t in zip(lists, targets)])
  n_items = scores.shape[1]
  out = {}
  for name, mask in {"all": np.ones(n_items, bool), **slices}.items():
    r = ranks[mask[targets]]
    if r.size:
      for k in ks:
        out[f"{name}/hr@{k}"] = np.mean(r <= k)
        out[f"{name}/recall@{k}"] = np.mean(r <= k)
        out[f"{name}/ndcg@{k}"] = np.mean([1 / math.log2(x + 1) if x <= k else 0.0 for x in r])
      out[f"{name}/mrr"] = np.mean(1.0 / r)
      if name == "all":
        for k in ks:
          recommended = np.concatenate([lst[:k] for lst in lists])
          out[f"all/coverage@{k}"] = len(set(recommended.tolist())) / n_items
          out[f"all/avg_popularity@{k}"] = popularity[recommended].mean()
    out[f"{name}/count"] = int(r.size)
  return out


def _random_case(rng, n_rows, n_items, levels, with_inf):
  if levels:
    scores = rng.integers(0, levels, (n_rows, n_items)).astype(np.float32)  # Many ties.
  else:
    scores = rng.standard_normal((n_rows, n_items)).astype(np.float32)
  if with_inf:
    scores[rng.random((n_rows, n_items)) < 0.1] = -INF
    scores[rng.random((n_rows, n_items)) < 0.02] = INF
  targets = rng.integers(0, n_items, n_rows)
  exclude = []
  for row in range(n_rows):
    # Duplicates, empty rows and the row's own target all occur.
    items = rng.integers(0, n_items, rng.integers(0, n_items // 2 + 2))
    if rng.random() < 0.3:
      items = np.append(items, targets[row])
    exclude.append(items)
  cold = rng.random(n_items) < 0.7
  slices = {"cold": cold, "warm": ~cold, "first": np.arange(n_items) == 0}
  popularity = rng.integers(1, 100, n_items).astype(float)
  return scores, targets, exclude, slices, popularity


def _to_csr(lists):
  lengths = [len(x) for x in lists]
  return (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
          np.concatenate(lists).astype(np.int64))


SIZES = [
    # (rows, items, chunk_size, ks, score levels (None = continuous))
    (1, 1, 1, (1,), 3),
    (7, 5, 3, (1, 3, 10), 3),  # k >= n_items
    (50, 40, 16, (5, 10), 4),
    (33, 200, 512, (10, 50), None),
    (100, 64, 7, (1, 64, 100), 2),  # chunk_size does not divide N; k = and > n_items
    (60, 300, 25, (10,), 50),
]


@pytest.mark.parametrize("with_inf", [False, True])
@pytest.mark.parametrize("n_rows,n_items,chunk_size,ks,levels", SIZES)
def test_evaluate_retrieval_matches_reference(n_rows, n_items, chunk_size, ks, levels, with_inf):
  rng = np.random.default_rng([n_rows, n_items, int(with_inf)])
  scores, targets, exclude, slices, popularity = _random_case(rng, n_rows, n_items, levels,
                                                              with_inf)
  expected = _reference_metrics(scores, targets, exclude, slices, ks, popularity)
  for exclude_form in (exclude, _to_csr(exclude)):
    metrics = evaluate_retrieval(lambda rows: scores[rows], np.arange(n_rows), targets,
                                 n_items=n_items, exclude=exclude_form, item_slices=slices,
                                 ks=ks, chunk_size=chunk_size, item_popularity=popularity)
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
      assert metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


@pytest.mark.parametrize("with_inf", [False, True])
@pytest.mark.parametrize("n_rows,n_items,chunk_size,ks,levels", SIZES)
def test_top_k_matches_reference(n_rows, n_items, chunk_size, ks, levels, with_inf):
  rng = np.random.default_rng([n_rows, n_items, int(with_inf), 7])
  scores, _, exclude, _, _ = _random_case(rng, n_rows, n_items, levels, with_inf)
  lists = _reference_lists(scores, exclude)
  for k in sorted({1, 3, n_items, n_items + 5, *ks}):
    idx, top = top_k(lambda rows: scores[rows], np.arange(n_rows), k, exclude=exclude,
                     chunk_size=chunk_size)
    width = min(k, n_items)
    assert idx.shape == top.shape == (n_rows, width)
    for row, lst in enumerate(lists):
      want = np.full(width, -1)
      want[:min(width, len(lst))] = lst[:width]
      np.testing.assert_array_equal(idx[row], want, err_msg=f"k={k} row={row}")
      want_scores = np.where(want >= 0, scores[row][np.maximum(want, 0)], -INF)
      np.testing.assert_array_equal(top[row], want_scores)


@pytest.mark.parametrize("n_rows,n_items,dim,chunk_size", [(1, 3, 1, 1), (40, 30, 3, 8),
                                                           (97, 120, 4, 32)])
def test_evaluate_embeddings_matches_reference(n_rows, n_items, dim, chunk_size):
  rng = np.random.default_rng([n_rows, n_items, dim])
  # Small integer embeddings: dot products are exact in float32 and full of ties.
  queries = rng.integers(-2, 3, (n_rows, dim)).astype(np.float64)
  items = rng.integers(-2, 3, (n_items, dim)).astype(np.float64)
  _, targets, exclude, slices, popularity = _random_case(rng, n_rows, n_items, 2, False)
  ks = (1, 5, 50)
  expected = _reference_metrics(queries @ items.T, targets, exclude, slices, ks, popularity)
  metrics = evaluate_embeddings(queries, items, targets, exclude=exclude, item_slices=slices,
                                ks=ks, chunk_size=chunk_size, item_popularity=popularity)
  assert metrics.keys() == expected.keys()
  for key, value in expected.items():
    assert metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_query_containers_give_the_same_metrics():
  rng = np.random.default_rng(3)
  scores, targets, exclude, slices, _ = _random_case(rng, 23, 17, 3, False)
  ids = np.arange(23)
  base = evaluate_retrieval(lambda q: scores[np.asarray(q)], ids, targets, n_items=17,
                            exclude=exclude, item_slices=slices, chunk_size=5)
  # A Series with a shuffled index must still be sliced by position.
  series = pd.Series(ids, index=rng.permutation(23) + 100)
  from_series = evaluate_retrieval(lambda q: scores[q.to_numpy()], series, targets, n_items=17,
                                   exclude=exclude, item_slices=slices, chunk_size=5)
  from_list = evaluate_retrieval(lambda q: scores[np.asarray(q)], ids.tolist(), targets,
                                 n_items=17, exclude=exclude, item_slices=slices, chunk_size=5)
  from_dict = evaluate_retrieval(lambda q: scores[q["row"]], {"row": ids, "other": -ids},
                                 targets, n_items=17, exclude=exclude, item_slices=slices,
                                 chunk_size=5)
  assert from_series == base and from_list == base and from_dict == base


def test_scores_of_the_caller_are_not_modified():
  scores = np.random.default_rng(0).standard_normal((6, 9))
  before = scores.copy()
  evaluate_retrieval(lambda rows: scores[rows.start:rows.stop], range(6), [0] * 6, n_items=9,
                     exclude=[[1, 2]] * 6, chunk_size=4)
  top_k(lambda rows: scores[rows.start:rows.stop], range(6), 3, exclude=[[1, 2]] * 6)
  np.testing.assert_array_equal(scores, before)


def test_no_rows_reports_counts_only():
  metrics = evaluate_retrieval(lambda q: np.zeros((len(q), 3)), np.arange(0), [], n_items=3,
                               item_slices={"cold": np.ones(3, bool)})
  assert metrics == {"all/count": 0, "cold/count": 0}
  idx, scores = top_k(lambda q: np.zeros((len(q), 3)), [], 5)
  assert idx.shape == scores.shape == (0, 5)


# --- Tier 3: input errors ---------------------------------------------------------


def _zeros(n_items):
  return lambda q: np.zeros((len(q), n_items))


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_items=0), "`n_items` should be a positive integer. Received: `n_items` = 0."),
    (dict(ks=()), "`ks` should be a non-empty sequence of positive integers"),
    (dict(ks=(10, 0)), "`ks` should be a non-empty sequence of positive integers"),
    (dict(ks=(True,)), "`ks` should be"),
    (dict(chunk_size=0), "`chunk_size` should be a positive integer. Received: `chunk_size` = 0"),
    (dict(targets=[0, 4]), r"`targets` should be in \[0, n_items\) = \[0, 4\). Received: "
     r"`targets\[1\]` = 4"),
    (dict(targets=[0.0, 1.0]), "`targets` should be a 1-D array of int"),
    (dict(targets=[0]), "`targets` should have one entry per query, N = 2"),
    (dict(exclude=[[0]]), "`exclude` should have one entry per row, N = 2"),
    (dict(exclude=[[0], [7]]), r"`exclude` item indices should be in \[0, n_items\)"),
    (dict(exclude=[[0], [0.5]]), r"`exclude\[1\]` should be a 1-D array of int"),
    (dict(exclude=(np.array([0, 1]), np.array([2]))), r"`exclude` indptr should be int \[N \+ 1\]"),
    (dict(exclude=(np.array([0, 2, 1]), np.array([2]))), "`exclude` indptr should start at 0"),
    (dict(exclude=(np.array([0, 1, 1]), np.array([2]), None)), "CSR pair"),
    (dict(item_slices={"cold": [1, 0, 1, 0]}), r"`item_slices\['cold'\]` should be a bool mask"),
    (dict(item_slices={"cold": np.ones(3, bool)}), r"shape \[n_items\] = \[4\]"),
    (dict(item_slices={"all": np.ones(4, bool)}), "other than 'all'"),
    (dict(item_slices={"a/b": np.ones(4, bool)}), "without `/`"),
    (dict(item_popularity=np.ones(3)), r"`item_popularity` should be numbers of shape \[n_items\]"),
    (dict(item_popularity=[1, 2, np.nan, 4]), "`item_popularity` should be finite"),
])
def test_evaluate_retrieval_rejects_bad_arguments(kwargs, match):
  args = dict(score_fn=_zeros(4), queries=np.arange(2), targets=[0, 1], n_items=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    evaluate_retrieval(args.pop("score_fn"), args.pop("queries"), args.pop("targets"), **args)


def test_nan_scores_name_the_row():
  def score_fn(rows):
    scores = np.zeros((len(rows), 5))
    scores[rows == 6, 3] = np.nan
    return scores
  with pytest.raises(ValueError, match=r"NaN at row 6 \(item 3\)"):
    evaluate_retrieval(score_fn, np.arange(8), np.zeros(8, int), n_items=5, chunk_size=3)
  with pytest.raises(ValueError, match=r"NaN at row 6 \(item 3\)"):
    top_k(score_fn, np.arange(8), 2, chunk_size=4)


def test_score_shape_is_checked():
  with pytest.raises(ValueError, match=r"shape \[batch, n_items\] = \[2, 4\].*Received: shape "
                     r"\(2, 3\)"):
    evaluate_retrieval(_zeros(3), np.arange(2), [0, 1], n_items=4)
  with pytest.raises(ValueError, match="should return real numbers"):
    evaluate_retrieval(lambda q: np.zeros((len(q), 4), bool), np.arange(2), [0, 1], n_items=4)
  with pytest.raises(ValueError, match=r"`exclude` item indices should be in \[0, n_items\) = "
                     r"\[0, 3\)"):
    top_k(_zeros(3), np.arange(2), 2, exclude=[[5], []])


def test_top_k_rejects_bad_k():
  with pytest.raises(ValueError, match="`k` should be a positive integer. Received: `k` = 0."):
    top_k(_zeros(3), np.arange(2), 0)


@pytest.mark.parametrize("queries,items,match", [
    (np.ones((2, 3)), np.ones((4, 2)), "should have the same width d. Received: 3 and 2"),
    (np.ones(3), np.ones((4, 3)), "`query_embeddings` should be a 2-D array"),
    (np.ones((2, 3)), np.array([[1, 2, np.inf]] * 4), "`item_embeddings` should be finite"),
    (np.ones((2, 3)), np.ones((0, 3)), "should hold at least one item"),
])
def test_evaluate_embeddings_rejects_bad_embeddings(queries, items, match):
  with pytest.raises(ValueError, match=match):
    evaluate_embeddings(queries, items, [0, 0])


@pytest.mark.parametrize("split", ["", "test/", 3])
def test_prefix_metrics_rejects_bad_split(split):
  with pytest.raises(ValueError, match="`split` should be a non-empty string without `/`"):
    prefix_metrics({}, split)


@pytest.mark.parametrize("y_true,y_pred,match", [
    ([1, 2], [1], "should have the same length. Received: 2 and 1"),
    ([1, np.nan], [1, 2], r"`y_true` should be finite. Received: `y_true\[1\]` = nan"),
    ([1, 2], [1, np.inf], "`y_pred` should be finite"),
    ([], [], "should not be empty"),
    (np.ones((2, 2)), np.ones((2, 2)), r"`y_true` should be a 1-D array of numbers"),
    (["a"], [1], "`y_true` should be a 1-D array of numbers"),
])
def test_rating_metrics_rejects_bad_inputs(y_true, y_pred, match):
  with pytest.raises(ValueError, match=match):
    rating_metrics(y_true, y_pred)


@pytest.mark.parametrize("labels,probabilities,match", [
    ([1, 2], [0.5, 0.5], r"`labels` should be 0 or 1. Received: `labels\[1\]` = 2"),
    ([1, 0], [0.5, 1.5], r"`probabilities` should be in \[0, 1\].*`probabilities\[1\]` = 1.5"),
    ([1, 0], [0.5], "should have the same length"),
    ([1, 0], [0.5, np.nan], "`probabilities` should be finite"),
])
def test_binary_metrics_rejects_bad_inputs(labels, probabilities, match):
  with pytest.raises(ValueError, match=match):
    binary_metrics(labels, probabilities)


def test_top_k_lists_match_a_full_sort_with_ties_and_exclusions():
  # Integer scores make many exact ties; excluded items (+inf negated) must come
  # last and be reported as -1. Reference: a full stable sort per row.
  from tfrec_music.evaluation.ranks import top_negated  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  for dtype in (np.float32, np.float64):
    neg = -rng.integers(0, 6, size=(40, 30)).astype(dtype)
    neg[rng.random(neg.shape) < 0.3] = np.inf
    neg[0, :] = np.inf                                   # a row with nothing eligible
    neg[1, 2:] = np.inf                                  # fewer eligible items than k
    for k in (1, 5, 29):
      idx, vals = top_negated(neg.copy(), k, np.inf)
      order = np.argsort(neg, axis=1, kind="stable")[:, :k]
      want = np.where(np.take_along_axis(neg, order, axis=1) == np.inf, -1, order)
      np.testing.assert_array_equal(idx, want)
      np.testing.assert_array_equal(vals, np.take_along_axis(neg, order, axis=1))


def test_rank_metrics_without_lists_are_the_same_numbers():
  rng = np.random.default_rng(3)
  queries, items = rng.standard_normal((300, 8)), rng.standard_normal((500, 8))
  targets = rng.integers(0, 500, 300)
  exclude = [rng.integers(0, 500, 5) for _ in range(300)]
  slices = {"cold": np.arange(500) % 3 == 0}
  full = evaluate_embeddings(queries, items, targets, exclude=exclude, item_slices=slices,
                             item_popularity=np.arange(500.0))
  ranks_only = evaluate_embeddings(queries, items, targets, exclude=exclude, item_slices=slices,
                                   item_popularity=np.arange(500.0), lists=False)
  assert ranks_only == {k: v for k, v in full.items()
                        if "coverage" not in k and "avg_popularity" not in k}
  assert any("coverage" in k for k in full)
