"""Rating scorers evaluated side by side: RMSE / MSE / MAE by split and item slice.

A scorer maps a split's frame (`user_id`, `item_id`, ...) to [N] predicted
ratings; `baseline_scorers` makes the three rating baselines' scorers.
"""

from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrec_music.evaluation.rating import rating_metrics


def baseline_scorers(fits: Any, rating_range: Tuple[float, float]
                     ) -> Dict[str, Callable[[pd.DataFrame], np.ndarray]]:
  """Frame -> [N] predictions of the three baselines (biased ones clipped to `rating_range`).

  Args:
    fits: The fitted baselines (`tfrec_music.models.rating_baselines.BaselineFits`).
    rating_range: (low, high) clip of the biased baselines' predictions.
  """
  low, high = rating_range
  return {
      "global_mean": lambda f: fits.global_mean.predict(f["user_id"], f["item_id"]),
      "biased": lambda f: np.clip(fits.biased.predict(f["user_id"], f["item_id"]), low, high),
      "biased_mf": lambda f: np.clip(fits.biased_mf.predict(f["user_id"], f["item_id"]),
                                     low, high),
  }


def evaluate_rating_scorers(prepared, scorers: Mapping[str, Callable[[pd.DataFrame], np.ndarray]],
                            splits: Sequence[str] = ("valid", "test")
                            ) -> Dict[str, Dict[str, float]]:
  """RMSE / MSE / MAE / count of each scorer by split and item slice (all, cold, warm).

  Args:
    prepared: `PreparedData` (its splits carry `rating`; `warm_items` marks slices).
    scorers: Name -> function of a split's frame returning [N] predicted ratings.
    splits: Splits to evaluate (empty splits are skipped).

  Returns:
    Name -> `{"<split>/<slice>/<metric>": value}`.
  """
  out: Dict[str, Dict[str, float]] = {name: {} for name in scorers}
  for split in splits:
    frame = getattr(prepared, split)
    if len(frame) == 0:
      continue
    warm = prepared.warm_items[prepared.item_index(frame["item_id"])]
    truth = frame["rating"].to_numpy(np.float64)
    for name, scorer in scorers.items():
      pred = np.asarray(scorer(frame), np.float64)
      for slice_name, mask in (("all", np.ones(len(truth), bool)), ("cold", ~warm),
                               ("warm", warm)):
        if mask.any():
          for key, value in rating_metrics(truth[mask], pred[mask]).items():
            out[name][f"{split}/{slice_name}/{key}"] = value
  return out
