"""Two-tower hyperparameters, presets, CLI flags and search space."""

import argparse
import dataclasses
from typing import Any, Dict, Tuple

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares
from tfrec_music.models.config_checks import int_list

USER_FEATURES = ("country",)


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  """Two-tower hyperparameters.

  Attributes:
    features: `"all"` (content features on) or `"ids"` (track id only).
    embedding_dim: Size of the shared user/track space.
    layer_sizes: Hidden layers of each tower's MLP.
    feature_dim: Embedding size of each content feature.
    history_length: Recent tracks pooled in the user tower; 0 turns history
      off: the user tower is the user id (and user features) alone, the
      training rows carry no history and the export takes none.
    learning_rate: Optimizer learning rate (the starting one with `lr_decay`).
    lr_decay: `"none"`: the learning rate stays constant; `"cosine"`: it
      follows a half cosine from `learning_rate` down to zero over `epochs`
      epochs of steps, so late epochs move the weights less and the epoch
      that early stopping keeps is less a lucky jitter of the last updates.
    average_epochs: Validate, keep and export a moving average of the
      weights instead of the last step's weights (0: the raw weights). Its
      span grows with training, about the last ninth of the steps so far,
      up to this many epochs of steps (reached after about 9 x that many
      epochs; see `tfrec_music.optimizers`). The last steps' noise moves
      validation HR@10 by about 0.006 from one epoch to the next on 1.9k
      users; the average moves less and scores higher.
    optimizer: `adam`, `adagrad` or `sgd`.
    batch_size: Training batch size (= in-batch negatives + 1).
    epochs: Maximum epochs (early stopping may stop sooner).
    temperature: Softmax temperature over the scores.
    normalize: L2-normalize both towers' outputs (cosine scores); off, the
      vector norms can carry item popularity.
    logq_correction: Subtract log sampling probability from logits.
    logq_exponent: How much of the correction: logits lose `logq_exponent`
      x log q (1 = the full correction, the score then carries no
      popularity; below 1 some of the popularity prior stays in the score,
      above 1 popular tracks are pushed down further).
    remove_accidental_hits: Mask in-batch negatives equal to the positive.
    mixed_negatives: Extra uniformly sampled negatives per batch.
    cross_replica_negatives: With several replicas, score each query against
      the candidates of every replica's batch (all-gathered) instead of its
      own replica's only: more negatives per query, as on one device with the
      global batch, at the cost of an all-gather per step.
    history_pooling: `"mean"` pools the history with a plain mean;
      `"recency"` learns one weight per recency rank (the most recent track
      first), so recent tracks can count more when tastes drift.
    history_content: Also pool the history's artists, albums and genres
      through the track tower's embeddings (only with content features).
    user_id_dropout: Share of training rows whose user id is replaced by OOV,
      so the tower learns to serve users from history alone.
    history_dropout: Share of a training row's history tracks hidden (set to
      padding) at each step: a denoising regularizer, so the user tower does
      not lean on any one track of the profile.
    item_id_dropout: Share of training candidates whose track id is replaced
      by OOV, so the track tower learns to place tracks from content alone
      (cold start). Only active when content features are on.
    item_id_min_count: With content features, tracks with fewer training
      plays than this are placed by content alone: their id maps to OOV in
      the track tower (training and serving alike). 0 keeps every id.
    history_window: Training rows' history: `"causal"` (the tracks played
      before the row), `"others"` (the user's other training tracks, as
      served), `"auto"` (causal when the data has timestamps, others when it
      has no order).
    play_weight: Each training row's weight in the loss: `"log1p"`,
      log(1 + plays) of its (user, track) pair (the `weight` column: play
      counts, summed over the pair's training listens), normalized to mean 1
      over the training rows, so a track played 100 times counts about 4x
      one played twice rather than 50x; `"none"`:
      every row alike. Data without a `weight` column, and the streamed
      trainer, train unweighted.
    early_stopping_patience: Epochs without validation HR@10 gain before stopping.
    validation_users: Validation users scored per epoch (0 = all).
    top_k: Results per request in the export.
    seed: Initialization and shuffling seed.
  """

  features: str = "all"
  embedding_dim: int = 64
  layer_sizes: Tuple[int, ...] = (128,)
  feature_dim: int = 32
  history_length: int = 50
  learning_rate: float = 0.003
  lr_decay: str = "none"
  average_epochs: float = 1.0
  optimizer: str = "adam"
  batch_size: int = 1024
  epochs: int = 20
  temperature: float = 0.1
  normalize: bool = True
  logq_correction: bool = True
  logq_exponent: float = 1.0
  remove_accidental_hits: bool = True
  mixed_negatives: int = 0
  cross_replica_negatives: bool = False
  history_pooling: str = "mean"
  history_content: bool = False
  user_id_dropout: float = 0.5
  history_dropout: float = 0.3
  item_id_dropout: float = 0.3
  item_id_min_count: int = 20
  history_window: str = "auto"
  play_weight: str = "log1p"
  early_stopping_patience: int = 4
  validation_users: int = 2000
  top_k: int = 100
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"features": ("all", "ids"), "optimizer": ("adam", "adagrad", "sgd"),
                         "history_pooling": ("mean", "recency"),
                         "history_window": ("auto", "causal", "others"),
                         "play_weight": ("log1p", "none"), "lr_decay": ("none", "cosine")})
    check_ints(self, ("embedding_dim", "batch_size", "epochs", "top_k"))
    check_ints(self, ("history_length", "mixed_negatives", "item_id_min_count",
                      "early_stopping_patience", "validation_users"), minimum=0)
    if self.history_length == 0:
      for name, on in (("history_pooling", self.history_pooling != "mean"),
                       ("history_content", self.history_content)):
        if on:
          raise ValueError(f"`{name}` = {getattr(self, name)!r} needs a history, but "
                           "`history_length` = 0 turns it off. Set `history_length` >= 1 "
                           f"or leave `{name}` at its default.")
      if self.user_id_dropout > 0:
        raise ValueError(f"`user_id_dropout` = {self.user_id_dropout} hides the user id from "
                         "that share of training rows, but with `history_length` = 0 the "
                         "user id is the user tower's only taste signal. Set "
                         "`user_id_dropout=0` with `history_length=0`.")
    check_numbers(self, ("temperature", "learning_rate"), positive=True)
    check_numbers(self, ("logq_exponent", "average_epochs"))
    check_shares(self, ("user_id_dropout", "item_id_dropout", "history_dropout"))
    object.__setattr__(self, "layer_sizes", tuple(int(n) for n in self.layer_sizes))


