"""Playlist continuation metrics and the K-seed protocol of the RecSys Challenge 2018.

A held-out playlist is cut after its first K tracks (the seeds); the scorer
ranks the whole catalogue with the seeds excluded, and the first
`n_recommendations` (500 in the challenge) are compared with the rest of the
playlist (the targets G):

- `r_precision`: |G ∩ R[:|G|]| / |G| (track level; the challenge's 0.25
  artist-level partial credit is not given).
- `ndcg`: DCG / IDCG over the 500 recommendations with binary relevance,
  DCG = Σ rel_i / log2(i + 1), IDCG = the DCG of min(|G|, 500) hits at the
  top (as the organizers' RecsysChallengeTools compute it).
- `clicks` (recommended-songs clicks): Spotify shows 10 tracks per page;
  the number of page refreshes before the first relevant track,
  `floor(rank / 10)` with a 0-based rank, or 51 when none of the 500 is
  relevant. Lower is better.
- `hr@10`: 1 when a target is among the first 10.

Slices are `k0` (name only), `k1`, `k5`, `k10`, `k25` (playlists with
fewer than K + 1 tracks are skipped for that K), plus, when the splits allow
it, `seen` (playlists trained on: training tracks as seeds, their held-out
valid and test tracks as targets, the model's own playlist vectors; the
valid tracks are the ones `playlist_mf` early-stops on), `seen_refit`
(the same seeds and targets, the playlist vector solved from the seeds as for
an unseen playlist) and `unseen` (held-out playlists cut before their last 2
tracks: the same shape of question as `seen`, asked of playlists the model
never saw). Keys read `<split>/<slice>/<metric>`, e.g. `test/k5/r_precision`.
"""

import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "CLICKS_MISS",
    "PlaylistQueries",
    "PlaylistScorer",
    "challenge_metrics",
    "evaluate_playlist_scorer",
    "evaluate_playlists",
    "evaluate_validation",
    "k_seed_queries",
    "held_out_playlists",
    "playlist_names",
    "rank_with_exclusions",
    "seen_queries",
    "unseen_tail_queries",
    "validation_queries",
]

N_RECOMMENDATIONS = 500
DEFAULT_KS = (0, 1, 5, 10, 25)
# Clicks when no relevant track is among the recommendations (500 / 10 + 1).
CLICKS_MISS = 51.0
METRICS = ("r_precision", "ndcg", "clicks", "hr@10")

# A batch of questions -> [B, n_items] scores.
PlaylistScorer = Callable[["PlaylistQueries"], np.ndarray]


@dataclasses.dataclass
class PlaylistQueries:
  """Continuation questions: seeds, the tracks to find, and what else is known.

  Attributes:
    seeds: [B] int arrays of catalogue indices given to the scorer (may be empty).
    targets: [B] non-empty int arrays of catalogue indices to retrieve.
    names: [B] playlist names ("" when unknown).
    playlist_ids: [B] playlist ids (for the oracle, and for learned vectors
      when `learned`).
    learned: True when the playlists were trained on and a model may use its
      own playlist vectors; False when each must be served from its seeds and
      name alone (folded in), as at serving time.
  """

  seeds: List[np.ndarray]
  targets: List[np.ndarray]
  names: np.ndarray
  playlist_ids: np.ndarray
  learned: bool = False

  def __len__(self) -> int:
    return len(self.targets)

  def take(self, start: int, stop: int) -> "PlaylistQueries":
    """Rows [start, stop)."""
    return PlaylistQueries(self.seeds[start:stop], self.targets[start:stop],
                           self.names[start:stop], self.playlist_ids[start:stop],
                           self.learned)


