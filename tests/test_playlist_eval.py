"""RecSys Challenge 2018 metrics, the K-seed protocol and the playlist baselines."""

import math

import numpy as np
import pandas as pd
import pytest

from tfrec_music.evaluation.playlist import CLICKS_MISS
from tfrec_music.evaluation.playlist import PlaylistQueries
from tfrec_music.evaluation.playlist import challenge_metrics
from tfrec_music.evaluation.playlist import evaluate_playlist_scorer
from tfrec_music.evaluation.playlist import k_seed_queries
from tfrec_music.evaluation.playlist import rank_with_exclusions
from tfrec_music.evaluation.playlist import unseen_tail_queries
from tfrec_music.models.playlist_baselines import playlist_baselines
from tfrec_music.models.playlist_baselines import popularity_scorer
from tfrec_music.models.playlist_baselines import same_group_scorer


def _queries(seeds, targets, names=None):
  b = len(targets)
  return PlaylistQueries([np.asarray(s, np.int64) for s in seeds],
                         [np.asarray(t, np.int64) for t in targets],
                         np.asarray(names or [""] * b, dtype=object),
                         np.asarray([f"p{i}" for i in range(b)], dtype=object))


def test_r_precision_ndcg_clicks_hr_by_hand():
  # Targets {3, 7}; recommendations [3, 5, 7, 1, ...].
  # r_precision = |{3, 7} ∩ {3, 5}| / 2 = 0.5
  # DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5; IDCG = 1 + 1/log2(3) = 1.63093
  # ndcg = 1.5 / 1.63093 = 0.91972; clicks = floor(0 / 10) = 0; hr@10 = 1.
  ranked = np.array([[3, 5, 7, 1, 0, 2, 4, 6, 8, 9]])
  out = challenge_metrics(ranked, [np.array([3, 7])])
  assert out["r_precision"][0] == pytest.approx(0.5)
  assert out["ndcg"][0] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
  assert out["clicks"][0] == 0.0
  assert out["hr@10"][0] == 1.0


def test_clicks_count_pages_of_ten_and_51_without_a_hit():
  catalogue = np.arange(600)
  ranked = catalogue[None, :500]
  # The only target at 0-based rank 23 -> pages 0..2 shown before it: clicks = 2.
  # DCG = 1/log2(25); IDCG (one target) = 1; r_precision: R[:1] = [0] -> 0.
  late = challenge_metrics(ranked, [np.array([23])])
  assert late["clicks"][0] == 2.0
  assert late["ndcg"][0] == pytest.approx(1 / math.log2(25))
  assert late["r_precision"][0] == 0.0 and late["hr@10"][0] == 0.0
  # Targets beyond the 500 recommendations: no hit -> 51 clicks, every other metric 0.
  miss = challenge_metrics(ranked, [np.array([550, 599])])
  assert CLICKS_MISS == 51.0
  assert miss["clicks"][0] == 51.0
  assert miss["r_precision"][0] == miss["ndcg"][0] == miss["hr@10"][0] == 0.0


def test_r_precision_uses_the_first_len_targets_and_ignores_duplicates():
  # Targets {1, 2, 4, 4} -> G = {1, 2, 4} (|G| = 3); R[:3] = [4, 9, 1] -> 2 hits -> 2/3.
  # DCG = 1/log2(2) + 1/log2(4) + 1/log2(6) (ranks 0, 2, 4 hold 4, 1, 2);
  # IDCG = 1 + 1/log2(3) + 1/log2(4).
  out = challenge_metrics(np.array([[4, 9, 1, 8, 2, 7]]), [np.array([1, 2, 4, 4])])
  assert out["r_precision"][0] == pytest.approx(2 / 3)
  dcg = 1 + 1 / math.log2(4) + 1 / math.log2(6)
  idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
  assert out["ndcg"][0] == pytest.approx(dcg / idcg)


