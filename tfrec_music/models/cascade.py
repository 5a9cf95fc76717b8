"""Retrieve then rank (`--model two_tower_dcn`): two-tower top-C re-ranked by a DCN.

The recommender idea: a two-tower model is cheap enough to score the whole
catalogue but sees a (user, track) pair only through one dot product; a
Deep & Cross Network sees the pair's features crossed (user x genre, user x
artist, ...) but is too costly to score every track. So the two-tower model
proposes its top `candidates` (default 100) tracks and the DCN re-orders
them; the top `top_k` (default 10) are served.

The re-ranker is trained for this job (`--labels implicit`): each user's
most recent training interactions are positives (tastes drift: the last
`recent_positives`, or the last `recent_share` of a heavier listener's);
each positive's negatives are `hard_negatives` tracks drawn from the
retrieval model's own top candidates for that user (the mistakes the
re-ranker must fix) and `random_negatives` uniform tracks (so it still
knows the rest of the catalogue). A drawn track that is in the user's
training rows, or among the positives being labelled (a validation row's
own track), is dropped; nothing else is, so a user's later validation or
test track may be drawn as a training negative, as it would be in
production, where the future is unknown.

History-aware pair features: a user id embedding learnt from ~20 positives
knows a user's taste poorly, while the query tower reads the recent
history. So the re-ranker reads the same history (the retrieval's last
`history_length` tracks) for every (user, candidate) pair:

- `history_features` (`HistoryFeatures`, the classic music re-ranking
  features): the share of the history's tracks by the candidate's artist,
  on its album, in its genre, parent genre and mood; how full the history
  is; the candidate's log popularity among other listeners;
- `history_pooling` (`HistoryDCNRanker`): the mean of the network's own
  embeddings of the history's track ids, artists and genres joins x0, so the
  cross layers learn candidate x history interactions.

They are computed causally: a training positive's history is the tracks
its user played strictly before it (never the positive itself), and its
negatives share that history; a positive's own play is left out of its
popularity, so it is measured like a held-out track's. Validation uses the
last training tracks, test the last training + validation tracks, as the
retrieval does. No retrieval output is a feature (the two-tower model saw
the training positives, so their scores and embedding similarities are
inflated against held-out tracks'). One TensorFlow implementation computes
them in training, evaluation and the export.

The final score of a candidate is

  dcn_logit + blend * retrieval_score / temperature

where the retrieval term keeps what the two-tower model knows that the
ranker does not; `blend` is chosen from `blend_weights` by validation
HR@10 (never the test split). `dcn_logit` is the mean logit of `rankers`
re-rankers trained alike with their own seeds (initialization and
negatives): one re-ranker overfits its ~20 positives per user within two
epochs, and the fits' errors partly cancel.

Export (`saved_models/two_tower_dcn/<version>/`), one SavedModel:
`serving_default(user_id)` (stored history of known users; unknown users get
the popularity fallback) and `recommend(user_id, history, <user features>,
exclude)` (all raw) -> `item_ids` [B, top_k], `scores` [B, top_k],
`fallback` [B]. The history features are computed inside the graph: history
ids -> catalogue rows -> artist / album / genre codes, pooled lookup indices
and play counts stored in the model (the stored history for
`serving_default`, the request's `history` for `recommend`). Serving
fallbacks: an unknown (or empty) user id with no catalogue track in its
history gets the popularity top-k in popularity order (`fallback` true); a
user id the re-ranker never trained on but with a history (`recommend`)
gets the retrieval order of its candidates; an empty country maps to the
missing-value index; duplicate rows get identical answers. `k` is fixed
at export: min(`top_k`, `candidates`, catalogue size), so a `top_k` or
`candidates` above the catalogue serves the whole catalogue (ranked), never
an error; the user's own (excluded) tracks are never served: the slots they
would take come last as empty results (id "", score `EMPTY_SCORE`). `top_k`
above `candidates` is refused by the config. Evaluation: the cascade, the
two-tower retrieval alone, the popularity baseline and (synthetic data) the
oracle, through the same full-ranking protocol on the same users.
"""

