"""ItemKNN hyperparameters, presets, flags and search space."""

import argparse
import dataclasses
from typing import Any, Dict, Tuple

import numpy as np

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import number_list
from tfrec_music.models.item_item import WEIGHTINGS


@dataclasses.dataclass(frozen=True)
class ItemKNNConfig:
  """ItemKNN settings.

  Attributes:
    neighbours: Candidate neighbour counts K per item; the one with the best
      validation HR@10 is kept (the first on ties).
    shrink: Added to the cosine denominator, |a||b| + shrink.
    weighting: x_ui of a user's track: `binary` (1), `log1p` (log(1 + play
      count)) or `raw` (play count).
    top_k: Results per request in the export.
  """

  neighbours: Tuple[int, ...] = (50, 100, 200, 400)
  shrink: float = 0.0
  weighting: str = "binary"
  top_k: int = 100

  def __post_init__(self):
    values = self.neighbours if isinstance(self.neighbours, (list, tuple)) else (self.neighbours,)
    object.__setattr__(self, "neighbours", tuple(values))
    if not self.neighbours or any(isinstance(v, (bool, np.bool_))
                                  or not isinstance(v, (int, np.integer)) or v <= 0
                                  for v in self.neighbours):
      raise ValueError("`neighbours` should be positive integers. "
                       f"Received: `neighbours` = {self.neighbours!r}.")
    check_choices(self, {"weighting": WEIGHTINGS})
    check_numbers(self, ("shrink",))
    check_ints(self, ("top_k",))


PRESETS: Dict[str, Dict[str, Any]] = {"tiny": {"neighbours": (20, 50)}, "default": {}}


def add_arguments(group: argparse._ArgumentGroup) -> None:
  """ItemKNN flags; each `dest` is an `ItemKNNConfig` field."""
  group.add_argument("--neighbours", type=number_list(int, "50,100"), default=None,
                     help="Neighbours per item, comma-separated; several are compared on "
                          "validation HR@10.")
  group.add_argument("--shrink", type=float, default=None,
                     help="Cosine shrinkage: dot / (|a||b| + shrink).")
  group.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                     help="User x item values: binary, log1p or raw play counts.")


def search_space(hp) -> Dict[str, Any]:
  """Neighbours and shrinkage, one value per trial."""
  return {"neighbours": (hp.Choice("neighbours", [50, 100, 200, 400], default=200),),
          "shrink": hp.Choice("shrink", [0.0, 10.0, 50.0], default=0.0)}