def presets() -> Dict[str, Dict[str, Any]]:
  """`tiny` trains in seconds for tests; `default` is the measured setting."""
  return {"tiny": {"epochs": 3, "batch_size": 256, "embedding_dim": 32,
                   "layer_sizes": (64,), "history_length": 10, "top_k": 20,
                   "validation_users": 0},
          "default": {}}



def add_arguments(group: argparse._ArgumentGroup) -> None:
  """Two-tower flags; each `dest` is a `TwoTowerConfig` field (the common flags cover the rest)."""
  group.add_argument("--features", choices=("ids", "all"), default=None,
                     help="Content features off (ids) or on (all).")
  group.add_argument("--layer-sizes", type=int_list, default=None,
                     help="Hidden layer sizes, comma-separated, e.g. 256,128.")
  group.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default=None,
                     help="Optimizer.")
  group.add_argument("--temperature", type=float, default=None, help="Softmax temperature.")
  group.add_argument("--mixed-negatives", type=int, default=None,
                     help="Extra uniform negatives per batch.")
  group.add_argument("--cross-replica-negatives", action="store_const", const=True,
                     default=None,
                     help="With several replicas: in-batch negatives from every replica's "
                          "batch (all-gathered), not only the replica's own.")


def search_space(hp, d: TwoTowerConfig) -> Dict[str, Any]:
  """The keras-tuner search space, each default taken from `d` (the `default` preset).

  Args:
    hp: `keras_tuner.HyperParameters`.
    d: The `default` preset's config.

  Returns:
    Hyperparameter name -> value drawn from `hp`.
  """
  return {"embedding_dim": hp.Choice("embedding_dim", [32, 64, 128], default=d.embedding_dim),
          "layer_sizes": (hp.Choice("layer_size", [64, 128, 256],
                                    default=d.layer_sizes[0]),),
          "learning_rate": hp.Float("learning_rate", 1e-3, 3e-2, sampling="log",
                                    default=d.learning_rate),
          "optimizer": hp.Choice("optimizer", ["adam", "adagrad"], default=d.optimizer),
          "temperature": hp.Float("temperature", 0.02, 0.2, sampling="log",
                                  default=d.temperature),
          "mixed_negatives": hp.Choice("mixed_negatives", [0, 256, 1024],
                                       default=d.mixed_negatives),
          "batch_size": hp.Choice("batch_size", [512, 1024, 2048], default=d.batch_size),
          "history_length": hp.Choice("history_length", [10, 20, 50, 100],
                                      default=d.history_length),
          "history_pooling": hp.Choice("history_pooling", ["mean", "recency"],
                                       default=d.history_pooling),
          "item_id_min_count": hp.Choice("item_id_min_count", [0, 5, 20, 50],
                                         default=d.item_id_min_count),
          "user_id_dropout": hp.Float("user_id_dropout", 0.0, 0.7, default=d.user_id_dropout),
          "history_dropout": hp.Float("history_dropout", 0.0, 0.6, default=d.history_dropout),
          "item_id_dropout": hp.Float("item_id_dropout", 0.0, 0.6, default=d.item_id_dropout)}