import dataclasses
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares
from tfrec_music.models.dcn import DCNConfig
from tfrec_music.models.dcn import DCNFamily
from tfrec_music.models.dcn import DCNModel
from tfrec_music.models.dcn import optimizer
from tfrec_music.models import history as history_lib
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.rerank_features import HISTORY_FEATURES
from tfrec_music.models.rerank_features import HistoryDCNRanker
from tfrec_music.models.rerank_features import HistoryFeatures
from tfrec_music.models.rerank_features import causal_rows
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.prepare.prepared import PreparedData


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """Retrieve-then-rank hyperparameters.

  Attributes:
    candidates: Tracks the two-tower model proposes per user (C).
    top_k: Tracks served after re-ranking.
    hard_negatives: Negatives per positive drawn from the user's top
      `candidates` retrieved tracks (excluding the user's training tracks).
      12 (with 4 uniform) was chosen on the default preset, seed 0, by
      validation HR@10 with the history features: 0.2486 vs 0.2469 with 4 + 4.
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
      logits (an ensemble: less of one fit's noise). 1 = a single re-ranker;
      each one more costs one more re-ranker fit. Two beat one on the
      default preset's validation HR@10 (seed 0: 0.2480 vs 0.2438; seed 1:
      0.2432 vs 0.2396). A third (the default) changed validation HR@10 by
      -0.0010 to +0.0044 over seeds 0-4 (mean +0.0008, median -0.0002) and
      test HR@10 by -0.0017 to +0.0042 (mean +0.0006): within one seed's
      noise, for ~1.5x the cascade's fit time; kept because a mean of more
      fits is less noisy (`rankers=2` is the faster choice).
    retrieval_preset: Two-tower preset (set from `--preset`).
    retrieval_overrides: Two-tower config overrides (e.g. `{"epochs": 3}`).
    seed: Seed of both models and the negative sampling.
  """

  candidates: int = 100
  top_k: int = 10
  hard_negatives: int = 12
  random_negatives: int = 4
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
  rankers: int = 3
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


