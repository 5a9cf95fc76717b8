"""Field checks shared by the model families' config dataclasses.

Every family validates its hyperparameters in its config's `__post_init__`
with these, so a bad flag (`--set epochs=0`, `--set l2=-1`,
`--set batch_size=true`) fails the same way in every model: the field, what
it should be, and what was received.
"""

import argparse
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(float(value)))


def check_ints(config: Any, names: Iterable[str], *, minimum: int = 1) -> None:
  """Checks that each field is an integer (not a bool) of at least `minimum`.

  Args:
    config: The dataclass instance.
    names: Field names.
    minimum: 1 (positive, the default) or 0 (non-negative).

  Raises:
    ValueError: naming the first bad field and its value.
  """
  want = {1: "a positive integer", 0: "a non-negative integer"}.get(
      minimum, f"an integer >= {minimum}")
  for name in names:
    value = getattr(config, name)
    if not _is_int(value) or value < minimum:
      raise ValueError(f"`{name}` should be {want}. Received: `{name}` = {value!r}.")


def check_numbers(config: Any, names: Iterable[str], *, positive: bool = False) -> None:
  """Checks that each field is a finite real number, >= 0 (or > 0 with `positive`).

  Raises:
    ValueError: naming the first bad field and its value.
  """
  want = "a positive number" if positive else "a non-negative number"
  for name in names:
    value = getattr(config, name)
    if not _is_real(value) or value < 0 or (positive and value == 0):
      raise ValueError(f"`{name}` should be {want}. Received: `{name}` = {value!r}.")


def check_shares(config: Any, names: Iterable[str], *, zero: bool = True) -> None:
  """Checks that each field is a share: a real number in [0, 1] (or (0, 1] without `zero`).

  Raises:
    ValueError: naming the first bad field, the interval and its value.
  """
  interval = "[0, 1]" if zero else "(0, 1]"
  for name in names:
    value = getattr(config, name)
    if not _is_real(value) or value < 0 or value > 1 or (not zero and value == 0):
      raise ValueError(f"`{name}` should be in {interval}. Received: `{name}` = {value!r}.")


def check_choices(config: Any, choices: Mapping[str, Sequence[Any]]) -> None:
  """Checks that each field holds one of its allowed values.

  Args:
    config: The dataclass instance.
    choices: Field name -> allowed values. Two values read "'a' or 'b'" in
      the error, more read "one of ('a', 'b', 'c')".

  Raises:
    ValueError: naming the first bad field, the allowed values and its value.
  """
  for name, allowed in choices.items():
    value = getattr(config, name)
    if value not in allowed:
      allowed = tuple(allowed)
      want = (f"{allowed[0]!r} or {allowed[1]!r}" if len(allowed) == 2
              else f"one of {allowed!r}")
      raise ValueError(f"`{name}` should be {want}. Received: `{name}` = {value!r}.")


def number_list(cast: Callable[[str], Any], example: str = "16,32",
                container: Callable = tuple) -> Callable[[str], Any]:
  """An argparse `type=` for comma-separated numbers (`--rank 16,32`).

  Args:
    cast: Converts one part (`int`, `float`).
    example: Shown in the error message.
    container: Builds the result from the parts (`tuple`, `list`).

  Returns:
    The parser; it raises `argparse.ArgumentTypeError` when a part is not a number.
  """
  def parse(text: str):
    try:
      return container(cast(t) for t in str(text).split(",") if t.strip())
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"expected comma-separated numbers, e.g. {example}. Received: {text!r}.") from None
  return parse


# `--layer-sizes 128,64`, `--deep-layers 128,64`: a list of integers.
int_list = number_list(int, "128,64", list)