@pytest.mark.parametrize("n_items,n_rec,seed", [(30, 10, 0), (200, 50, 1), (800, 500, 2)])
def test_metrics_match_a_set_based_numpy_reference(n_items, n_rec, seed):
  rng = np.random.default_rng(seed)
  ranked = np.stack([rng.permutation(n_items)[:n_rec] for _ in range(20)])
  targets = [rng.choice(n_items, size=rng.integers(1, min(40, n_items)), replace=False) for _ in range(20)]
  out = challenge_metrics(ranked, targets)
  for row, (rank, target) in enumerate(zip(ranked, targets)):
    g = set(target.tolist())
    positions = [i for i, x in enumerate(rank.tolist()) if x in g]
    assert out["r_precision"][row] == pytest.approx(len(g & set(rank[:len(g)].tolist())) / len(g))
    dcg = sum(1 / math.log2(i + 2) for i in positions)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(g), n_rec)))
    assert out["ndcg"][row] == pytest.approx(dcg / idcg)
    assert out["clicks"][row] == (positions[0] // 10 if positions else 51)
    assert out["hr@10"][row] == float(any(i < 10 for i in positions))


def test_empty_targets_and_bad_shapes_are_refused():
  with pytest.raises(ValueError, match=r"`targets\[1\]` is empty"):
    challenge_metrics(np.array([[0, 1], [1, 0]]), [np.array([0]), np.array([], np.int64)])
  with pytest.raises(ValueError, match="one row per target set"):
    challenge_metrics(np.array([0, 1]), [np.array([0])])
  queries = _queries([[0]], [[1]])
  with pytest.raises(ValueError, match=r"expected \(1, 5\)"):
    evaluate_playlist_scorer(lambda q: np.zeros((1, 4)), queries, 5)


def test_seeds_are_excluded_and_ties_go_to_the_lower_index():
  scores = np.array([[5.0, 5.0, 9.0, 1.0, 5.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0]])
  ranked = rank_with_exclusions(scores, [np.array([2]), np.array([], np.int64)], 3)
  # Row 0: item 2 is a seed; the tie 5.0 on {0, 1, 4} resolves to 0, 1, 4.
  assert ranked.tolist() == [[0, 1, 4], [0, 1, 2]]
  # Asking for more than the catalogue clamps; excluded seeds fill the tail.
  full = rank_with_exclusions(scores[:1], [np.array([2])], 50)
  assert full.tolist() == [[0, 1, 4, 3, 2]]


def test_seed_is_never_a_hit_even_when_scored_highest():
  # The scorer loves the seed (item 0); it is excluded, so item 1 (the target) is first.
  queries = _queries([[0]], [[1]])
  result = evaluate_playlist_scorer(lambda q: np.array([[10.0, 5.0, 1.0]]), queries, 3)
  assert result == {"r_precision": 1.0, "ndcg": 1.0, "clicks": 0.0, "hr@10": 1.0,
                    "playlists": 1}


def test_k_seed_queries_cut_skip_short_and_need_a_name_for_k0():
  playlists = {"a": np.array([5, 6, 7, 8, 9, 10]), "b": np.array([1, 2]),
               "c": np.array([3, 4, 11])}
  names = {"a": "Road trip", "b": "", "c": "  "}
  out = k_seed_queries(playlists, (0, 1, 5), names)
  assert out["k0"].playlist_ids.tolist() == ["a"]          # b and c have no name
  assert out["k0"].seeds[0].size == 0 and out["k0"].targets[0].tolist() == [5, 6, 7, 8, 9, 10]
  assert out["k1"].playlist_ids.tolist() == ["a", "b", "c"]
  assert out["k1"].seeds[1].tolist() == [1] and out["k1"].targets[1].tolist() == [2]
  # K = 5 needs 6 tracks: only "a", with one target.
  assert out["k5"].playlist_ids.tolist() == ["a"]
  assert out["k5"].seeds[0].tolist() == [5, 6, 7, 8, 9] and out["k5"].targets[0].tolist() == [10]
  assert not any(q.learned for q in out.values())
  tail = unseen_tail_queries(playlists, 2, names)
  assert tail.playlist_ids.tolist() == ["a", "c"]
  assert tail.seeds[1].tolist() == [3] and tail.targets[1].tolist() == [4, 11]
  with pytest.raises(ValueError, match="non-negative"):
    k_seed_queries(playlists, (-1,))


def test_baselines_same_artist_then_popularity():
  # Items 0..5: artists A A B B C -, albums x y z z w -; popularity counts below.
  items = pd.DataFrame({"item_id": [f"t{i}" for i in range(6)],
                        "artist": ["A", "A", "B", "B", "C", ""],
                        "album": ["x", "y", "z", "z", "w", None]})
  counts = np.array([1, 9, 3, 2, 50, 7])
  scorers = playlist_baselines(items, counts)
  assert sorted(scorers) == ["popularity", "same_album", "same_artist"]
  queries = _queries([[0], [2], []], [[1], [3], [4]])
  ranked = rank_with_exclusions(scorers["same_artist"](queries), queries.seeds, 6)
  # Seed 0 (artist A): item 1 (A) first, then by popularity 4 (50), 5 (7), 2 (3), 3 (2).
  assert ranked[0].tolist() == [1, 4, 5, 2, 3, 0]
  # Seed 2 (album z): item 3 shares the album, then popularity.
  album = rank_with_exclusions(scorers["same_album"](queries), queries.seeds, 6)
  assert album[1].tolist()[:2] == [3, 4]
  # No seed: popularity.
  assert ranked[2].tolist()[:3] == [4, 1, 5]
  popular = popularity_scorer(counts)(queries)
  assert np.argsort(-popular[0], kind="stable").tolist()[:3] == [4, 1, 5]


def test_group_with_more_seeds_ranks_first_and_missing_groups_never_match():
  groups = np.array(["A", "B", "B", None, None, "A"], dtype=object)
  counts = np.array([0, 0, 0, 100, 100, 0])
  score = same_group_scorer(groups, counts)
  # Seeds 0 (A), 1, 2 (B): item 5 (artist A, never played) beats the popular
  # ungrouped items 3 and 4; a seed without a group (item 3) matches nothing.
  queries = _queries([[0, 1, 2], [3]], [[5], [4]])
  scores = score(queries)
  assert scores[0, 5] > scores[0, 3] == scores[0, 4]
  assert scores[1, 4] == scores[1, 3]              # None never forms a group
  # An album title shared by two artists does not join their tracks.
  items = pd.DataFrame({"item_id": ["a", "b", "c"], "artist": ["X", "Y", "X"],
                        "album": ["Hits", "Hits", "Hits"]})
  album = playlist_baselines(items, np.array([1, 5, 1]))["same_album"](_queries([[0]], [[2]]))
  assert album[0, 2] > album[0, 1]
