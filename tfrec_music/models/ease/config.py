"""EASE hyperparameters, presets, flags and search space."""

import argparse
import dataclasses
import math
from typing import Any, Dict, Tuple

import numpy as np

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import number_list
from tfrec_music.models.item_item import SEARCHES
from tfrec_music.models.item_item import WEIGHTINGS

# Sized so a 17,632-item catalogue (HetRec Last.fm-2k's artists: 1.24 GB per
# float32 items x items matrix) fits a 24 GiB machine with room to spare.
DEFAULT_MAX_ITEMS = 20_000


@dataclasses.dataclass(frozen=True)
class EASEConfig:
  """EASE settings.

  Attributes:
    lambdas: Candidate L2 weights lambda; the one with the best validation
      HR@10 is kept.
    search: How the candidates are compared: `local` (from the middle value
      towards the better neighbour while validation HR@10 improves: each
      value costs a users x users inverse, seconds at 5,000 users) or `full`
      (every value).
    weighting: x_ui of a user's track: `binary` (1), `log1p` (log(1 + play
      count)) or `raw` (play count).
    max_items: Largest catalogue accepted (the model is a dense items x items
      matrix of 4 n^2 bytes).
    top_k: Results per request in the export.
  """

  lambdas: Tuple[float, ...] = (10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
  search: str = "local"
  weighting: str = "binary"
  max_items: int = DEFAULT_MAX_ITEMS
  top_k: int = 100

  def __post_init__(self):
    values = self.lambdas if isinstance(self.lambdas, (list, tuple)) else (self.lambdas,)
    if not values or any(isinstance(v, (bool, np.bool_))
                         or not isinstance(v, (int, float, np.integer, np.floating))
                         or not math.isfinite(v) or v <= 0 for v in values):
      raise ValueError(f"`lambdas` should be positive numbers. Received: `lambdas` = "
                       f"{self.lambdas!r}.")
    object.__setattr__(self, "lambdas", tuple(float(v) for v in values))
    check_choices(self, {"search": SEARCHES, "weighting": WEIGHTINGS})
    check_ints(self, ("max_items", "top_k"))


PRESETS: Dict[str, Dict[str, Any]] = {"tiny": {"lambdas": (10.0, 100.0, 1000.0)},
                                      "default": {}}


def add_arguments(group: argparse._ArgumentGroup) -> None:
  """EASE flags; each `dest` is an `EASEConfig` field."""
  group.add_argument("--lambdas", type=number_list(float, "50,100"), default=None,
                     help="L2 weight(s) lambda, comma-separated; several are compared on "
                          "validation HR@10.")
  group.add_argument("--search", choices=SEARCHES, default=None,
                     help="local: walk the lambda grid from its middle while validation HR@10 "
                          "improves; full: try every lambda.")
  group.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                     help="User x item values: binary, log1p or raw play counts.")
  group.add_argument("--max-items", dest="max_items", type=int, default=None,
                     help="Largest catalogue accepted (a dense items x items matrix).")


def search_space(hp) -> Dict[str, Any]:
  """Lambda, one value per trial."""
  return {"lambdas": (hp.Float("lambda", 10.0, 2000.0, sampling="log", default=100.0),)}
