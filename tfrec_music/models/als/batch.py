"""Batch recommendations of a fit for every user and every track (as Spark's ALS writes them)."""

import io as io_lib
from typing import Dict

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.models.als.factors import ALSFit


def top_n_frames(fit: ALSFit, n: int, user_ids: np.ndarray, item_ids: np.ndarray,
                 seen_users: np.ndarray, seen_items: np.ndarray,
                 chunk: int = 2048) -> Dict[str, pd.DataFrame]:
  """Top-n tracks per user (`user_top_items`) and top-n users per track (`item_top_users`).

  Args:
    fit: The fit.
    n: Results per row.
    user_ids: [n_users] ids of the fit's user rows.
    item_ids: [n_items] catalogue ids.
    seen_users: [N] user rows of the pairs to leave out (training pairs).
    seen_items: [N] their item rows.
    chunk: Rows scored at once.

  Returns:
    Name -> frame of (`user_id`, `item_id`, `rank` 1..n, `score`).
  """
  frames = {}
  for name, rows, cols, row_ids, col_ids, row_bias, col_bias, seen in (
      ("user_top_items", fit.user_factors, fit.item_factors, user_ids, item_ids,
       fit.user_bias, fit.item_bias, (seen_users, seen_items)),
      ("item_top_users", fit.item_factors, fit.user_factors, item_ids, user_ids,
       fit.item_bias, fit.user_bias, (seen_items, seen_users))):
    k = min(n, len(col_ids))
    order = np.argsort(seen[0], kind="stable")
    bounds = np.searchsorted(seen[0][order], np.arange(len(rows) + 1))
    top_rows, top_cols, top_scores = [], [], []
    for start in range(0, len(rows), chunk):
      stop = min(start + chunk, len(rows))
      scores = (rows[start:stop] @ cols.T + col_bias[None, :] + row_bias[start:stop, None]
                + fit.offset)
      lo, hi = bounds[start], bounds[stop]
      scores[seen[0][order][lo:hi] - start, seen[1][order][lo:hi]] = -np.inf
      part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
      part_scores = np.take_along_axis(scores, part, 1)
      rank = np.argsort(-part_scores, axis=1, kind="stable")
      top_cols.append(np.take_along_axis(part, rank, 1))
      top_scores.append(np.take_along_axis(part_scores, rank, 1))
      top_rows.append(np.repeat(np.arange(start, stop), k).reshape(-1, k))
    r, c, s = (np.concatenate(x) for x in (top_rows, top_cols, top_scores))
    valid = np.isfinite(s)
    first, second = (("user_id", "item_id") if name == "user_top_items"
                     else ("item_id", "user_id"))
    frames[name] = pd.DataFrame({
        first: row_ids[r[valid]], second: col_ids[c[valid]],
        "rank": (np.tile(np.arange(1, k + 1), len(rows)).reshape(-1, k))[valid],
        "score": s[valid].astype(np.float32)})
  return frames


def write_frame(frame: pd.DataFrame, path: str, fmt: str) -> None:
  """Writes a frame as CSV or Parquet (local or `gs://`)."""
  if fmt == "csv":
    io.write_text(path, frame.to_csv(index=False))
    return
  buffer = io_lib.BytesIO()
  frame.to_parquet(buffer, index=False)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
