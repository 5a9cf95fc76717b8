"""Deduplication, the minimum-activity filter, and causal pair weights."""

from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_music.data.report import DataReport

_KEYS = ["user_id", "item_id"]


def deduplicate(interactions: pd.DataFrame, report: DataReport,
                return_listens: bool = False):
  """Keeps one row per (user, item): the first listen, with play counts summed.

  Retrieval is "recommend a track the user has not heard", so a repeated listen
  is not a new event. The earliest timestamp is kept (when the user found the
  track), `weight` is summed and `rating` is the latest one given. Those sums
  see every listen, later ones too: `prepare` recomputes them from the listens
  up to each row's split point with `causal_totals`, so nothing from after a
  split point reaches training.

  Args:
    interactions: Validated interactions.
    report: Counts go to `dedup/duplicate_rows_merged`.
    return_listens: Also return the individual listens of repeated pairs.

  Returns:
    Interactions with unique (user_id, item_id) pairs, in original row order;
    with `return_listens`, `(pairs, listens)` where `listens` holds every row
    of a repeated pair (None when there is none or no `timestamp` column).
  """
  frame = interactions.reset_index(drop=True)
  frame = frame.assign(_order=np.arange(len(frame)))
  if "timestamp" in frame.columns:
    frame = frame.sort_values(["timestamp", "_order"], kind="stable")
  dup = frame.duplicated(_KEYS, keep="first")
  n_dup = int(dup.sum())
  listens = None
  if n_dup:
    if "timestamp" in frame.columns:
      repeated = frame.duplicated(_KEYS, keep=False)
      listens = frame[repeated].drop(columns="_order").reset_index(drop=True)
    first = frame[~dup].set_index(_KEYS)
    grouped = frame.groupby(_KEYS, sort=False)
    if "weight" in frame.columns:
      first["weight"] = grouped["weight"].sum().astype(np.float32)
    if "rating" in frame.columns:
      first["rating"] = grouped["rating"].last()
    frame = first.reset_index()
  frame = frame.sort_values("_order", kind="stable").drop(columns="_order")
  report.record("dedup", rows_in=len(interactions), duplicate_rows_merged=n_dup,
                rows_out=len(frame))
  frame = frame.reset_index(drop=True)
  return (frame, listens) if return_listens else frame


def causal_totals(parts: Dict[str, pd.DataFrame], listens: Optional[pd.DataFrame],
                  order: Tuple[str, ...], report: DataReport) -> Dict[str, pd.DataFrame]:
  """Recomputes the weight and rating of repeated pairs from listens before the split point.

  A user's rows in the split `order[i]` may only count listens that happened
  before the user's first row in a later split (`order[i + 1:]`): a training
  pair's play count stops at the validation point, a validation pair's at the
  test point. The pair's first listen always counts (it is the row itself).

  Args:
    parts: Split name -> deduplicated rows (with `timestamp`).
    listens: Every listen of a repeated pair (`deduplicate(..., return_listens=True)`),
      or None.
    order: Split names from earliest to latest, e.g. `("train", "valid", "test")`.
    report: Counts go to `dedup/listens_after_split_point`.

  Returns:
    The same splits with `weight` / `rating` recomputed where pairs repeat.
  """
  if listens is None or not any(c in listens.columns for c in ("weight", "rating")):
    return parts
  cutoff = None  # user -> first timestamp of the splits after the current one
  out = dict(parts)
  excluded = 0
  for name in reversed(order):
    frame = parts[name]
    if cutoff is not None and len(frame):
      out[name], n = _recount(frame, listens, cutoff)
      excluded += n
    starts = frame.groupby("user_id")["timestamp"].min() if len(frame) else None
    if starts is not None:
      cutoff = starts if cutoff is None else pd.concat([cutoff, starts]).groupby(level=0).min()
  report.add("dedup", "listens_after_split_point", excluded)
  return out


def _recount(frame: pd.DataFrame, listens: pd.DataFrame,
             cutoff: pd.Series) -> Tuple[pd.DataFrame, int]:
  """`frame` with weight / rating from `listens` before each user's `cutoff`."""
  rows = listens.merge(frame[_KEYS + ["timestamp"]].rename(columns={"timestamp": "_first"}),
                       on=_KEYS, how="inner")
  if not len(rows):
    return frame, 0
  limit = rows["user_id"].map(cutoff).to_numpy(dtype=np.float64, na_value=np.inf)
  ts = rows["timestamp"].to_numpy(dtype=np.float64)
  keep = (ts < limit) | (ts <= rows["_first"].to_numpy(dtype=np.float64))
  grouped = rows[keep].groupby(_KEYS, sort=False)
  out = frame.set_index(_KEYS)
  if "weight" in rows.columns and "weight" in out.columns:
    sums = grouped["weight"].sum().astype(np.float32)
    out.loc[sums.index, "weight"] = sums
  if "rating" in rows.columns and "rating" in out.columns:
    last = grouped["rating"].last()
    out.loc[last.index, "rating"] = last
  return out.reset_index()[frame.columns], int((~keep).sum())


def kcore(interactions: pd.DataFrame, k: int, report: DataReport,
          max_iterations: int = 100, items: bool = False) -> pd.DataFrame:
  """Keeps users with at least `k` interactions (and, with `items`, items too).

  By default only users are filtered: every item stays in the data, so the
  catalogue keeps the long tail (an item with one play can still be
  recommended, placed by content where the model has content). With
  `items=True` this is the classic k-core: removing sparse items can make
  users sparse and the other way round, so the filters alternate until
  neither removes anything.

  Args:
    interactions: Deduplicated interactions.
    k: Minimum interactions per user (and item); `k <= 1` disables it.
    report: Counts go to the `kcore` step.
    max_iterations: Safety bound on the number of passes.
    items: Also drop items with fewer than `k` interactions.

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
    keep = frame["user_id"].map(frame["user_id"].value_counts()) >= k
    if items:
      keep &= frame["item_id"].map(frame["item_id"].value_counts()) >= k
    if keep.all():
      break
    frame = frame[keep.to_numpy()]
    if not items:
      break
  if len(frame) == 0:
    raise ValueError(
        f"No interactions survive the {k}-interaction minimum ({len(interactions)} rows "
        "in). Lower it with `--kcore` (e.g. `--kcore 2`), or give more data.")
  report.record(
      "kcore", k=k, items_filtered=bool(items), iterations=iterations,
      interactions_in=len(interactions), interactions_dropped=len(interactions) - len(frame),
      users_in=interactions["user_id"].nunique(),
      users_dropped=interactions["user_id"].nunique() - frame["user_id"].nunique(),
      items_in=interactions["item_id"].nunique(),
      items_dropped=interactions["item_id"].nunique() - frame["item_id"].nunique())
  return frame.reset_index(drop=True)
