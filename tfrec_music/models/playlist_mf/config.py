"""Playlist MF hyperparameters: the config dataclass, presets, flags and search space."""

import argparse
import dataclasses
from typing import Any, Dict, Optional, Tuple

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares

SAMPLING = ("uniform", "popularity")
LOSSES = ("softmax", "bce")
ITEM_FEATURES = ("artist", "album", "title", "tags", "genre", "mood")


@dataclasses.dataclass(frozen=True)
class PlaylistMFConfig:
  """Playlist MF hyperparameters.

  Attributes:
    embedding_dim: Size of playlist and track vectors.
    loss: `"softmax"`: the playlist's tracks are choices from the catalogue,
      P(track | playlist) = softmax over tracks of dot(p, t) + b_t, over the
      whole catalogue up to `softmax_negatives` tracks and over that many
      sampled tracks (with the logQ correction) beyond; `"bce"`: sigmoid of
      dot(p, t) + b_p + b_t against `negatives` sampled tracks per positive.
    negatives: BCE only: sampled negative tracks per positive (k).
    softmax_negatives: Softmax only: a catalogue up to this size is the
      softmax's denominator whole; a larger one is estimated from this many
      tracks per batch drawn from the sampling distribution.
    negative_sampling: `"uniform"` or `"popularity"` ((training count + 1) **
      `popularity_exponent`) draws of negatives.
    popularity_exponent: Flattens the popularity distribution of negatives.
    l2: Weight of the per-example penalty on the playlist's and the track's
      vector parts (biases are free).
    item_features: Item content added to each track's own vector and bias:
      `artist`, `album`, `genre` and `mood` (one shared vector each), `title`
      (the mean of its words' vectors) and `tags` (the mean of its tags'
      vectors), so tracks seen in few playlists, or none, borrow from their
      content; columns the items lack are skipped. Genre and tags speak the
      language of playlist names ("chill jazz"), so they tie a name's tokens
      to tracks.
    own_dropout: Share of the catalogue whose own vectors and biases are
      dropped in each training batch (the same tracks in the positives and
      the softmax's denominator), so that artist, album and title learn to
      place a track alone, as they must for a track never trained on.
    name_features: The playlist name's tokens as query features: a playlist
      vector is its own plus the mean of its name tokens' vectors, trained
      jointly, so a new playlist starts from its name.
    name_prior: Fold the seeds in around the name's vector (the L2 pull's
      centre) instead of around zero.
    fold_in_l2: L2 weight of the fold-in objective (None: `l2`).
    l2_per_seed: The fold-in's L2 weight is `fold_in_l2` / (number of seeds):
      each seed is evidence against the prior, so more seeds pull a playlist
      further from its name. False: `fold_in_l2` whatever the seed count.
    cooccurrence_weights: Weight of the seeds' co-occurrence term added to the
      logits: the mean over the seeds of each track's cosine similarity with
      the seed in the training playlists (see `playlist_mf.cooccurrence`).
      Several values: the one with the best mean validation NDCG over the
      1-, 5- and 10-seed slices is kept after training (0 turns it off).
    cooccurrence_neighbours: Most similar tracks kept per track for that term;
      the export stores them (n_items x this many slots, 8 bytes each: 16 MB
      for 10k tracks; lower it, or set the weights to 0, for catalogues of
      millions).
    learning_rate: Adam learning rate.
    average_epochs: Validate, keep and export a moving average of the
      weights, spanning about the last ninth of the steps so far up to this
      many epochs of steps (0: the last step's weights; see
      `tfrec_music.optimizers`).
    epochs: Most training epochs (early stopping may stop sooner).
    batch_size: Positives per batch.
    init_stddev: Standard deviation of the initial vectors.
    early_stopping_patience: Epochs without validation NDCG gain before stopping.
    fold_in_steps: Newton steps of the fold-in.
    fold_in_negatives: The fold-in objective runs over the whole catalogue up
      to this size, over a fixed weighted sample of this size beyond.
    name_min_count: Training playlists a name token needs to be kept.
    title_min_count: Catalogue tracks a title word or a tag needs to be kept.
    max_seeds: Seeds the ScaNN export can exclude (it fetches `top_k +
      max_seeds` results); the exact export excludes every seed.
    top_k: Results per request in the export (clamped to the catalogue).
    seed: Initialization, sampling and shuffling seed.
  """

  embedding_dim: int = 32
  loss: str = "softmax"
  negatives: int = 4
  softmax_negatives: int = 16384
  negative_sampling: str = "popularity"
  popularity_exponent: float = 0.75
  l2: float = 3e-3
  item_features: Tuple[str, ...] = ("artist", "album", "title", "tags", "genre")
  own_dropout: float = 0.0
  name_features: bool = True
  name_prior: bool = True
  fold_in_l2: Optional[float] = 2.0
  l2_per_seed: bool = False
  cooccurrence_weights: Tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
  cooccurrence_neighbours: int = 200
  learning_rate: float = 0.01
  average_epochs: float = 0.0
  epochs: int = 40
  batch_size: int = 1024
  init_stddev: float = 0.1
  early_stopping_patience: int = 4
  fold_in_steps: int = 12
  fold_in_negatives: int = 16384
  name_min_count: int = 2
  title_min_count: int = 2
  max_seeds: int = 250
  top_k: int = 100
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"negative_sampling": SAMPLING, "loss": LOSSES})
    check_ints(self, ("embedding_dim", "negatives", "softmax_negatives", "epochs", "batch_size",
                      "fold_in_steps", "fold_in_negatives", "cooccurrence_neighbours",
                      "name_min_count", "title_min_count", "top_k", "early_stopping_patience"))
    check_numbers(self, ("l2", "popularity_exponent", "init_stddev", "average_epochs"))
    check_numbers(self, ("learning_rate",), positive=True)
    weights = self.cooccurrence_weights
    weights = tuple(weights) if isinstance(weights, (list, tuple)) else (weights,)
    if not weights or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                              for w in weights):
      raise ValueError("`cooccurrence_weights` should be one or more numbers >= 0, e.g. "
                       f"(0, 1, 2, 4). Received: `cooccurrence_weights` = {self.cooccurrence_weights!r}.")
    object.__setattr__(self, "cooccurrence_weights", tuple(float(w) for w in weights))
    check_shares(self, ("own_dropout",))
    if isinstance(self.item_features, str) or not all(
        f in ITEM_FEATURES for f in self.item_features):
      raise ValueError(f"`item_features` should be a list drawn from {ITEM_FEATURES}. "
                       f"Received: `item_features` = {self.item_features!r}.")
    object.__setattr__(self, "item_features", tuple(self.item_features))
    for name in ("name_features", "name_prior", "l2_per_seed"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"`{name}` should be True or False. "
                         f"Received: `{name}` = {getattr(self, name)!r}.")
    if self.fold_in_l2 is not None and (not isinstance(self.fold_in_l2, (int, float))
                                        or isinstance(self.fold_in_l2, bool)
                                        or self.fold_in_l2 < 0):
      raise ValueError("`fold_in_l2` should be a non-negative number or None. "
                       f"Received: `fold_in_l2` = {self.fold_in_l2!r}.")
    if self.max_seeds < 0:
      raise ValueError(f"`max_seeds` should be >= 0. Received: `max_seeds` = {self.max_seeds!r}.")