class HardNegativeDCN(DCNFamily):
  """The DCN family with negatives drawn from retrieval candidates plus uniform ones.

  Trained through the DCN's `fit` (the shared fit loop: step checkpoints,
  resume, NaN guard, early stopping on the validation log loss) under its own
  backup name.

  Args:
    config: Implicit-label `DCNConfig`.
    prepared: Prepared data.
    candidates_of: user id -> [C] catalogue indices of the user's retrieved
      tracks (training tracks already excluded).
    hard: Hard negatives per positive.
    uniform: Uniform negatives per positive.
    recent: Positives are each user's last `recent` training rows (0: all).
    recent_share: With `recent`, a user's positives are the last
      max(`recent`, ceil(`recent_share` x the user's training rows)).
    history_features: `HistoryFeatures` of (history, candidate) pairs fed to
      the network as its `dense` input (None: none). A training positive's
      history is the `length` tracks its user played strictly before it, and
      its negatives share that history; a validation row's is `history_of`.
    pooled: Columns whose embeddings (the network's own) of the history's
      tracks the network mean-pools into x0 (`HistoryDCNRanker`); needs
      `history_features`.
    history_of: user ids [N] -> [N, length] catalogue rows of each user's
      history before validation (the retrieval's; needed with
      `history_features`).
  """

  def __init__(self, config: DCNConfig, prepared: PreparedData,
               candidates_of: Callable[[np.ndarray], np.ndarray], hard: int, uniform: int,
               recent: int = 0, history_features: Optional[HistoryFeatures] = None,
               pooled: Sequence[str] = (), user_id: bool = True,
               history_of: Optional[Callable[[np.ndarray], np.ndarray]] = None,
               recent_share: float = 0.0):
    super().__init__(config, prepared)
    if history_features is not None and history_of is None:
      raise ValueError("`history_features` needs `history_of` (the users' history rows).")
    self.candidates_of = candidates_of
    self.history_of = history_of
    self.hard, self.uniform, self.recent = hard, uniform, recent
    self.recent_share = float(recent_share)
    # The network reads the pair features as its `dense` input (beside the
    # embeddings) and pools the embeddings of the history's tracks.
    self.history_features = history_features
    if history_features is not None and pooled:
      history_features.pool(self.encoded_items, pooled)
      tf.keras.utils.set_random_seed(config.seed)
      self.ranker = HistoryDCNRanker(self.encoder.vocab_sizes(), len(self.spec.numeric), config,
                                     pooled=tuple(history_features.pooled), user_id=user_id,
                                     name="dcn_ranker")
      self.model = DCNModel(self.ranker, config.labels)
      self.model.compile(optimizer=optimizer(config))

  fit_name = "two_tower_dcn_ranker"

  def training_features(self, epoch: int = 0) -> Dict[str, np.ndarray]:
    """Positives (`positive_rows`) with fresh negatives every epoch."""
    train = self.prepared.train
    history = None
    if self.history_features is not None:
      if not hasattr(self, "_train_history"):
        self._train_history = causal_rows(train, self.prepared.item_index(train["item_id"]),
                                          self.history_features.length)
      history = self._train_history
    rows = self.positive_rows()
    if history is not None:
      history = history[rows]
    return self._implicit_rows(train.iloc[rows], self.config.seed * 1000 + epoch, history,
                               own_positives=True)

  def positive_rows(self) -> np.ndarray:
    """Positions in the training rows of the positives: each user's last
    max(`recent`, ceil(`recent_share` x the user's rows)), or all rows (`recent` 0)."""
    train = self.prepared.train
    if not self.recent:
      return np.arange(len(train))
    # `prepare` keeps each user's rows in time order.
    users = train.groupby("user_id", sort=False)
    from_end = users.cumcount(ascending=False).to_numpy()
    size = users["item_id"].transform("size").to_numpy()
    return np.flatnonzero(from_end < np.maximum(self.recent,
                                                np.ceil(self.recent_share * size)))

  def with_history(self, features: Dict[str, np.ndarray], history: np.ndarray,
                   candidates: np.ndarray, own: Optional[np.ndarray] = None
                   ) -> Dict[str, np.ndarray]:
    """`features` plus the `dense` pair features of (history [N, H], candidate [N]) rows."""
    if self.history_features is not None:
      features.update(self.history_features.numpy(history, candidates, own))
    return features

  def _pair_codes(self, user_ids, item_index: np.ndarray) -> np.ndarray:
    """[N] int64 code of each (user, catalogue item) pair (users outside training share -1)."""
    if not hasattr(self, "_user_codes"):
      self._user_codes = pd.Index(np.unique(self.prepared.train["user_id"].astype(str)))
    users = self._user_codes.get_indexer(np.asarray(user_ids).astype(str)).astype(np.int64)
    return (users + 1) * (self.prepared.n_items + 1) + np.asarray(item_index, np.int64)

  def _implicit_rows(self, frame: pd.DataFrame, seed: int,
                     history: Optional[np.ndarray] = None,
                     own_positives: bool = False) -> Dict[str, np.ndarray]:
    """Positives of `frame`, `hard` retrieved and `uniform` random negatives each (label 0).

    `history` ([N, H] catalogue rows aligned with `frame`): each positive's
    history, shared by its negatives (default: `history_of`, the users'
    history before validation). `own_positives`: `frame` holds training rows (their plays leave
    the popularity feature).
    """
    rng = np.random.default_rng(seed)
    users = frame["user_id"].to_numpy().astype(str)
    pos = self.prepared.item_index(frame["item_id"])
    parts_users, parts_items, parts_rows = [], [], []
    row = np.arange(len(users))
    if self.hard:
      pools = self.candidates_of(users)  # [N, C]
      pick = rng.integers(0, pools.shape[1], size=(len(users), self.hard))
      parts_users.append(np.repeat(users, self.hard))
      parts_items.append(np.take_along_axis(pools, pick, axis=1).reshape(-1))
      parts_rows.append(np.repeat(row, self.hard))
    if self.uniform:
      parts_users.append(np.repeat(users, self.uniform))
      parts_items.append(rng.integers(0, self.prepared.n_items, size=len(users) * self.uniform))
      parts_rows.append(np.repeat(row, self.uniform))
    neg_users, neg = np.concatenate(parts_users), np.concatenate(parts_items)
    neg_rows = np.concatenate(parts_rows)
    # A negative that is one of the user's own tracks is no negative: drop it.
    train = self.prepared.train
    known = np.concatenate([self._pair_codes(train["user_id"], self.prepared.item_index(
        train["item_id"])), self._pair_codes(users, pos)])
    keep = ~np.isin(self._pair_codes(neg_users, neg), known)
    neg_users, neg, neg_rows = neg_users[keep], neg[keep], neg_rows[keep]
    items = np.concatenate([pos, neg])
    features = self.pair_features(np.concatenate([users, neg_users]), items)
    if self.history_features is not None:
      if history is None:
        history = self.history_of(users)
      # A training positive is one of its user's own plays: its popularity
      # counts the other listeners only, like any held-out track's.
      own = np.concatenate([np.full(len(pos), own_positives), np.zeros(len(neg), bool)])
      self.with_history(features, history[np.concatenate([row, neg_rows])], items, own)
    features["label"] = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    return features


