"""Cascade hyperparameters (`CascadeConfig`) and presets.

The cascade has no flags of its own (`--set` reaches every field) and no
tuning search space.
"""

import dataclasses
from typing import Any, Dict, Tuple

import numpy as np

from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares
from tfrec_music.models.dcn import DCNConfig
from tfrec_music.models.rerank_features import HISTORY_FEATURES


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """Retrieve-then-rank hyperparameters.

  Attributes:
    candidates: Tracks the two-tower model proposes per user (C).
    top_k: Tracks served after re-ranking.
    hard_negatives: Negatives per positive drawn from the user's top
      `candidates` retrieved tracks (excluding the user's training tracks).
      6 (with 2 uniform) was chosen on the default preset by validation HR@10
      per minute of fit, one re-ranker: seed 0 0.2467 with 6 + 2 vs 0.2459
      with 12 + 4 and 0.2448 with 3 + 1, the re-ranker fit taking about 0.6x
      the time of 12 + 4 (it trains on every negative: time follows the
      negatives per positive); seed 1 0.2423 with 6 + 2 (retrieval alone
      0.2305).
    random_negatives: Uniform negatives per positive.
    blend_weights: Candidate weights of the retrieval score in the final
      score; the one with the best validation HR@10 is used. 1.5, 3 and 4
      joined the grid with two re-rankers: validation chose 1.5 on two of
      three seeds (the 2.0 it had chosen scored 0.0006-0.0010 lower).
    embedding_dim: DCN embedding size.
    cross_layers: DCN cross layers.
    projection_dim: DCN low-rank size (0 = full rank).
    deep_layers: DCN deep layer sizes.
    learning_rate: DCN Adam learning rate.
    batch_size: DCN batch size.
    epochs: DCN maximum epochs (early stopping on validation log loss).
    l2: DCN L2 weight on the embeddings of each batch.
    dropout: DCN dropout rate of the deep layers.
    recent_positives: Train the re-ranker on each user's last N training
      interactions only (tastes drift; 0 = all of them). 20 was chosen on the
      default preset by validation HR@10 (0.2463 vs 0.2400 with all).
    recent_share: With `recent_positives`, a user's positives are the last
      max(`recent_positives`, ceil(`recent_share` x their training
      interactions)): a heavy listener's recent tastes rest on more than 20
      plays (0 = `recent_positives` for everyone). 0.5 was chosen on the
      default preset by validation HR@10 with one re-ranker (seed 0: 0.2467
      vs 0.2438 with 0; seed 1: 0.2432 vs 0.2396); the re-ranker trains on
      ~1.6x the rows.
    history_features: The (user history, candidate) pair features the
      re-ranker reads (see `HistoryFeatures`): any of `HISTORY_FEATURES`
      (columns the catalogue lacks are skipped); empty = none (the re-ranker
      then sees user and track features only).
    history_pooling: Columns whose embeddings of the history's tracks the
      re-ranker mean-pools into its input (`HistoryDCNRanker`); empty = none.
    user_id_embedding: With history pooling, whether the re-ranker also
      embeds the user id (off: a user is their history and country).
    rankers: Re-rankers trained with different seeds (initialization and
      negatives); the cascade scores a candidate with the mean of their
      logits. 1 (the default) was chosen by validation HR@10 per minute of
      fit on the default preset (`valid_hr@10_by_rankers` in the fit summary
      reports each prefix of an ensemble): the first re-ranker lifts
      retrieval's 0.2362 to 0.2459 (seed 0; seed 3: 0.2375 to 0.2442), a
      second adds 0.0010 (0.0011), a third -0.0016 (-0.0007), each for one
      more re-ranker fit, which is most of the cascade's time (retrieval
      ~2 min, a re-ranker ~5-9 min on 2 cores).
    retrieval_preset: Two-tower preset (set from `--preset`).
    retrieval_overrides: Two-tower config overrides (e.g. `{"epochs": 3}`).
    seed: Seed of both models and the negative sampling.
  """

  candidates: int = 100
  top_k: int = 10
  hard_negatives: int = 6
  random_negatives: int = 2
  blend_weights: Tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
  embedding_dim: int = 16
  cross_layers: int = 2
  projection_dim: int = 0
  deep_layers: Tuple[int, ...] = (64, 32)
  learning_rate: float = 0.002
  batch_size: int = 1024
  epochs: int = 6
  l2: float = 1e-5
  dropout: float = 0.0
  recent_positives: int = 20
  recent_share: float = 0.5
  history_features: Tuple[str, ...] = HISTORY_FEATURES
  history_pooling: Tuple[str, ...] = ("item_id", "artist", "genre")
  user_id_embedding: bool = True
  rankers: int = 1
  retrieval_preset: str = "default"
  retrieval_overrides: Tuple[Tuple[str, Any], ...] = ()
  seed: int = 0

  def __post_init__(self):
    check_ints(self, ("candidates", "top_k", "batch_size", "epochs", "rankers"))
    check_ints(self, ("hard_negatives", "random_negatives", "recent_positives"), minimum=0)
    check_numbers(self, ("learning_rate",), positive=True)
    check_numbers(self, ("l2",))
    check_shares(self, ("recent_share",))
    if self.hard_negatives + self.random_negatives == 0:
      raise ValueError("The re-ranker needs negatives: `hard_negatives` and `random_negatives` "
                       "are both 0.")
    if self.top_k > self.candidates:
      raise ValueError(f"`top_k` ({self.top_k}) should not exceed `candidates` "
                       f"({self.candidates}): the re-ranker orders the candidates only.")
    weights = tuple(float(w) for w in self.blend_weights)
    if not weights or any(not np.isfinite(w) or w < 0 for w in weights):
      raise ValueError(f"`blend_weights` should be non-negative numbers. "
                       f"Received: {self.blend_weights!r}.")
    object.__setattr__(self, "blend_weights", weights)
    object.__setattr__(self, "deep_layers", tuple(int(n) for n in self.deep_layers))
    features = ((self.history_features,) if isinstance(self.history_features, str)
                else tuple(self.history_features))
    unknown = [f for f in features if f not in HISTORY_FEATURES]
    if unknown:
      raise ValueError(f"`history_features` should be among {HISTORY_FEATURES}. "
                       f"Received: {unknown!r}.")
    object.__setattr__(self, "history_features", features)
    pooling = ((self.history_pooling,) if isinstance(self.history_pooling, str)
               else tuple(self.history_pooling))
    object.__setattr__(self, "history_pooling", pooling)
    overrides = self.retrieval_overrides
    if isinstance(overrides, dict):
      overrides = tuple(sorted(overrides.items()))
    object.__setattr__(self, "retrieval_overrides",
                       tuple((str(k), tuple(v) if isinstance(v, list) else v)
                             for k, v in overrides))

  def ranker_config(self, index: int = 0) -> DCNConfig:
    """The config (implicit labels) of re-ranker `index` of the ensemble (seed + 1000 * index)."""
    return DCNConfig(labels="implicit", embedding_dim=self.embedding_dim,
                     cross_layers=self.cross_layers, projection_dim=self.projection_dim,
                     deep_layers=self.deep_layers, learning_rate=self.learning_rate,
                     batch_size=self.batch_size, epochs=self.epochs, l2=self.l2,
                     dropout=self.dropout,
                     negatives=max(1, self.hard_negatives + self.random_negatives),
                     seed=self.seed + 1000 * index)


def presets() -> Dict[str, Dict[str, Any]]:
  """`tiny` trains in seconds for tests; `default` is the measured setting."""
  return {"tiny": {"candidates": 50, "epochs": 3, "batch_size": 256, "embedding_dim": 8,
                   "deep_layers": (32,), "rankers": 1, "retrieval_preset": "tiny"},
          "default": {}}


def with_retrieval_preset(preset: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
  """`overrides` plus the two-tower preset: the preset's own, else `preset` itself when the
  two-tower model has it (`tiny`, `default`), else `default` (an explicit override wins)."""
  overrides = dict(overrides)
  base = presets().get(preset, presets()["default"])
  overrides.setdefault("retrieval_preset", base.get("retrieval_preset", preset
                                                    if preset in ("tiny", "default")
                                                    else "default"))
  return overrides
