"""Validation of user-to-user taste similarity, which has no labels of its own.

Three checks, each a plain numpy computation:

- `friend_pair_auc`: friends should look more alike than strangers. The AUC
  of the similarity of friend pairs against an equal number of random
  non-friend pairs (0.5 = no better than chance).
- `friend_in_top_k`: the share of users (with at least one friend) whose
  `k` most similar users include one of their friends.
- `rank_correlation`: on synthetic data, Spearman's rank correlation between
  the model's similarity and the generator's true taste similarity
  (`Oracle.taste_similarity`) over random user pairs.

Scores are any "larger is more similar" numbers (1 / distance, cosine).
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

# (ids_a [N], ids_b [N]) -> [N] similarity of each pair.
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of `values` [N], ties sharing the mean of their ranks.

  Example: `average_ranks([3, 1, 3])` is `[2.5, 1, 2.5]`.
  """
  values = np.asarray(values, np.float64)
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  starts = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
  ends = np.concatenate([starts[1:], [values.size]])
  ranks = np.empty(values.size)
  ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
  return ranks


def pair_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
  """Chance that a positive pair scores above a negative one (ties count one half).

  Args:
    positive_scores: [P] scores of positive (friend) pairs.
    negative_scores: [N] scores of negative pairs.

  Returns:
    The Mann-Whitney AUC in [0, 1].

  Raises:
    ValueError: either side is empty or holds a non-finite score.
  """
  pos = np.asarray(positive_scores, np.float64).ravel()
  neg = np.asarray(negative_scores, np.float64).ravel()
  for name, values in (("positive_scores", pos), ("negative_scores", neg)):
    if values.size == 0:
      raise ValueError(f"`{name}` should not be empty. Received: 0 scores.")
    if not np.all(np.isfinite(values)):
      row = int(np.flatnonzero(~np.isfinite(values))[0])
      raise ValueError(f"`{name}` should be finite. Received: `{name}[{row}]` = {values[row]}.")
  ranks = average_ranks(np.concatenate([pos, neg]))
  return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0)
               / (pos.size * neg.size))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman's rank correlation of two [N] samples (Pearson of average ranks).

  Returns NaN when either sample is constant.
  """
  ra, rb = average_ranks(np.asarray(a)), average_ranks(np.asarray(b))
  if len(ra) != len(rb):
    raise ValueError(f"`a` and `b` should have the same length. Received: {len(ra)} and {len(rb)}.")
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
  return float((ra * rb).sum() / den) if den > 0 else float("nan")


def friend_pairs(links: pd.DataFrame, known: Sequence[str]) -> np.ndarray:
  """Unique unordered friend pairs [F, 2] (sorted ids) whose both users are `known`.

  Self-links are dropped; a link listed both ways counts once.
  """
  if links is None or len(links) == 0:
    return np.zeros((0, 2), dtype=object)
  a = links["user_id"].astype(str).to_numpy()
  b = links["other_user_id"].astype(str).to_numpy()
  known = set(np.asarray(known).astype(str).tolist())
  keep = np.fromiter(((x in known) and (y in known) and x != y for x, y in zip(a, b)),
                     bool, len(a))
  pairs = np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], axis=1)
  if not len(pairs):
    return np.zeros((0, 2), dtype=object)
  return np.unique(pairs.astype(str), axis=0).astype(object)


def split_pairs(pairs: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Seeded half/half split of friend pairs into (valid, test)."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(pairs))
  half = len(pairs) // 2
  return pairs[order[:half]], pairs[order[half:]]


def random_non_friend_pairs(users: Sequence[str], friends: set, n: int,
                            rng: np.random.Generator) -> np.ndarray:
  """`n` random pairs of distinct `users` that are not friends ([n, 2])."""
  users = np.asarray(users).astype(str)
  if len(users) < 2:
    raise ValueError("Need at least 2 users to draw non-friend pairs. "
                     f"Received: {len(users)} users.")
  out = []
  for _ in range(100):
    a = users[rng.integers(0, len(users), size=2 * n)]
    b = users[rng.integers(0, len(users), size=2 * n)]
    ok = np.fromiter(((x != y) and ((min(x, y), max(x, y)) not in friends)
                      for x, y in zip(a, b)), bool, len(a))
    out.extend(zip(a[ok], b[ok]))
    if len(out) >= n:
      break
  return np.asarray(out[:n], dtype=object).reshape(-1, 2)


def friend_pair_auc(score_pairs: PairScorer, pairs: np.ndarray, users: Sequence[str],
                    all_friends: set, seed: int = 0) -> Dict[str, float]:
  """AUC of friend pairs against as many random non-friend pairs.

  Args:
    score_pairs: (ids_a [N], ids_b [N]) -> [N] similarity.
    pairs: [F, 2] friend pairs to score.
    users: Users the negatives are drawn from.
    all_friends: Every friend pair as sorted tuples (negatives avoid them all).
    seed: Seed of the negative draw.

  Returns:
    `{"friend_auc": ..., "friend_pairs": F}`; AUC is NaN with no pairs.
  """
  if len(pairs) == 0:
    return {"friend_auc": float("nan"), "friend_pairs": 0}
  rng = np.random.default_rng(seed)
  negatives = random_non_friend_pairs(users, all_friends, len(pairs), rng)
  pos = score_pairs(pairs[:, 0], pairs[:, 1])
  neg = score_pairs(negatives[:, 0], negatives[:, 1])
  return {"friend_auc": pair_auc(pos, neg), "friend_pairs": int(len(pairs))}


def friend_in_top_k(top_ids: Callable[[np.ndarray, int], np.ndarray], pairs: np.ndarray,
                    k: int = 10, batch_size: int = 1024) -> Dict[str, float]:
  """Share of users whose `k` most similar users include a friend (of `pairs`).

  Args:
    top_ids: (user ids [B], k) -> [B, k] ids of their most similar other users.
    pairs: [F, 2] friend pairs; every user in them is evaluated.
    k: Cut-off.
    batch_size: Users per call of `top_ids`.

  Returns:
    `{f"friend_in_top{k}": share, "users_with_friends": n}`.
  """
  if len(pairs) == 0:
    return {f"friend_in_top{k}": float("nan"), "users_with_friends": 0}
  friends: Dict[str, set] = {}
  for a, b in pairs:
    friends.setdefault(a, set()).add(b)
    friends.setdefault(b, set()).add(a)
  users = np.asarray(sorted(friends), dtype=object)
  hits = 0
  for start in range(0, len(users), batch_size):
    batch = users[start:start + batch_size]
    top = top_ids(batch, k)
    for user, row in zip(batch, top):
      hits += bool(friends[user] & set(np.asarray(row).astype(str).tolist()))
  return {f"friend_in_top{k}": hits / len(users), "users_with_friends": int(len(users))}


def rank_correlation(score_pairs: PairScorer, truth: PairScorer, users: Sequence[str],
                     n_pairs: int = 20_000, seed: int = 0) -> Dict[str, float]:
  """Spearman correlation of model and true similarity over random user pairs.

  Args:
    score_pairs: The model's pair similarity.
    truth: The true pair similarity (e.g. `oracle.taste_similarity`).
    users: Users the pairs are drawn from.
    n_pairs: Pairs drawn.
    seed: Seed of the draw.

  Returns:
    `{"oracle_spearman": rho, "oracle_pairs": n}`.
  """
  rng = np.random.default_rng(seed)
  pairs = random_non_friend_pairs(users, set(), n_pairs, rng)
  rho = spearman(score_pairs(pairs[:, 0], pairs[:, 1]), truth(pairs[:, 0], pairs[:, 1]))
  return {"oracle_spearman": rho, "oracle_pairs": int(len(pairs))}


def similarity_metrics(score_pairs: PairScorer,
                       top_ids: Optional[Callable[[np.ndarray, int], np.ndarray]],
                       users: Sequence[str], links: Optional[pd.DataFrame],
                       truth: Optional[PairScorer] = None, k: int = 10, seed: int = 0,
                       n_oracle_pairs: int = 20_000) -> Dict[str, float]:
  """Every similarity check, keyed `<split>/<slice>/<metric>` (`valid/all/...`, `test/all/...`).

  Friend pairs are split half/half (seeded) into a validation half (for
  tuning) and a test half; each half's AUC is against its own random
  non-friend pairs. The top-k share counts every friend (`test/all/...`).

  Args:
    score_pairs: Pair similarity of the scorer.
    top_ids: Top-k similar users of a batch of users (None: skip top-k).
    users: The users the scorer knows.
    links: `user_links` (None or empty: friend metrics are skipped).
    truth: True pair similarity (synthetic oracle) or None.
    k: Cut-off of the top-k check.
    seed: Seed of every random draw.
    n_oracle_pairs: Random pairs for the rank correlation.

  Returns:
    Metric key -> value.
  """
  users = np.asarray(users).astype(str)
  out: Dict[str, float] = {}
  pairs = friend_pairs(links, users)
  if len(pairs):
    every = {(a, b) for a, b in pairs}
    for offset, (split, half) in enumerate(zip(("valid", "test"), split_pairs(pairs, seed))):
      result = friend_pair_auc(score_pairs, half, users, every, seed + 1 + offset)
      out.update({f"{split}/all/{key}": value for key, value in result.items()})
    if top_ids is not None:
      # Every friend counts: the check has no training side to hold out from.
      out.update({f"test/all/{key}": value
                  for key, value in friend_in_top_k(top_ids, pairs, k).items()})
  if truth is not None:
    out.update({f"test/all/{key}": value for key, value in
                rank_correlation(score_pairs, truth, users, n_oracle_pairs, seed + 3).items()})
  return out
