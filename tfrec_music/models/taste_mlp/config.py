"""taste_mlp hyperparameters, presets, search space and flags."""

import argparse
import dataclasses
from typing import Any, Dict, Tuple

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.track_vectors import DEFAULT_TEXT_COLUMNS

NEGATIVE_STRATEGIES = ("least_similar", "random")
TASTE_TABLE_KEYS = ("test/all/auc", "test/all/log_loss", "test/all/hr@10", "test/all/ndcg@10")


@dataclasses.dataclass(frozen=True)
class TasteMLPConfig:
  """taste_mlp hyperparameters.

  Attributes:
    hidden_size: Units of the hidden layer.
    weight_decay: L2 penalty on both layers' kernels.
    negatives: `random` (default) or `least_similar` (tracks of the user's
      least similar user).
    negatives_per_positive: Negatives drawn per training positive (fresh each epoch).
    learning_rate: Adam learning rate.
    batch_size: Training batch size.
    epochs: Most epochs (early stopping on validation AUC may stop sooner).
    early_stopping_patience: Epochs without validation AUC gain before stopping.
    word_vectors: Text vectors: `colisten`, `cooccurrence` or a GloVe file path.
    word_dim: Size of learned word vectors.
    text_columns: Item text columns.
    eval_negatives: Random negatives per held-out positive for AUC.
    eval_users: Users in the full-ranking HR@10 evaluation (0 = all).
    seed: Seed of initialization, negatives and evaluation draws.
  """

  hidden_size: int = 64
  weight_decay: float = 1e-5
  negatives: str = "random"
  negatives_per_positive: int = 4
  learning_rate: float = 0.003
  batch_size: int = 1024
  epochs: int = 10
  early_stopping_patience: int = 2
  word_vectors: str = "colisten"
  word_dim: int = 32
  text_columns: Tuple[str, ...] = DEFAULT_TEXT_COLUMNS
  eval_negatives: int = 4
  eval_users: int = 1000
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"negatives": NEGATIVE_STRATEGIES})
    check_ints(self, ("hidden_size", "negatives_per_positive", "batch_size", "epochs", "word_dim",
                      "eval_negatives"))
    check_numbers(self, ("weight_decay",))
    check_numbers(self, ("learning_rate",), positive=True)
    object.__setattr__(self, "text_columns", tuple(self.text_columns))


def presets() -> Dict[str, Dict[str, Any]]:
  """`tiny` trains in seconds for tests; `default` is the measured setting."""
  return {"tiny": {"hidden_size": 16, "epochs": 3, "batch_size": 256, "word_dim": 16,
                   "eval_users": 0},
          "default": {}}


def search_space(hp) -> Dict[str, Any]:
  """Hidden size and weight decay (the objective is validation AUC)."""
  return {"hidden_size": hp.Choice("hidden_size", [32, 64, 128]),
          "weight_decay": hp.Float("weight_decay", 1e-7, 1e-3, sampling="log")}


def add_arguments(group: argparse._ArgumentGroup) -> None:
  """taste_mlp flags; each `dest` is a `TasteMLPConfig` field."""
  group.add_argument("--hidden-size", dest="hidden_size", type=int, default=None,
                     help="Hidden units of the 2-layer MLP.")
  group.add_argument("--weight-decay", dest="weight_decay", type=float, default=None,
                     help="L2 weight decay of the MLP kernels.")
  group.add_argument("--negatives", choices=NEGATIVE_STRATEGIES, default=None,
                     help="Negatives from the least similar user's tracks, or random tracks.")
  group.add_argument("--word-vectors", dest="word_vectors", default=None,
                     help="Text vectors: colisten, cooccurrence or a GloVe-format file path.")
