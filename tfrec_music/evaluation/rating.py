"""Rating and binary-label metrics: RMSE / MAE for explicit ratings, AUC / log loss for clicks.

Plain numpy in float64, so the numbers do not depend on batch sizes or on Keras
metric state, and match a hand computation to the last digit.
"""

import logging
import math
from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["rating_metrics", "binary_metrics"]

_EPSILON = 1e-7


def rating_metrics(y_true: Any, y_pred: Any) -> Dict[str, float]:
  """Regression metrics of predicted ratings.

  Example:
    >>> rating_metrics([3, 5], [2, 5])
    {'mse': 0.5, 'rmse': 0.7071067811865476, 'mae': 0.5, 'count': 2}

  Args:
    y_true: [N] true ratings (a model's [N, 1] output shape is accepted too).
    y_pred: [N] predicted ratings, same length.

  Returns:
    Dict with `mse`, `rmse`, `mae` (floats) and `count` (int N).

  Raises:
    ValueError: The inputs are empty, not numbers, of different lengths, or not
      finite.
  """
  y_true, y_pred = _paired_vectors(y_true, y_pred, "y_true", "y_pred")
  error = y_pred - y_true
  mse = float(np.mean(error * error))
  return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(error))),
          "count": int(error.size)}


def binary_metrics(labels: Any, probabilities: Any) -> Dict[str, float]:
  """Classification metrics of predicted probabilities for 0/1 labels.

  - `accuracy`: share of rows where `probability > 0.5` equals the label (the
    threshold rule of Keras' `BinaryAccuracy`).
  - `auc`: ROC AUC by the Mann–Whitney statistic: the chance that a random
    positive scores above a random negative, ties counted as one half (ranks of
    tied probabilities are averaged). With only one class among the labels
    there is no positive–negative pair to compare, so AUC is undefined and
    reported as NaN (a warning is logged), rather than a misleading 0.5.
  - `log_loss`: mean binary cross-entropy in nats, with probabilities clipped
    to [1e-7, 1 - 1e-7] so a confident mistake costs about 16.1 instead of inf.
  - `count`: number of rows (an int).

  Args:
    labels: [N] labels in {0, 1} (bool, int or float; [N, 1] accepted).
    probabilities: [N] predicted probabilities of label 1, each in [0, 1].

  Returns:
    Dict with `accuracy`, `auc`, `log_loss` (floats) and `count` (int).

  Raises:
    ValueError: The inputs are empty, of different lengths, not finite, labels
      are not 0/1, or probabilities are outside [0, 1].
  """
  labels, probabilities = _paired_vectors(labels, probabilities, "labels", "probabilities")
  if not np.all((labels == 0) | (labels == 1)):
    row = int(np.flatnonzero((labels != 0) & (labels != 1))[0])
    raise ValueError("`labels` should be 0 or 1. Received: "
                     f"`labels[{row}]` = {labels[row]:g}.")
  if probabilities.min() < 0 or probabilities.max() > 1:
    row = int(np.flatnonzero((probabilities < 0) | (probabilities > 1))[0])
    raise ValueError("`probabilities` should be in [0, 1]; pass sigmoid outputs, not logits. "
                     f"Received: `probabilities[{row}]` = {probabilities[row]:g}.")
  positive = labels == 1
  accuracy = float(np.mean((probabilities > 0.5) == positive))
  clipped = np.clip(probabilities, _EPSILON, 1.0 - _EPSILON)
  log_loss = float(-np.mean(np.where(positive, np.log(clipped), np.log1p(-clipped))))
  return {"accuracy": accuracy, "auc": _mann_whitney_auc(probabilities, positive),
          "log_loss": log_loss, "count": int(labels.size)}


def _mann_whitney_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """AUC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)."""
  n_pos = int(positive.sum())
  n_neg = positive.size - n_pos
  if n_pos == 0 or n_neg == 0:
    logging.getLogger(__name__).warning(
        "AUC is undefined when all %d labels are %d; reporting NaN.", positive.size,
        int(n_pos > 0))
    return math.nan
  ranks = _average_ranks(scores)
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, tied values sharing the mean of their ranks."""
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  starts = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]]))
  ends = np.concatenate([starts[1:], [values.size]])
  # A group at sorted positions [s, e) holds ranks s+1 .. e, whose mean is (s+1+e)/2.
  group_rank = (starts + 1 + ends) / 2.0
  ranks = np.empty(values.size)
  ranks[order] = np.repeat(group_rank, ends - starts)
  return ranks


def _paired_vectors(first: Any, second: Any, first_name: str,
                    second_name: str) -> Tuple[np.ndarray, np.ndarray]:
  """Checks two same-length finite numeric vectors; returns them as float64 [N]."""
  out = []
  for name, value in ((first_name, first), (second_name, second)):
    array = np.asarray(value)
    if array.ndim == 2 and array.shape[1] == 1:
      array = array[:, 0]  # Keras models predict [N, 1].
    if array.ndim != 1 or array.dtype.kind not in "biuf":
      raise ValueError(f"`{name}` should be a 1-D array of numbers ([N] or [N, 1]). Received: "
                       f"dtype {array.dtype}, shape {array.shape}.")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
      row = int(np.flatnonzero(~np.isfinite(array))[0])
      raise ValueError(f"`{name}` should be finite. Received: `{name}[{row}]` = {array[row]}.")
    out.append(array)
  if out[0].size != out[1].size:
    raise ValueError(f"`{first_name}` and `{second_name}` should have the same length. "
                     f"Received: {out[0].size} and {out[1].size}.")
  if out[0].size == 0:
    raise ValueError(f"`{first_name}` should not be empty. Received: 0 rows.")
  return out[0], out[1]