class CascadeFamily(ModelFamily):
  """Two-tower retrieval re-ranked by a hard-negative DCN, plugged into the pipeline."""

  name = "two_tower_dcn"
  config_class = CascadeConfig

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """`tiny` trains in seconds for tests; `default` is the measured setting."""
    return {"tiny": {"candidates": 50, "epochs": 3, "batch_size": 256, "embedding_dim": 8,
                     "deep_layers": (32,), "rankers": 1, "retrieval_preset": "tiny"},
            "default": {}}

  @classmethod
  def make_config(cls, preset: str, overrides: Dict[str, Any]) -> CascadeConfig:
    """The preset's config; the two-tower part follows the same preset name."""
    overrides = dict(overrides)
    base = cls.presets().get(preset, cls.presets()["default"])
    overrides.setdefault("retrieval_preset", base.get("retrieval_preset", preset
                                                      if preset in ("tiny", "default")
                                                      else "default"))
    return super().make_config(preset, overrides)

  def __init__(self, config: CascadeConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    retrieval_config = TwoTowerFamily.make_config(
        config.retrieval_preset,
        {**dict(config.retrieval_overrides), "top_k": config.candidates, "seed": config.seed})
    self.retrieval = TwoTowerFamily(retrieval_config, prepared)
    self.temperature = float(retrieval_config.temperature)
    self.ranker: Optional[HardNegativeDCN] = None  # the first of `rankers`
    self.rankers: List[HardNegativeDCN] = []
    self.blend = config.blend_weights[0]
    self.fit_summary: Dict[str, Any] = {}
    self._exclusions: Dict[str, Dict[str, np.ndarray]] = {}

  # ------------------------------------------------------------- candidates
  def _history_of(self, split: str) -> pd.DataFrame:
    prepared = self.prepared
    if split == "valid":
      return prepared.train
    if split == "test":
      return pd.concat([prepared.train, prepared.valid])
    if split == "cold_user":
      return prepared.cold_user_history
    raise ValueError("`split` should be one of ('valid', 'test', 'cold_user'). "
                     f"Received: `split` = {split!r}.")

  def exclusions(self, split: str) -> Dict[str, np.ndarray]:
    """user id -> catalogue indices of the tracks the user had before `split`."""
    if split not in self._exclusions:
      history = self._history_of(split)
      index = self.prepared.item_index(history["item_id"])
      frame = pd.DataFrame({"u": history["user_id"].astype(str).to_numpy(), "i": index})
      self._exclusions[split] = {u: g.to_numpy() for u, g in frame.groupby("u")["i"]}
    return self._exclusions[split]

  def retrieve(self, user_ids: Sequence[str], split: str, n: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """([B, n] catalogue indices, [B, n] retrieval scores) of each user's top tracks.

    Tracks the user had before `split` are excluded, as in serving.
    """
    scores = self.retrieval.scorer(split)(np.asarray(user_ids)).astype(np.float64)
    return self._top_candidates(user_ids, scores, split, n)

  def _top_candidates(self, user_ids: Sequence[str], scores: np.ndarray, split: str,
                      n: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    n = min(n or self.config.candidates, self.prepared.n_items)
    scores = scores.copy()
    excluded = self.exclusions(split)
    for row, user in enumerate(np.asarray(user_ids).astype(str)):
      seen = excluded.get(user)
      if seen is not None and len(seen):
        scores[row, seen] = -np.inf
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return top, np.take_along_axis(top_scores, order, axis=1)

  def _training_candidates(self) -> Callable[[np.ndarray], np.ndarray]:
    """user id -> [C] retrieved tracks with the training history (for hard negatives)."""
    users = np.unique(self.prepared.train["user_id"].astype(str).to_numpy())
    pools = np.zeros((len(users), min(self.config.candidates, self.prepared.n_items)), np.int64)
    for start in range(0, len(users), 512):
      pools[start:start + 512] = self.retrieve(users[start:start + 512], "valid")[0]
    where = pd.Index(users)

    def _of(user_ids: np.ndarray) -> np.ndarray:
      rows = where.get_indexer(np.asarray(user_ids).astype(str))
      # Users without training rows (none in practice) draw from row 0.
      return pools[np.maximum(rows, 0)]
    return _of

  # ----------------------------------------------------------------- training
  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Fits the two-tower model, then the hard-negative DCN(s), then picks the blend.

    Every Keras fit goes through the shared fit loop with this family's
    `checkpoint_every`, each under its own backup folder
    (`<backup_dir>/retrieval/two_tower`, `<backup_dir>/ranker/two_tower_dcn_ranker`,
    `<backup_dir>/ranker_1/...` for the ensemble's others), so a killed run
    rerun with the same command resumes the stage it was in; finished stages
    are restored (`_fit_or_restore`).
    """
    self._share_checkpointing(self.retrieval, "retrieval")
    backup = self.backup_dir or io.join(job_dir, "backup")
    retrieval_summary = self._fit_or_restore(self.retrieval, "retrieval", job_dir, backup)
    config = self.config
    candidates = self._training_candidates()
    self.rankers, ranker_summaries, stages = [], [], ["retrieval"]
    for index in range(config.rankers):
      ranker = self._new_ranker(index, candidates)
      name = "ranker" if index == 0 else f"ranker_{index}"
      stages.append(name)
      self._share_checkpointing(ranker, name)
      ranker_summaries.append(self._fit_or_restore(ranker, name, job_dir, backup))
      self.rankers.append(ranker)
    self.ranker = self.rankers[0]
    for name in stages:
      folder = io.join(backup, f"two_tower_dcn_{name}")
      if tf.io.gfile.isdir(folder):
        tf.io.gfile.rmtree(folder)  # finished: the stage backups are no longer needed
    if tf.io.gfile.isdir(backup) and not tf.io.gfile.listdir(backup):
      tf.io.gfile.rmtree(backup)
    valid_hr = self._choose_blend()
    logging.info("two_tower_dcn: blend %.2f (validation HR@10 by blend: %s)", self.blend,
                 valid_hr)
    self.fit_summary = {"retrieval": retrieval_summary, "ranker": ranker_summaries[0],
                        "blend": self.blend, "valid_hr@10_by_blend": valid_hr}
    if config.rankers > 1:
      self.fit_summary["rankers"] = ranker_summaries
    return self.fit_summary

  def _new_ranker(self, index: int, candidates: Callable[[np.ndarray], np.ndarray]
                  ) -> HardNegativeDCN:
    """Re-ranker `index` of the ensemble, untrained, with hard negatives from `candidates`
    (`_training_candidates`)."""
    config = self.config
    return HardNegativeDCN(config.ranker_config(index), self.prepared, candidates,
                           config.hard_negatives, config.random_negatives,
                           config.recent_positives, self.history_features(),
                           config.history_pooling, config.user_id_embedding,
                           history_of=lambda users: self.history_rows(users, "valid"),
                           recent_share=config.recent_share)

  def _fit_or_restore(self, stage: ModelFamily, name: str, job_dir: str,
                      backup: str) -> Dict[str, Any]:
    """Fits one stage (the two-tower model or a re-ranker), or restores it when a killed
    run already had.

    A finished stage is checkpointed (weights and summary, tagged with its
    configuration: a re-ranker's with the whole cascade's) under
    `<backup>/two_tower_dcn_<name>`, so a rerun of a run killed in a later
    stage restores it instead of training it again (the re-rankers' hard
    negatives come from the retrieval stage, so it must be the same one). A
    re-ranker's network creates its variables on its first call, so it is
    called once before the read: the weights are restored at once, not
    deferred to a first call that may come after the finished stages'
    folders are removed.
    """
    folder = io.join(backup, f"two_tower_dcn_{name}")
    tag = {"config": dataclasses.asdict(stage.config), "data": self.prepared.fingerprint}
    if isinstance(stage, HardNegativeDCN):
      # A re-ranker also depends on what its DCN config does not hold: its
      # positives and negatives, its features, and the retrieval stage behind
      # its hard negatives (all in the cascade's config).
      tag["cascade"] = dataclasses.asdict(self.config)
    fingerprint = json.dumps(tag, sort_keys=True, default=str)
    summary_path = io.join(folder, "summary.json")
    checkpoint = tf.train.Checkpoint(model=stage.model)
    if tf.io.gfile.exists(summary_path):
      with tf.io.gfile.GFile(summary_path) as f:
        saved = json.load(f)
      if saved.get("fingerprint") == fingerprint:
        if isinstance(stage, HardNegativeDCN):
          self._build_ranker(stage)
        checkpoint.read(io.join(folder, "weights")).assert_existing_objects_matched()
        logging.info("two_tower_dcn: restored the finished %s stage from %s.", name, folder)
        stage.fit_summary = {**saved["summary"], "restored": True}
        return stage.fit_summary
      logging.warning("The %s stage in %s was written by a run with another "
                      "configuration; training it afresh.", name, folder)
    summary = stage.fit(io.join(job_dir, name))
    tf.io.gfile.makedirs(folder)
    checkpoint.write(io.join(folder, "weights"))
    with tf.io.gfile.GFile(summary_path + ".tmp", "w") as f:
      json.dump({"fingerprint": fingerprint, "summary": summary}, f, default=str)
    tf.io.gfile.rename(summary_path + ".tmp", summary_path, overwrite=True)
    return summary

  def _build_ranker(self, ranker: HardNegativeDCN) -> None:
    """Creates a re-ranker's variables by scoring one (user, track) pair."""
    users = self.prepared.train["user_id"].astype(str).to_numpy()[:1]
    items = self.prepared.item_index(self.prepared.train["item_id"].to_numpy()[:1])
    features = self._pair_inputs(ranker, users, items[:, None], "valid")
    ranker.ranker({k: tf.constant(v) for k, v in features.items()})

  def _share_checkpointing(self, stage: ModelFamily, name: str) -> None:
    """Gives a stage this family's checkpoint frequency and a backup folder of its own."""
    stage.checkpoint_every = self.checkpoint_every
    stage.backup_dir = io.join(self.backup_dir, name) if self.backup_dir else None

  def history_features(self) -> Optional[HistoryFeatures]:
    """The re-ranker's pair features over the retrieval's history length (None: none)."""
    if not (self.config.history_features or self.config.history_pooling):
      return None
    return HistoryFeatures(self.prepared.items, self.prepared.item_train_counts,
                           self.config.history_features, self.retrieval.config.history_length)

  def history_rows(self, user_ids: Sequence[str], split: str) -> np.ndarray:
    """[B, H] catalogue rows of each user's history before `split` (-1: padding)."""
    history = self.retrieval.raw_query_features(np.asarray(user_ids).astype(str),
                                                split)["history"]
    return self.prepared.item_index(history.reshape(-1)).reshape(history.shape).astype(np.int64)

  def _candidate_logits(self, user_ids: np.ndarray, candidates: np.ndarray,
                        split: str) -> np.ndarray:
    """[B, C] re-ranker logits of each user's candidates (history before `split`).

    With an ensemble, the mean of the re-rankers' logits. They share one
    vocabulary and history featurization (the same prepared data), so the
    encoded features are computed once.
    """
    b, c = candidates.shape
    features = self._pair_inputs(self.ranker, user_ids, candidates, split)
    rankers = self.rankers or [self.ranker]
    return np.mean([r.predict_encoded(features) for r in rankers], axis=0).reshape(b, c)

  def _pair_inputs(self, ranker: HardNegativeDCN, user_ids: np.ndarray, candidates: np.ndarray,
                   split: str) -> Dict[str, np.ndarray]:
    """`ranker`'s encoded inputs of the [B, C] (user, candidate) pairs, row-major."""
    c = candidates.shape[1]
    features = ranker.pair_features(np.repeat(np.asarray(user_ids).astype(str), c),
                                    candidates.reshape(-1))
    if ranker.history_features is not None:
      history = np.repeat(self.history_rows(user_ids, split), c, axis=0)
      ranker.with_history(features, history, candidates.reshape(-1))
    return features

  def _final(self, logits: np.ndarray, retrieval_scores: np.ndarray, blend: float,
             user_ids: Optional[Sequence[str]] = None) -> np.ndarray:
    """[B, C] final scores; users the re-ranker never trained on keep the retrieval order.

    Such users (cold users served from their history, unknown ids) would be
    scored through the re-ranker's fallback, one constant for every track, so
    their candidates are ranked by the retrieval score alone.
    """
    final = logits + blend * retrieval_scores / self.temperature
    if user_ids is not None:
      known = np.isin(np.asarray(user_ids).astype(str), self.ranker.vocabs["user_id"])
      final = np.where(known[:, None], final, retrieval_scores / self.temperature)
    # Excluded tracks (score -inf: the user had them) stay last, whatever the blend.
    return np.where(np.isneginf(retrieval_scores), -np.inf, final)

  def _choose_blend(self) -> Dict[str, float]:
    """Validation HR@10 of each blend weight; keeps the best (first on ties)."""
    valid = self.prepared.valid
    if len(valid) == 0:
      return {}
    users = valid["user_id"].astype(str).to_numpy()
    targets = self.prepared.item_index(valid["item_id"])
    candidates, scores = self.retrieve(users, "valid")
    logits = self._candidate_logits(users, candidates, "valid")
    k = min(10, candidates.shape[1])
    result = {}
    for weight in self.config.blend_weights:
      final = self._final(logits, scores, weight, users)
      top = np.take_along_axis(candidates, np.argsort(-final, axis=1, kind="stable")[:, :k],
                               axis=1)
      result[str(weight)] = float(np.mean((top == targets[:, None]).any(axis=1)))
    self.blend = float(max(self.config.blend_weights, key=lambda w: result[str(w)]))
    return result

  # ----------------------------------------------------------------- scoring
  def scorer(self, split: str) -> Callable[[Sequence[str]], np.ndarray]:
    """Full-catalogue scores: re-ranked candidates first, the rest in retrieval order."""

    def _score(user_ids):
      user_ids = np.asarray(user_ids).astype(str)
      all_scores = self.retrieval.scorer(split)(user_ids).astype(np.float64)
      candidates, scores = self._top_candidates(user_ids, all_scores, split)
      final = self._final(self._candidate_logits(user_ids, candidates, split), scores,
                          self.blend, user_ids)
      # Non-candidates keep their retrieval order, strictly below every candidate.
      out = all_scores - (np.abs(all_scores).max() + 1.0) * 2.0
      floor = out.max(axis=1, keepdims=True)
      # Excluded candidates (-inf, when `candidates` nears the catalogue) stay at -inf.
      lowest = np.where(np.isfinite(final), final, np.inf).min(axis=1, keepdims=True)
      final = final - np.where(np.isfinite(lowest), lowest, 0.0) + floor + 1.0
      np.put_along_axis(out, candidates, final, axis=1)
      return out
    return _score

  def score_fn(self):
    """Scorer factory (split -> scorer)."""
    return self.scorer

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """The cascade, retrieval alone, popularity and the oracle on the same users and splits."""
    metrics = super().evaluate(context)
    from tfrec_music.evaluation.protocol import evaluate_scorer  # pylint: disable=g-import-not-at-top
    metrics["two_tower"] = evaluate_scorer(self.retrieval.score_fn(), self.prepared)
    metrics["model"]["blend"] = self.blend
    return {"model": metrics.pop("model"), "two_tower": metrics.pop("two_tower"), **metrics}

  # ----------------------------------------------------------------- export
  def serving_module(self) -> "CascadeServingModule":
    """The serving module (raw user features in, ranked track ids out)."""
    from tfrec_music.export import retrieval as retrieval_export  # pylint: disable=g-import-not-at-top
    from tfrec_music.models.popularity import PopularityModel  # pylint: disable=g-import-not-at-top
    r = self.retrieval
    c = min(self.config.candidates, self.prepared.n_items)
    popular_ids, popular_scores = PopularityModel.fit(self.prepared).top_k(c)
    known = np.asarray(self.prepared.vocabularies["user_id"])
    stored = r.raw_query_features(known, "test")
    stored.pop("user_id")
    # Everything played up to the test point is excluded, as the evaluation does.
    seen = history_lib.seen_matrix(known, pd.concat([self.prepared.train, self.prepared.valid]))
    stage_one = retrieval_export.RetrievalServingModule(
        r.query_model(), r.query_signature(), r.item_embeddings(), self.prepared.item_ids,
        "exact", known, stored, popular_ids, popular_scores, c, stored_exclude=seen)
    rankers = self.rankers or [self.ranker]
    return CascadeServingModule(stage_one, [ranker.serving_module() for ranker in rankers],
                                r.query_signature(), self.blend, self.temperature,
                                self.config.top_k, self.ranker.history_features)

  def save(self, directory: str) -> Dict[str, str]:
    """One SavedModel: retrieval, candidate features and the re-ranker inside."""
    module = self.serving_module()
    tf.saved_model.save(module, directory, signatures=module.signatures())
    k = module.k
    return {"serving_default": f"user_id [B] -> item_ids [B, {k}], scores [B, {k}], "
                               "fallback [B] (stored history of known users; popularity "
                               "for unknown users)",
            "recommend": "user_id [B], history [B, H] (padded with ''), "
                         + "".join(f"{c} [B], " for c in self.retrieval.user_features)
                         + f"exclude [B, E] -> item_ids [B, {k}], scores, fallback"}


class CascadeServingModule(tf.Module):
  """Raw user features -> two-tower top-C -> DCN re-rank -> top-k ids and scores.

  Args:
    retrieval: `RetrievalServingModule` returning the top C candidates.
    rankers: `DCNServingModule`s (implicit labels) with the catalogue's
      features, one per re-ranker of the ensemble (a candidate's logit is
      their mean); they share one vocabulary.
    query_signature: Raw query inputs besides `user_id` (history, country...).
    blend: Weight of the retrieval score in the final score.
    temperature: The two-tower softmax temperature (retrieval logit scale).
    k: Results served.
    history_features: The re-ranker's `HistoryFeatures` (None: it reads none),
      computed in the graph from the request's `history` (`recommend`) or the
      stored history of a known user (`serving_default`).
  """

  def __init__(self, retrieval, rankers, query_signature: Dict[str, tf.TensorSpec],
               blend: float, temperature: float, k: int,
               history_features: Optional[HistoryFeatures] = None):
    super().__init__()
    if not isinstance(rankers, (list, tuple)):
      rankers = [rankers]
    self.retrieval, self.rankers = retrieval, list(rankers)
    self.ranker = self.rankers[0]  # its vocabularies encode every ranker's inputs
    self.history_features = history_features
    if history_features is not None:
      # The re-ranker's own signatures score pairs without a history, which
      # this network cannot: only its tables, encoder and network are kept.
      for ranker in self.rankers:
        ranker.serve = ranker.score_ids = None
    self.k = int(min(k, retrieval.k))
    self.weight = tf.constant(float(blend) / float(temperature), tf.float32)
    self.inverse_temperature = tf.constant(1.0 / float(temperature), tf.float32)
    self.user_columns = [c for c in ranker.spec.user_categorical if c in query_signature]
    recommend_spec = dict(query_signature)
    recommend_spec["user_id"] = tf.TensorSpec([None], tf.string, name="user_id")
    recommend_spec["exclude"] = tf.TensorSpec([None, None], tf.string, name="exclude")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      return self._rerank(user_id, self.retrieval.serve(user_id), {},
                          self._stored_history(user_id))

    @tf.function(input_signature=[recommend_spec])
    def recommend(inputs):
      given = {c: inputs[c] for c in self.user_columns}
      return self._rerank(inputs["user_id"], self.retrieval.recommend(inputs), given,
                          inputs.get("history"))

    self.serve, self.recommend = serve, recommend

  def _stored_history(self, user_id):
    """[B, H] stored history of known users ("" for unknown ones), as the retrieval reads it."""
    if "history" not in self.retrieval.stored:
      return None
    rows = self.retrieval.user_table.lookup(user_id)
    history = tf.gather(self.retrieval.stored["history"], tf.maximum(rows, 0))
    return tf.where((rows >= 0)[:, tf.newaxis], history, tf.fill(tf.shape(history), ""))

  def _logits(self, users, ids, given, history):
    """[B, C] re-ranker logits of the candidates `ids` [B, C] (as `HardNegativeDCN` predicts)."""
    batch, c = tf.shape(ids)[0], tf.shape(ids)[1]
    flat_users = tf.reshape(tf.tile(users[:, tf.newaxis], [1, c]), [-1])
    flat_ids = tf.reshape(ids, [-1])
    raw = self.ranker.features_from_ids(flat_users, flat_ids)
    for column, values in given.items():
      raw[column] = tf.reshape(tf.tile(values[:, tf.newaxis], [1, c]), [-1])
    extra = None
    if self.history_features is not None:
      if history is None:
        history = tf.fill([batch, 1], "")
      table = self.retrieval.item_table  # catalogue id -> catalogue row (-1: unknown)
      rows = tf.repeat(table.lookup(history), c, axis=0)  # [B * C, H]
      extra = {"dense": self.history_features(rows, table.lookup(flat_ids)),
               **self.history_features.history_indices(rows)}
    logits = tf.add_n([ranker._predict(raw, extra)["logit"]  # pylint: disable=protected-access
                       for ranker in self.rankers]) / float(len(self.rankers))
    return tf.reshape(logits, [batch, c])

  def _rerank(self, user_id, stage_one, given, history=None):
    ids, scores, fallback = stage_one["item_ids"], stage_one["scores"], stage_one["fallback"]
    logits = self._logits(user_id, ids, given, history)
    c = tf.shape(ids)[1]
    final = logits + self.weight * scores
    # Users the re-ranker never trained on (new ids served from their history,
    # "") keep the retrieval order, as in `CascadeFamily._final`.
    unknown_user = self.ranker.encoder.lookups["user_id"](user_id) < 2
    final = tf.where(unknown_user[:, tf.newaxis], self.inverse_temperature * scores, final)
    # Slots the retrieval stage left empty (id "": every other track excluded) and
    # excluded tracks (score -inf) stay last, whatever the blend.
    empty_in = tf.equal(ids, "") | (tf.math.is_inf(scores) & (scores < 0))
    final = tf.where(empty_in, tf.constant(-np.inf, tf.float32), final)
    # Fallback users (no history, unknown id) keep the popularity order.
    position = -tf.cast(tf.range(c), tf.float32)[tf.newaxis, :]
    final = tf.where(fallback[:, tf.newaxis], position + tf.zeros_like(final), final)
    top_scores, top = tf.math.top_k(final, k=self.k)
    top_ids = tf.gather(ids, top, batch_dims=1)
    # Slots left once the excluded tracks are set aside (k near the catalogue) are
    # empty, as in the ALS and playlist exports: id "" and the lowest float32 score.
    empty = tf.math.is_inf(top_scores) & (top_scores < 0)
    return {"item_ids": tf.where(empty, tf.constant(""), top_ids),
            "scores": tf.where(empty, tf.constant(EMPTY_SCORE, tf.float32), top_scores),
            "fallback": fallback}

  def signatures(self) -> Dict[str, Callable]:
    """`serving_default` (user id) and `recommend` (raw features)."""
    return {"serving_default": self.serve, "recommend": self.recommend}
