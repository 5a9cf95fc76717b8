"""Deduplication and k-core filtering of interactions."""

import numpy as np
import pandas as pd

from tfrec_music.data.report import DataReport


def deduplicate(interactions: pd.DataFrame, report: DataReport) -> pd.DataFrame:
  """Keeps one row per (user, item): the first listen, with play counts summed.

  Retrieval is "recommend a track the user has not heard", so a repeated listen
  is not a new event. The earliest timestamp is kept (when the user found the
  track), `weight` is summed and `rating` is the latest one given.

  Args:
    interactions: Validated interactions.
    report: Counts go to `dedup/duplicate_rows_merged`.

  Returns:
    Interactions with unique (user_id, item_id) pairs, in original row order.
  """
  frame = interactions.reset_index(drop=True)
  frame = frame.assign(_order=np.arange(len(frame)))
  if "timestamp" in frame.columns:
    frame = frame.sort_values(["timestamp", "_order"], kind="stable")
  dup = frame.duplicated(["user_id", "item_id"], keep="first")
  n_dup = int(dup.sum())
  if n_dup:
    keys = ["user_id", "item_id"]
    first = frame[~dup].set_index(keys)
    grouped = frame.groupby(keys, sort=False)
    if "weight" in frame.columns:
      first["weight"] = grouped["weight"].sum().astype(np.float32)
    if "rating" in frame.columns:
      first["rating"] = grouped["rating"].last()
    frame = first.reset_index()
  frame = frame.sort_values("_order", kind="stable").drop(columns="_order")
  report.record("dedup", rows_in=len(interactions), duplicate_rows_merged=n_dup,
                rows_out=len(frame))
  return frame.reset_index(drop=True)


def kcore(interactions: pd.DataFrame, k: int, report: DataReport,
          max_iterations: int = 100) -> pd.DataFrame:
  """Keeps users and items with at least `k` interactions, to a fixed point.

  Removing sparse items can make users sparse and the other way round, so the
  two filters alternate until neither removes anything.

  Args:
    interactions: Deduplicated interactions.
    k: Minimum interactions per user and per item; `k <= 1` disables it.
    report: Counts go to the `kcore` step.
    max_iterations: Safety bound on the number of passes.

  Returns:
    The filtered interactions.

  Raises:
    ValueError: `k` is negative, or nothing survives the filter.
  """
  if k < 0:
    raise ValueError(f"`kcore` should be a non-negative integer. Received: `kcore` = {k}.")
  frame = interactions
  iterations = 0
  while k > 1 and iterations < max_iterations:
    iterations += 1
    user_counts = frame["user_id"].map(frame["user_id"].value_counts())
    item_counts = frame["item_id"].map(frame["item_id"].value_counts())
    keep = (user_counts >= k) & (item_counts >= k)
    if keep.all():
      break
    frame = frame[keep.to_numpy()]
  if len(frame) == 0:
    raise ValueError(
        f"No interactions survive {k}-core filtering ({len(interactions)} rows "
        "in). Lower it with `--kcore` (e.g. `--kcore 2`), or give more data.")
  report.record(
      "kcore", k=k, iterations=iterations,
      interactions_in=len(interactions), interactions_dropped=len(interactions) - len(frame),
      users_in=interactions["user_id"].nunique(),
      users_dropped=interactions["user_id"].nunique() - frame["user_id"].nunique(),
      items_in=interactions["item_id"].nunique(),
      items_dropped=interactions["item_id"].nunique() - frame["item_id"].nunique())
  return frame.reset_index(drop=True)