def presets() -> Dict[str, Dict[str, Any]]:
  """`tiny` trains in seconds for tests; `default` is the measured setting."""
  return {"tiny": {"embedding_dim": 16, "epochs": 8, "batch_size": 256, "top_k": 20,
                   "fold_in_negatives": 1024},
          "default": {}}


def add_arguments(group: argparse._ArgumentGroup) -> None:
  """`--loss`, `--negatives`, `--negative-sampling`, `--l2` (the common flags cover the rest)."""
  group.add_argument("--loss", choices=LOSSES, default=None,
                     help="playlist_mf: softmax over the catalogue or sigmoid against "
                          "sampled negatives.")
  group.add_argument("--negatives", type=int, default=None,
                     help="playlist_mf: sampled negative tracks per positive (bce).")
  group.add_argument("--negative-sampling", choices=SAMPLING, default=None,
                     help="playlist_mf: negatives drawn uniformly or by popularity.")
  group.add_argument("--l2", type=float, default=None,
                     help="playlist_mf: L2 weight on playlist and track vectors.")


def search_space(hp) -> Dict[str, Any]:
  """Vector size, L2 (training and fold-in), learning rate."""
  return {"embedding_dim": hp.Choice("embedding_dim", [16, 32, 64]),
          "l2": hp.Float("l2", 1e-4, 3e-2, sampling="log"),
          "fold_in_l2": hp.Float("fold_in_l2", 1e-2, 10.0, sampling="log"),
          "learning_rate": hp.Float("learning_rate", 1e-3, 3e-2, sampling="log")}