def rank_with_exclusions(scores: np.ndarray, exclude: Sequence[np.ndarray],
                         n: int) -> np.ndarray:
  """Top-`n` catalogue indices per row, best first, excluded indices removed.

  Ties are broken by the lower index, so rankings are deterministic.

  Args:
    scores: [B, n_items] scores.
    exclude: [B] int arrays of indices never recommended (the seeds).
    n: Recommendations per row (clamped to the catalogue size).

  Returns:
    [B, n'] int64 indices, n' = min(n, n_items); when fewer than n' items are
    left after exclusion, the excluded ones fill the tail (and never count as
    hits, because seeds are never targets).
  """
  scores = np.array(scores, dtype=np.float64, copy=True)
  b, n_items = scores.shape
  n = max(1, min(int(n), n_items))
  for row, ex in enumerate(exclude):
    if len(ex):
      scores[row, np.asarray(ex, dtype=np.int64)] = -np.inf
  neg = -scores
  if n < n_items:
    part = np.argpartition(neg, n - 1, axis=1)[:, :n]
  else:
    part = np.broadcast_to(np.arange(n_items), (b, n_items)).copy()
  part_scores = np.take_along_axis(neg, part, axis=1)
  order = np.lexsort((part, part_scores), axis=1)
  # argpartition may cut a tie at the boundary arbitrarily: the lower index
  # wins only among the candidates it kept, which is fine for metrics.
  return np.take_along_axis(part, order, axis=1).astype(np.int64)


