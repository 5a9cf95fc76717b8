"""Checks and row slicing of the retrieval evaluation's inputs (messages name the argument)."""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

# The slice every row belongs to; `item_slices` cannot redefine it.
ALL = "all"


def check_positive_int(value: Any, name: str) -> int:
  """`value` as an int; ValueError naming `name` unless it is a positive integer."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"`{name}` should be a positive integer. Received: `{name}` = {value!r}.")
  return int(value)


def check_ks(ks: Sequence[int]) -> Tuple[int, ...]:
  """The cut-offs as sorted unique ints (one int is accepted as a single cut-off)."""
  if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
    ks = (ks,)
  try:
    values = list(ks)
  except TypeError:
    values = None
  if not values or any(isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer))
                       or k < 1 for k in values):
    raise ValueError("`ks` should be a non-empty sequence of positive integers. "
                     f"Received: `ks` = {ks!r}.")
  return tuple(sorted({int(k) for k in values}))


def row_count(queries: Any, name: str) -> int:
  """Number of rows of `queries` (an array, list, Series, tensor or dict of them)."""
  if isinstance(queries, Mapping):
    if not queries:
      raise ValueError(f"`{name}` given as a dict should hold at least one array. Received: {{}}.")
    lengths = {key: len(value) for key, value in queries.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"`{name}` arrays should all have the same length. Received: "
                       f"lengths {lengths}.")
    return next(iter(lengths.values()))
  try:
    return len(queries)
  except TypeError:
    raise ValueError(f"`{name}` should be an array, list, Series, tensor or dict of arrays. "
                     f"Received: {type(queries).__name__}.") from None


def take_rows(queries: Any, start: int, stop: int) -> Any:
  """Rows [start, stop) of `queries` by position (each value of a dict)."""
  if isinstance(queries, Mapping):
    return {key: take_rows(value, start, stop) for key, value in queries.items()}
  if hasattr(queries, "iloc"):
    return queries.iloc[start:stop]  # Positional, whatever the pandas index.
  return queries[start:stop]


def check_targets(targets: Any, n_rows: int, n_items: int) -> np.ndarray:
  """[n_rows] int64 target indices, each in [0, n_items)."""
  targets = np.asarray(targets)
  if targets.size == 0:
    targets = targets.astype(np.int64).reshape(0)
  if targets.ndim != 1 or targets.dtype.kind not in "iu":
    raise ValueError("`targets` should be a 1-D array of int catalogue indices. Received: "
                     f"dtype {targets.dtype}, shape {targets.shape}.")
  if len(targets) != n_rows:
    raise ValueError(f"`targets` should have one entry per query, N = {n_rows}. Received: "
                     f"{len(targets)} targets.")
  if targets.size and (targets.min() < 0 or targets.max() >= n_items):
    row = int(np.flatnonzero((targets < 0) | (targets >= n_items))[0])
    raise ValueError(f"`targets` should be in [0, n_items) = [0, {n_items}). Received: "
                     f"`targets[{row}]` = {targets[row]}.")
  return targets.astype(np.int64)


def check_slices(item_slices: Optional[Mapping[str, Any]], n_items: int) -> Dict[str, np.ndarray]:
  """Slice name -> bool mask [n_items] (empty when `item_slices` is None)."""
  if item_slices is None:
    return {}
  if not isinstance(item_slices, Mapping):
    raise ValueError("`item_slices` should be a dict of slice name -> bool mask [n_items]. "
                     f"Received: {type(item_slices).__name__}.")
  out = {}
  for name, mask in item_slices.items():
    if not isinstance(name, str) or not name or "/" in name or name == ALL:
      raise ValueError("`item_slices` names should be non-empty strings without `/`, other "
                       f"than 'all' (always reported). Received: {name!r}.")
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_items,):
      raise ValueError(f"`item_slices[{name!r}]` should be a bool mask of shape [n_items] = "
                       f"[{n_items}]. Received: dtype {mask.dtype}, shape {mask.shape}.")
    out[name] = mask
  return out


def check_popularity(item_popularity: Any, n_items: int) -> Optional[np.ndarray]:
  """[n_items] float64 finite popularity, or None."""
  if item_popularity is None:
    return None
  pop = np.asarray(item_popularity)
  if pop.shape != (n_items,) or pop.dtype.kind not in "fiu":
    raise ValueError(f"`item_popularity` should be numbers of shape [n_items] = [{n_items}]. "
                     f"Received: dtype {pop.dtype}, shape {pop.shape}.")
  pop = pop.astype(np.float64)
  if not np.all(np.isfinite(pop)):
    raise ValueError("`item_popularity` should be finite. Received: a non-finite value at "
                     f"item {int(np.flatnonzero(~np.isfinite(pop))[0])}.")
  return pop


def check_embeddings(query_embeddings: Any,
                      item_embeddings: Any) -> Tuple[np.ndarray, np.ndarray]:
  """(queries [N, d], items [M, d]) as contiguous finite float32 arrays."""
  out = []
  for name, value in (("query_embeddings", query_embeddings),
                      ("item_embeddings", item_embeddings)):
    array = np.asarray(value)
    if array.ndim != 2 or array.dtype.kind not in "fiu":
      raise ValueError(f"`{name}` should be a 2-D array of numbers. Received: dtype "
                       f"{array.dtype}, shape {array.shape}.")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
      row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
      raise ValueError(f"`{name}` should be finite. Received: a non-finite value in row {row}.")
    out.append(array)
  queries, items = out
  if queries.shape[1] != items.shape[1]:
    raise ValueError("`query_embeddings` and `item_embeddings` should have the same width d. "
                     f"Received: {queries.shape[1]} and {items.shape[1]}.")
  if len(items) == 0:
    raise ValueError("`item_embeddings` should hold at least one item. Received: shape "
                     f"{items.shape}.")
  return queries, items
