"""Train / validation / test splits: leave-one-out, ratio, and cold users."""

from typing import Dict, Tuple

import numpy as np
import pandas as pd

from tfrec_music.data.report import DataReport


def _order_within_users(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
  """Sorts rows by user, then time (or a seeded shuffle without timestamps)."""
  frame = frame.reset_index(drop=True)
  if "timestamp" in frame.columns:
    # Ties in time keep file order, so the split is stable across runs.
    key = frame["timestamp"].to_numpy()
  else:
    key = np.random.default_rng(seed).permutation(len(frame))
  order = np.lexsort((np.arange(len(frame)), key, frame["user_id"].to_numpy()))
  return frame.iloc[order].reset_index(drop=True)


def leave_one_out(interactions: pd.DataFrame, seed: int,
                  report: DataReport) -> Dict[str, pd.DataFrame]:
  """Per user: last interaction -> test, second-last -> valid, rest -> train.

  "Last" is by timestamp when the column exists (temporal leave-one-out), and
  by a seeded random order otherwise. Users with fewer than 3 interactions keep
  everything in train (counted in the report), so no user is lost.

  Args:
    interactions: Filtered interactions.
    seed: Seed for the random order without timestamps.
    report: Counts go to the `split` step.

  Returns:
    Dict with `train`, `valid`, `test` frames.
  """
  frame = _order_within_users(interactions, seed)
  users = frame["user_id"].to_numpy()
  n = len(frame)
  counts = frame.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
  # Rows are grouped by user; a row's distance from the end of its block.
  block_start = np.ones(n, dtype=bool)
  block_start[1:] = users[1:] != users[:-1]
  block_id = np.cumsum(block_start) - 1
  block_first = np.flatnonzero(block_start)
  pos_in_block = np.arange(n) - block_first[block_id]
  from_end = counts - 1 - pos_in_block
  eligible = counts >= 3
  test = eligible & (from_end == 0)
  valid = eligible & (from_end == 1)
  train = ~(test | valid)
  report.record("split", method="temporal_leave_one_out" if "timestamp" in frame.columns
                else "random_leave_one_out",
                train_rows=int(train.sum()), valid_rows=int(valid.sum()),
                test_rows=int(test.sum()),
                users_too_short_for_split=int(frame.loc[~eligible, "user_id"].nunique()))
  return {"train": frame[train].reset_index(drop=True),
          "valid": frame[valid].reset_index(drop=True),
          "test": frame[test].reset_index(drop=True)}


def ratio_split(interactions: pd.DataFrame, ratios: Tuple[float, float, float],
                seed: int, report: DataReport) -> Dict[str, pd.DataFrame]:
  """Seeded random split of rows by `ratios` (train, valid, test), for rating models.

  Raises:
    ValueError: ratios are not three non-negative numbers summing to 1.
  """
  if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
    raise ValueError("`ratios` should be three non-negative numbers summing to 1. "
                     f"Received: `ratios` = {tuple(ratios)}.")
  frame = interactions.reset_index(drop=True)
  perm = np.random.default_rng(seed).permutation(len(frame))
  n_train = int(round(ratios[0] * len(frame)))
  n_valid = int(round(ratios[1] * len(frame)))
  parts = {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid],
           "test": perm[n_train + n_valid:]}
  out = {k: frame.iloc[np.sort(v)].reset_index(drop=True) for k, v in parts.items()}
  report.record("split", method="ratio", ratios=list(ratios),
                **{f"{k}_rows": len(v) for k, v in out.items()})
  return out


def hold_out_users(interactions: pd.DataFrame, share: float, seed: int,
                   report: DataReport) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
  """Takes a seeded share of users out of training entirely (cold users).

  Their last interaction becomes the target and the rest their history, which
  a model may read as features at serving time but never trains on.

  Args:
    interactions: Filtered interactions.
    share: Fraction of users to hold out, in [0, 0.5].
    seed: Seed of the choice.
    report: Counts go to the `cold_users` step.

  Returns:
    (remaining interactions, cold-user history, cold-user targets).
  """
  if not 0.0 <= share <= 0.5:
    raise ValueError("`cold_user_share` should be in [0, 0.5]. "
                     f"Received: `cold_user_share` = {share}.")
  empty = interactions.iloc[:0]
  if share == 0.0:
    report.record("cold_users", users=0, history_rows=0, target_rows=0)
    return interactions, empty, empty
  users = np.sort(interactions["user_id"].unique())
  rng = np.random.default_rng(seed + 7919)
  n_cold = int(round(share * len(users)))
  cold = set(rng.choice(users, size=n_cold, replace=False).tolist()) if n_cold else set()
  mask = interactions["user_id"].isin(cold).to_numpy()
  cold_rows = _order_within_users(interactions[mask], seed)
  last = np.ones(len(cold_rows), dtype=bool)
  if len(cold_rows):
    u = cold_rows["user_id"].to_numpy()
    last[:-1] = u[:-1] != u[1:]
  history = cold_rows[~last].reset_index(drop=True)
  targets = cold_rows[last].reset_index(drop=True)
  report.record("cold_users", share=share, users=len(cold), history_rows=len(history),
                target_rows=len(targets))
  return interactions[~mask].reset_index(drop=True), history, targets
