"""Items removed from each row's ranking (a user's training items), as CSR arrays."""

from typing import Any, Sequence, Tuple, Union

import numpy as np

Exclude = Union[Tuple[Any, Any], Sequence[Any], None]


def exclusions_csr(exclude: Exclude, n_rows: int) -> Tuple[np.ndarray, np.ndarray]:
  """Normalizes `exclude` to int64 `(indptr [n_rows + 1], indices)`."""
  if exclude is None:
    return np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int64)
  if isinstance(exclude, tuple) or (hasattr(exclude, "indptr") and hasattr(exclude, "indices")):
    if isinstance(exclude, tuple):
      if len(exclude) != 2:
        raise ValueError("`exclude` given as a tuple should be a CSR pair (indptr, indices); "
                         "pass a list for per-row arrays. Received: a tuple of length "
                         f"{len(exclude)}.")
      indptr, indices = exclude
    else:
      indptr, indices = exclude.indptr, exclude.indices
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indices.size == 0:
      indices = indices.astype(np.int64).reshape(0)
    if indptr.ndim != 1 or indptr.dtype.kind not in "iu" or len(indptr) != n_rows + 1:
      raise ValueError(f"`exclude` indptr should be int [N + 1] = [{n_rows + 1}]. Received: "
                       f"dtype {indptr.dtype}, shape {indptr.shape}.")
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
      raise ValueError("`exclude` indices should be a 1-D int array. Received: dtype "
                       f"{indices.dtype}, shape {indices.shape}.")
    if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
      raise ValueError("`exclude` indptr should start at 0, never decrease and end at "
                       f"len(indices) = {len(indices)}. Received: indptr[0] = {indptr[0]}, "
                       f"indptr[-1] = {indptr[-1]}.")
    return indptr.astype(np.int64), indices.astype(np.int64)
  if isinstance(exclude, (str, bytes)) or not hasattr(exclude, "__len__"):
    raise ValueError("`exclude` should be a CSR tuple (indptr, indices) or a list of int "
                     f"arrays. Received: {type(exclude).__name__}.")
  if len(exclude) != n_rows:
    raise ValueError(f"`exclude` should have one entry per row, N = {n_rows}. Received: "
                     f"{len(exclude)} entries.")
  parts = []
  for row, items in enumerate(exclude):
    items = np.zeros(0, np.int64) if items is None else np.asarray(items)
    if items.size == 0:
      items = np.zeros(0, np.int64)
    if items.ndim != 1 or items.dtype.kind not in "iu":
      raise ValueError(f"`exclude[{row}]` should be a 1-D array of int item indices. Received: "
                       f"dtype {items.dtype}, shape {items.shape}.")
    parts.append(items.astype(np.int64))
  lengths = np.fromiter((len(p) for p in parts), np.int64, count=n_rows)
  indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  indices = np.concatenate(parts) if parts else np.zeros(0, np.int64)
  return indptr, indices


def check_exclusion_range(indices: np.ndarray, n_items: int) -> None:
  """Raises ValueError when an excluded item index is outside [0, n_items)."""
  if indices.size and (indices.min() < 0 or indices.max() >= n_items):
    bad = int(indices[(indices < 0) | (indices >= n_items)][0])
    raise ValueError(f"`exclude` item indices should be in [0, n_items) = [0, {n_items}). "
                     f"Received: {bad}.")


def chunk_exclusions(indptr, indices, start, stop) -> Tuple[np.ndarray, np.ndarray]:
  """(row within chunk, item) pairs excluded in rows [start, stop)."""
  counts = np.diff(indptr[start:stop + 1])
  rows = np.repeat(np.arange(stop - start), counts)
  return rows, indices[indptr[start]:indptr[stop]]
