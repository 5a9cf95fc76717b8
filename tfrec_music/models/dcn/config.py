"""DCN hyperparameters (`DCNConfig`), presets, CLI flags and tuning search space."""

import argparse
import dataclasses
from typing import Any, Dict, Tuple

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import int_list

# Metric keys of the table the CLI prints.
RATING_TABLE_KEYS = ("test/all/rmse", "test/all/mse", "test/all/mae", "test/cold/rmse",
                     "test/warm/rmse")


@dataclasses.dataclass(frozen=True)
class DCNConfig:
  """DCN hyperparameters.

  Attributes:
    labels: `explicit` (ratings, MSE) or `implicit` (interactions plus sampled
      negatives, sigmoid cross-entropy).
    embedding_dim: Embedding size of every categorical feature.
    cross_layers: Number of cross layers (0 = deep network only).
    projection_dim: Low-rank size of the cross layers' W = U V (0 = full rank).
    deep_layers: Hidden layer sizes of the deep network (empty = cross only).
    structure: `stacked` (cross -> deep) or `parallel` (cross || deep).
    negatives: Sampled negatives per positive (implicit labels).
    learning_rate: Adam learning rate.
    batch_size: Training batch size.
    epochs: Maximum epochs (early stopping on the validation loss).
    early_stopping_patience: Epochs without validation gain before stopping.
    l2: L2 weight on embeddings (per batch, on the rows used).
    dropout: Dropout rate of the deep layers.
    baseline_mf_dim: Factor size of the biased-MF baseline.
    seed: Initialization, shuffling and negative-sampling seed.
  """

  labels: str = "explicit"
  embedding_dim: int = 16
  cross_layers: int = 2
  projection_dim: int = 0
  deep_layers: Tuple[int, ...] = (128, 64)
  structure: str = "stacked"
  negatives: int = 4
  learning_rate: float = 0.002
  batch_size: int = 1024
  epochs: int = 12
  early_stopping_patience: int = 2
  l2: float = 1e-5
  dropout: float = 0.0
  baseline_mf_dim: int = 16
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"labels": ("explicit", "implicit"),
                         "structure": ("stacked", "parallel")})
    check_ints(self, ("embedding_dim", "batch_size", "epochs", "negatives", "baseline_mf_dim"))
    check_ints(self, ("cross_layers", "projection_dim"), minimum=0)
    check_numbers(self, ("learning_rate",), positive=True)
    check_numbers(self, ("l2",))
    layers = tuple(int(n) for n in self.deep_layers)
    if any(n <= 0 for n in layers):
      raise ValueError(f"`deep_layers` should be positive sizes. Received: {self.deep_layers!r}.")
    if not layers and self.cross_layers == 0:
      raise ValueError("DCN needs cross layers or deep layers: `cross_layers` = 0 and "
                       "`deep_layers` is empty.")
    if not self.learning_rate > 0:
      raise ValueError(f"`learning_rate` should be positive. Received: {self.learning_rate!r}.")
    object.__setattr__(self, "deep_layers", layers)


def presets() -> Dict[str, Dict[str, Any]]:
  """`tiny` trains in seconds for tests; `default` is the measured setting."""
  return {"tiny": {"epochs": 4, "batch_size": 256, "embedding_dim": 8,
                   "deep_layers": (32,), "baseline_mf_dim": 4},
          "default": {}}


def search_space(hp) -> Dict[str, Any]:
  """Cross layers, low-rank projection, deep layer sizes, embedding size, learning rate.

  Args:
    hp: A `keras_tuner.HyperParameters`.

  Returns:
    `DCNConfig` overrides from `hp`'s current values.
  """
  depth = hp.Int("deep_depth", 0, 2)
  width = hp.Choice("deep_width", [32, 64, 128])
  # Deep layers halve in width: (width,), (width, width // 2); none = cross only.
  deep = tuple(max(8, width // (2 ** k)) for k in range(depth))
  return {"cross_layers": hp.Int("cross_layers", 1, 3),
          "projection_dim": hp.Choice("projection_dim", [0, 8, 32]),
          "deep_layers": deep,
          "embedding_dim": hp.Choice("embedding_dim", [8, 16, 32]),
          "learning_rate": hp.Float("learning_rate", 5e-4, 1e-2, sampling="log")}


def add_arguments(group: argparse._ArgumentGroup) -> None:
  """DCN flags; each `dest` is a `DCNConfig` field."""
  group.add_argument("--labels", choices=("explicit", "implicit"), default=None,
                     help="explicit: ratings with MSE; implicit: plays plus sampled "
                          "negatives with sigmoid cross-entropy.")
  group.add_argument("--cross-layers", dest="cross_layers", type=int, default=None,
                     help="Number of cross layers.")
  group.add_argument("--projection-dim", dest="projection_dim", type=int, default=None,
                     help="Low-rank size of the cross layers (0: full rank).")
  group.add_argument("--deep-layers", dest="deep_layers", type=int_list, default=None,
                     help="Deep network sizes, comma-separated, e.g. 128,64 ('' for none).")
  group.add_argument("--structure", choices=("stacked", "parallel"), default=None,
                     help="Cross network then deep network, or both side by side.")
  group.add_argument("--negatives", type=int, default=None,
                     help="Sampled negatives per positive (implicit labels).")