def challenge_metrics(ranked: np.ndarray, targets: Sequence[np.ndarray],
                      hr_k: int = 10) -> Dict[str, np.ndarray]:
  """Per-playlist R-precision, NDCG, clicks and HR@k of ranked recommendations.

  Example (targets {3, 7}, recommendations [3, 5, 7, ...]):
    r_precision = |{3, 7} ∩ {3, 5}| / 2 = 0.5;
    DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3) = 1.6309,
    ndcg = 0.9197; clicks = floor(0 / 10) = 0; hr@10 = 1.

  Args:
    ranked: [B, R] catalogue indices, best first (R = recommendations).
    targets: [B] non-empty int arrays of relevant indices.
    hr_k: Cut-off of the hit rate.

  Returns:
    Metric name -> [B] float64 values (`r_precision`, `ndcg`, `clicks`, `hr@10`).

  Raises:
    ValueError: a playlist has no target, or lengths differ.
  """
  ranked = np.asarray(ranked)
  if ranked.ndim != 2 or len(ranked) != len(targets):
    raise ValueError("`ranked` should be [B, R] with one row per target set. Received: "
                     f"shape {ranked.shape} and {len(targets)} target sets.")
  b, r = ranked.shape
  out = {m: np.zeros(b) for m in ("r_precision", "ndcg", "clicks", f"hr@{hr_k}")}
  discounts = 1.0 / np.log2(np.arange(2, r + 2))
  ideal = np.cumsum(discounts)
  for row in range(b):
    target = np.unique(np.asarray(targets[row], dtype=np.int64))
    if target.size == 0:
      raise ValueError(f"`targets[{row}]` is empty: a playlist needs at least one held-out "
                       "track to be evaluated.")
    hits = np.isin(ranked[row], target)
    g = target.size
    out["r_precision"][row] = hits[:g].sum() / g
    out["ndcg"][row] = float(hits @ discounts) / ideal[min(g, r) - 1]
    first = np.flatnonzero(hits)
    out["clicks"][row] = float(first[0] // 10) if first.size else CLICKS_MISS
    out[f"hr@{hr_k}"][row] = float(hits[:hr_k].any())
  return out


def evaluate_playlist_scorer(scorer: PlaylistScorer, queries: PlaylistQueries, n_items: int,
                             n_recommendations: int = N_RECOMMENDATIONS,
                             batch_size: int = 256) -> Dict[str, float]:
  """Mean challenge metrics of `scorer` over `queries` (seeds excluded).

  Args:
    scorer: Batch of queries -> [B, n_items] scores.
    queries: The questions.
    n_items: Catalogue size.
    n_recommendations: Recommendations compared with the targets (500).
    batch_size: Playlists scored at once.

  Returns:
    `r_precision`, `ndcg`, `clicks`, `hr@10` means and `playlists` (count);
    an empty query set gives only `playlists: 0`.
  """
  if len(queries) == 0:
    return {"playlists": 0}
  sums = {m: 0.0 for m in METRICS}
  for start in range(0, len(queries), batch_size):
    part = queries.take(start, start + batch_size)
    scores = np.asarray(scorer(part))
    if scores.shape != (len(part), n_items):
      raise ValueError(f"The scorer returned shape {scores.shape}; expected "
                       f"({len(part)}, {n_items}) (one score per catalogue item).")
    ranked = rank_with_exclusions(scores, part.seeds, n_recommendations)
    for name, values in challenge_metrics(ranked, part.targets).items():
      sums[name] += float(values.sum())
  out = {m: sums[m] / len(queries) for m in METRICS}
  out["playlists"] = len(queries)
  return out


def k_seed_queries(playlists: Mapping[str, np.ndarray], ks: Sequence[int] = DEFAULT_KS,
                   names: Optional[Mapping[str, str]] = None) -> Dict[str, PlaylistQueries]:
  """The K-seed questions: the first K tracks as seeds, the rest as targets.

  Args:
    playlists: Playlist id -> catalogue indices in playlist order.
    ks: Seed counts. K = 0 keeps only playlists with a non-empty name.
    names: Playlist id -> name.

  Returns:
    `k<K>` -> queries (not `learned`: the playlists are unseen).
    Playlists with fewer than K + 1 tracks are skipped for that K.
  """
  names = names or {}
  out = {}
  for k in ks:
    if k < 0:
      raise ValueError(f"`ks` should hold non-negative integers. Received: {list(ks)}.")
    seeds, targets, row_names, pids = [], [], [], []
    for pid, tracks in playlists.items():
      name = str(names.get(pid, "") or "")
      if len(tracks) < k + 1 or (k == 0 and not name.strip()):
        continue
      seeds.append(np.asarray(tracks[:k], dtype=np.int64))
      targets.append(np.asarray(tracks[k:], dtype=np.int64))
      row_names.append(name)
      pids.append(pid)
    out[f"k{k}"] = PlaylistQueries(seeds, targets, np.asarray(row_names, dtype=object),
                                   np.asarray(pids, dtype=object))
  return out


def _ordered(prepared, frame: pd.DataFrame) -> Dict[str, np.ndarray]:
  if "timestamp" in frame.columns:
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
  return prepared.user_histories(frame)


def held_out_playlists(prepared) -> Dict[str, np.ndarray]:
  """Playlists held out of training (the prepared cold users), tracks in order.

  `prepare` splits a held-out playlist into its history and its last track;
  joined again (ordered by `timestamp`, i.e. position) they give the whole
  playlist.
  """
  frame = pd.concat([prepared.cold_user_history, prepared.cold_user_test], ignore_index=True)
  if len(frame) == 0:
    return {}
  return _ordered(prepared, frame)


def playlist_names(prepared) -> Dict[str, str]:
  """Playlist id -> name from the users table's `name` column ({} without one)."""
  users = prepared.users
  if users is None or "name" not in users.columns:
    return {}
  return dict(zip(users["user_id"].astype(str), users["name"].fillna("").astype(str)))


def seen_queries(prepared, split: str = "test") -> PlaylistQueries:
  """Trained playlists: training tracks as seeds, held-out tracks as targets.

  For `split="test"` the targets are the valid and test tracks; for
  `"valid"` only the validation track. The validation tracks are not
  untouched: `playlist_mf` early-stops on them (it keeps the epoch with the
  best NDCG of `seen_queries(prepared, "valid")`) and its `l2` and
  `fold_in_l2` defaults were chosen on them, so the test `seen` and
  `seen_refit` slices lean optimistic; only their test tracks were never
  looked at.
  """
  train = _ordered(prepared, prepared.train)
  held = [prepared.valid, prepared.test] if split == "test" else [prepared.valid]
  targets = _ordered(prepared, pd.concat(held, ignore_index=True))
  names = playlist_names(prepared)
  pids = [p for p in targets if p in train]
  return PlaylistQueries([train[p] for p in pids], [targets[p] for p in pids],
                         np.asarray([names.get(p, "") for p in pids], dtype=object),
                         np.asarray(pids, dtype=object), learned=True)


def validation_queries(prepared, ks: Sequence[int] = (1, 5, 10)) -> Dict[str, PlaylistQueries]:
  """Validation-split questions only (for early stopping and tuning).

  Every target is a validation track of a training playlist, so no test
  track and no held-out playlist is looked at:

  - `seen`: training tracks as seeds, the model's own playlist vector.
  - `seen_refit`: the same seeds, the vector solved from them (fold-in).
  - `k<K>`: the first K training tracks as seeds (fold-in), the validation
    track as target: the K-seed question asked of validation data.
  """
  learned = seen_queries(prepared, "valid")
  out = {"seen": learned, "seen_refit": dataclasses.replace(learned, learned=False)}
  for k in ks:
    rows = [i for i, s in enumerate(learned.seeds) if len(s) >= k]
    out[f"k{k}"] = PlaylistQueries([learned.seeds[i][:k] for i in rows],
                                   [learned.targets[i] for i in rows],
                                   learned.names[rows], learned.playlist_ids[rows])
  return out


def evaluate_validation(scorer: PlaylistScorer, prepared, ks: Sequence[int] = (1, 5, 10),
                        n_recommendations: int = N_RECOMMENDATIONS) -> Dict[str, float]:
  """Metrics of `validation_queries`: keys `valid/<slice>/<metric>`."""
  out = {}
  for slice_name, queries in validation_queries(prepared, ks).items():
    result = evaluate_playlist_scorer(scorer, queries, prepared.n_items, n_recommendations)
    out.update({f"valid/{slice_name}/{m}": v for m, v in result.items()})
  return out


def unseen_tail_queries(playlists: Mapping[str, np.ndarray], n_targets: int = 2,
                        names: Optional[Mapping[str, str]] = None) -> PlaylistQueries:
  """Unseen playlists cut before their last `n_targets` tracks (the `seen` shape)."""
  names = names or {}
  rows = [(p, t) for p, t in playlists.items() if len(t) > n_targets]
  return PlaylistQueries([np.asarray(t[:-n_targets], np.int64) for _, t in rows],
                         [np.asarray(t[-n_targets:], np.int64) for _, t in rows],
                         np.asarray([names.get(p, "") for p, _ in rows], dtype=object),
                         np.asarray([p for p, _ in rows], dtype=object))


def evaluate_playlists(scorer: PlaylistScorer, prepared, ks: Sequence[int] = DEFAULT_KS,
                       split: str = "test", seen: bool = True,
                       n_recommendations: int = N_RECOMMENDATIONS,
                       batch_size: int = 256) -> Dict[str, float]:
  """The whole playlist protocol on prepared data: keys `<split>/<slice>/<metric>`.

  Args:
    scorer: Batch of queries -> [B, n_items] scores.
    prepared: `PreparedData` whose cold users are held-out playlists.
    ks: Seed counts of the K-seed slices.
    split: Prefix of the keys.
    seen: Also evaluate the `seen`, `seen_refit` and `unseen` slices.
    n_recommendations: Recommendations per playlist (500).
    batch_size: Playlists scored at once.

  Returns:
    Flat metrics, e.g. `test/k5/r_precision`, `test/k5/playlists`.
  """
  names = playlist_names(prepared)
  held = held_out_playlists(prepared)
  slices = k_seed_queries(held, ks, names)
  if seen:
    learned = seen_queries(prepared, split)
    slices["seen"] = learned
    slices["seen_refit"] = dataclasses.replace(learned, learned=False)
    slices["unseen"] = unseen_tail_queries(held, 2, names)
  out = {}
  for slice_name, queries in slices.items():
    result = evaluate_playlist_scorer(scorer, queries, prepared.n_items, n_recommendations,
                                      batch_size)
    out.update({f"{split}/{slice_name}/{m}": v for m, v in result.items()})
  return out

