"""Two-tower retrieval (`--model two_tower`): user tower x track tower.

The recommender idea: embed users (id, country, the tracks they played
recently) and tracks (id plus content: artist, album, genre, tags, title and
lyrics text, audio features) in one space and recommend the nearest tracks.
Training is in-batch softmax (`tfrs.tasks.Retrieval`) with sampling-bias
(logQ) correction from training item frequencies, accidental-hit removal, a
temperature and optional extra uniform negatives (mixed negatives). Content
features let never-played tracks be placed near similar ones; history lets
users never seen in training get personal recommendations.
"""

import dataclasses
import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music import io
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.export.projector import write_item_projector
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models import history as history_lib
from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.features import ItemEncoder
from tfrec_music.models.features import ItemFeatureSpec
from tfrec_music.models.features import TEXT_VECTOR_COLUMN
from tfrec_music.models.features import encode_catalogue
from tfrec_music.models.features import item_input_signature
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.towers import CandidateTower
from tfrec_music.models.towers import QueryTower
from tfrec_music.pipeline.dataset import make_dataset
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.pipeline.lookups import string_lookup
from tfrec_music.prepare.prepared import PreparedData

USER_FEATURES = ("country",)


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  """Two-tower hyperparameters.

  Attributes:
    features: `"all"` (content features on) or `"ids"` (track id only).
    embedding_dim: Size of the shared user/track space.
    layer_sizes: Hidden layers of each tower's MLP.
    feature_dim: Embedding size of each content feature.
    history_length: Recent tracks pooled in the user tower.
    learning_rate: Optimizer learning rate.
    optimizer: `adam`, `adagrad` or `sgd`.
    batch_size: Training batch size (= in-batch negatives + 1).
    epochs: Maximum epochs (early stopping may stop sooner).
    temperature: Softmax temperature over the scores.
    normalize: L2-normalize both towers' outputs (cosine scores); off, the
      vector norms can carry item popularity.
    logq_correction: Subtract log sampling probability from logits.
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
  optimizer: str = "adam"
  batch_size: int = 1024
  epochs: int = 12
  temperature: float = 0.1
  normalize: bool = True
  logq_correction: bool = True
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
  early_stopping_patience: int = 2
  validation_users: int = 2000
  top_k: int = 100
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"features": ("all", "ids"), "optimizer": ("adam", "adagrad", "sgd"),
                         "history_pooling": ("mean", "recency"),
                         "history_window": ("auto", "causal", "others")})
    check_ints(self, ("embedding_dim", "batch_size", "epochs", "history_length", "top_k"))
    check_ints(self, ("mixed_negatives", "item_id_min_count", "early_stopping_patience",
                      "validation_users"), minimum=0)
    check_numbers(self, ("temperature", "learning_rate"), positive=True)
    check_shares(self, ("user_id_dropout", "item_id_dropout", "history_dropout"))
    object.__setattr__(self, "layer_sizes", tuple(int(n) for n in self.layer_sizes))


class TwoTowerModel(tfrs.Model):
  """The training model: towers, catalogue features and the retrieval task.

  Args:
    query_tower: `QueryTower`.
    candidate_tower: `CandidateTower`.
    catalogue: Encoded item features, each [n_items, ...], gathered by
      catalogue index for the candidates of a batch.
    sampling_probability: [n_items] probability of each item being a batch
      candidate (training frequency), for the logQ correction.
    config: `TwoTowerConfig`.
  """

  def __init__(self, query_tower: QueryTower, candidate_tower: CandidateTower,
               catalogue: Dict[str, np.ndarray], sampling_probability: np.ndarray,
               config: TwoTowerConfig):
    super().__init__()
    self.query_tower = query_tower
    self.candidate_tower = candidate_tower
    self.catalogue = {k: tf.constant(v) for k, v in catalogue.items()}
    self.n_items = int(len(sampling_probability))
    self.config = config
    has_content = len(self.catalogue) > 1
    self.item_id_dropout = config.item_id_dropout if has_content else 0.0
    prob = np.asarray(sampling_probability, np.float64)
    if config.mixed_negatives:
      # A candidate's chance to appear in a batch: as a positive or a uniform draw.
      prob = config.batch_size * prob + config.mixed_negatives / self.n_items
      prob = prob / prob.sum()
    self.log_q = tf.constant(np.maximum(prob, 1e-12), tf.float32)
    # Summed per replica and divided by the global batch in `compute_loss`, so
    # the gradients summed across replicas are the global-batch mean.
    self.task = tfrs.tasks.Retrieval(
        loss=tf.keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
        temperature=config.temperature,
        remove_accidental_hits=config.remove_accidental_hits)

  def candidate_features(self, indices: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Encoded features of the catalogue items at `indices` [N]."""
    return {k: tf.gather(v, indices) for k, v in self.catalogue.items()}

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """In-batch softmax loss of a batch of (user features, positive item index)."""
    query_inputs = {k: v for k, v in inputs.items() if k != "item_index"}
    if training and self.config.user_id_dropout > 0:
      drop = tf.random.uniform(tf.shape(query_inputs["user_id"])) < self.config.user_id_dropout
      query_inputs["user_id"] = tf.where(drop, tf.ones_like(query_inputs["user_id"]),
                                         query_inputs["user_id"])
    if training and self.config.history_dropout > 0:
      history = query_inputs["history"]
      hide = tf.random.uniform(tf.shape(history)) < self.config.history_dropout
      query_inputs["history"] = tf.where(hide, tf.zeros_like(history), history)
    queries = self.query_tower(query_inputs, training=training)
    candidates_index = inputs["item_index"]
    if training and self.config.mixed_negatives:
      extra = tf.random.uniform([self.config.mixed_negatives], 0, self.n_items, dtype=tf.int64)
      candidates_index = tf.concat([candidates_index, extra], axis=0)
    candidate_inputs = self.candidate_features(candidates_index)
    if training and self.item_id_dropout > 0:
      ids = candidate_inputs["item_id"]
      drop = tf.random.uniform(tf.shape(ids)) < self.item_id_dropout
      candidate_inputs["item_id"] = tf.where(drop, tf.ones_like(ids), ids)
    candidates = self.candidate_tower(candidate_inputs, training=training)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if training and self.config.cross_replica_negatives and replicas > 1:
      candidates, candidates_index = _gather_candidates(candidates, candidates_index)
    probability = (tf.gather(self.log_q, candidates_index)
                   if self.config.logq_correction else None)
    loss = self.task(queries, candidates, candidate_sampling_probability=probability,
                     candidate_ids=candidates_index, compute_metrics=False)
    global_batch = tf.cast(tf.shape(queries)[0] * replicas, loss.dtype)
    return loss / global_batch


def _gather_candidates(candidates: tf.Tensor, candidates_index: tf.Tensor):
  """All replicas' candidates, this replica's first (its positives stay on the diagonal)."""
  context = tf.distribute.get_replica_context()
  n_local = tf.shape(candidates)[0]
  shift = -tf.cast(context.replica_id_in_sync_group, tf.int32) * n_local
  gathered = tf.roll(context.all_gather(candidates, axis=0), shift, axis=0)
  gathered_index = tf.roll(context.all_gather(candidates_index, axis=0), shift, axis=0)
  return gathered, gathered_index


class QueryEncoder(tf.keras.layers.Layer):
  """Raw user features (`user_id`, `country`, `history` track ids) -> indices."""

  def __init__(self, vocabularies: Dict[str, Sequence[str]], user_features: Sequence[str],
               **kwargs):
    super().__init__(**kwargs)
    self.user_features = tuple(user_features)
    self.user_lookup = string_lookup(vocabularies["user_id"], "user_id_lookup")
    self.history_lookup = string_lookup(vocabularies["item_id"], "history_lookup")
    self.feature_lookups = {c: string_lookup(vocabularies.get(c, []), f"{c}_lookup")
                            for c in self.user_features}

  def call(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Encodes `user_id` [B], user features [B] and `history` [B, H] strings.

    History tracks the model never trained on (the OOV index 1) become padding
    (0): they are ignored by the pooling instead of adding the untrained OOV
    vector, so a history with unknown ids scores like the same history without
    them.
    """
    history = self.history_lookup(raw["history"])
    out = {"user_id": self.user_lookup(raw["user_id"]),
           "history": tf.where(tf.equal(history, 1), tf.zeros_like(history), history)}
    for column in self.user_features:
      out[column] = self.feature_lookups[column](raw[column])
    return out


class TwoTowerFamily(ModelFamily):
  """Two-tower retrieval plugged into the training pipeline."""

  name = "two_tower"
  config_class = TwoTowerConfig
  supports_parameter_server = True

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """`tiny` trains in seconds for tests; `default` is the measured setting."""
    return {"tiny": {"epochs": 3, "batch_size": 256, "embedding_dim": 32,
                     "layer_sizes": (64,), "history_length": 10, "top_k": 20,
                     "validation_users": 0},
            "default": {}}

  @classmethod
  def search_space(cls, hp) -> Dict[str, Any]:
    """Embedding and layer sizes, learning rate and optimizer, temperature and negatives,
    batch size (the in-batch negatives), history length and pooling, the id
    and history dropouts and the least plays for a track id of its own.

    Each default is the `default` preset's value, so a search's first trial
    (see `tfrec_music.tuning`) is the hand-tuned configuration.
    """
    d = cls.make_config("default", {})
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

  @classmethod
  def stream_train(cls, data_dir, config, job_dir, *, checkpoint_every=0, backup_dir=None):
    """`--stream`: materializes the Parquet shards once as TFRecords, then streams them.

    The TFRecord shards go to `<job_dir>/stream_shards` and are reused by a
    rerun on the same files (see `two_tower_stream.materialize`); training
    and evaluation (a sample of users, each user's last two plays held out)
    are `two_tower_stream.stream_fit`'s, the export its `stream_export`.
    """
    from tfrec_music.models import two_tower_stream  # pylint: disable=g-import-not-at-top
    shard_dir = io.join(job_dir, "stream_shards")
    manifest = two_tower_stream.materialize(data_dir, shard_dir, config.history_length,
                                            seed=config.seed)
    kept = {}
    summary = two_tower_stream.stream_fit(
        shard_dir, config, job_dir, checkpoint_every=checkpoint_every, backup_dir=backup_dir,
        exporter=lambda save_fn, _: kept.setdefault("save", save_fn) and None)
    summary["materialization"] = {k: manifest[k] for k in ("rows", "reused") if k in manifest}
    summary["materialization_reused"] = bool(manifest.get("reused"))
    summary["materialized_rows"] = dict(manifest["rows"])
    model = {k: v for k, v in summary.items()
             if k.count("/") >= 2 and isinstance(v, (int, float))}
    return {"model": model, "popularity": dict(summary["popularity"])}, summary, kept["save"]

  def __init__(self, config: TwoTowerConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    self.use_content = config.features == "all"
    vocabs = prepared.vocabularies
    users = prepared.users
    self.user_features = tuple(c for c in USER_FEATURES
                               if self.use_content and users is not None and c in users.columns
                               and c in vocabs)
    self.user_table = (users.set_index("user_id") if users is not None and self.user_features
                       else None)
    train_items = prepared.items[prepared.items["item_id"].isin(set(vocabs["item_id"]))]
    self.spec = ItemFeatureSpec.from_items(prepared.items, self.use_content)
    self.item_encoder = ItemEncoder(self.spec, vocabs, train_items, name="item_encoder")
    self.query_encoder = QueryEncoder(vocabs, self.user_features, name="query_encoder")
    self.catalogue = encode_catalogue(self.item_encoder, prepared.items)
    tf.keras.utils.set_random_seed(config.seed)
    item_embedding = tf.keras.layers.Embedding(len(vocabs["item_id"]) + 2, config.embedding_dim,
                                               name="item_id_embedding")
    self.candidate_tower = CandidateTower(
        self.spec, self.item_encoder.lookup_sizes(), self.item_encoder.text_vocab_sizes(),
        item_embedding, config.embedding_dim, config.layer_sizes, config.feature_dim,
        normalize=config.normalize, id_keep=self._id_keep(), name="candidate_tower")
    self.query_tower = QueryTower(
        len(vocabs["user_id"]) + 2,
        {c: len(vocabs[c]) + 2 for c in self.user_features}, item_embedding,
        config.embedding_dim, config.layer_sizes, config.feature_dim,
        normalize=config.normalize,
        history_content=self._history_content() if config.history_content else None,
        recency_length=config.history_length if config.history_pooling == "recency" else 0,
        name="query_tower")
    counts = prepared.item_train_counts.astype(np.float64)
    self.model = TwoTowerModel(self.query_tower, self.candidate_tower, self.catalogue,
                               counts / max(counts.sum(), 1.0), config)
    self.model.compile(optimizer=_optimizer(config))
    self._item_embeddings: Optional[np.ndarray] = None
    self.histories = {
        "valid": history_lib.last_items(prepared.train, config.history_length),
        "test": history_lib.last_items(pd.concat([prepared.train, prepared.valid]),
                                       config.history_length),
        "cold_user": history_lib.last_items(prepared.cold_user_history, config.history_length)}
    self.ignored_columns = self._ignored_columns()
    if any(self.ignored_columns.values()):
      logging.info("two_tower ignores columns it has no encoder for: %s", self.ignored_columns)
    self.fit_summary: Dict[str, Any] = {}

  def _id_keep(self) -> Optional[np.ndarray]:
    """[item vocab + 2] bool of the track ids the track tower embeds (see `item_id_min_count`)."""
    if not self.use_content or self.config.item_id_min_count <= 0:
      return None
    vocab = self.prepared.vocabularies["item_id"]
    counts = self.prepared.item_train_counts[self.prepared.item_index(vocab)]
    keep = np.ones(len(vocab) + 2, dtype=bool)
    keep[2:] = counts >= self.config.item_id_min_count
    return keep

  def _history_content(self) -> Dict[str, Tuple[np.ndarray, tf.keras.layers.Layer]]:
    """Track lookup index -> artist/album/genre index maps for history pooling."""
    vocab_rows = self.prepared.item_index(self.prepared.vocabularies["item_id"])
    out = {}
    for column in ("artist", "album", "genre"):
      if column in self.spec.categorical:
        mapping = np.zeros(len(vocab_rows) + 2, dtype=np.int64)
        mapping[2:] = self.catalogue[column][vocab_rows]
        out[column] = (mapping, self.candidate_tower.categorical[column])
    return out

  def _ignored_columns(self) -> Dict[str, list]:
    """Item and user columns present in the data that the towers do not read."""
    used_items = {"item_id", "tags"} | set(self.spec.categorical) | set(self.spec.text) \
        | set(self.spec.numeric) | ({TEXT_VECTOR_COLUMN} if self.spec.text_vector_dim else set())
    used_users = {"user_id"} | set(self.user_features)
    users = self.prepared.users
    return {"items": sorted(c for c in self.prepared.items.columns if c not in used_items),
            "users": sorted(c for c in (users.columns if users is not None else [])
                            if c not in used_users)}

  # ----------------------------------------------------------------- training
  def training_features(self) -> Dict[str, np.ndarray]:
    """Encoded training rows: user features, causal history and item index."""
    train = self.prepared.train
    vocabs = self.prepared.vocabularies
    features = {
        "user_id": lookup_indices(train["user_id"], vocabs["user_id"]),
        "history": self._training_history(train),
        "item_index": self.prepared.item_index(train["item_id"]).astype(np.int64)}
    for column in self.user_features:
      values = self.user_table[column].reindex(train["user_id"]).fillna("").to_numpy()
      features[column] = lookup_indices(values, vocabs[column])
    return features

  def _training_history(self, train: pd.DataFrame) -> np.ndarray:
    """[N, H] history of each training row (see `history_window`)."""
    vocab, length = self.prepared.vocabularies["item_id"], self.config.history_length
    window = self.config.history_window
    if window == "auto":
      return history_lib.training_history(train, vocab, length)
    if window == "causal":
      return history_lib.causal_history(train, vocab, length)
    items = lookup_indices(train["item_id"], vocab)
    return history_lib.others_window(train["user_id"].to_numpy(), items, length, pad=0)

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with early stopping on validation HR@10, keeping the best weights.

    The per-replica batch is `batch_size`; the dataset's (global) batch is
    `batch_size` x replicas. Checkpoints go to `<job_dir>/backup` every
    `self.checkpoint_every` steps (every epoch when 0), and a rerun of a
    killed job resumes from the last one (see `tfrec_music.fit_loop`).
    """
    config = self.config
    n_train = len(self.prepared.train)
    if config.batch_size > n_train:
      raise ValueError(f"`batch_size` = {config.batch_size} is larger than the {n_train} "
                       "training interactions. Use a smaller `--set batch_size=...`.")
    replicas = self.model.distribute_strategy.num_replicas_in_sync
    dataset = make_dataset(self.training_features(), config.batch_size * replicas, shuffle=True,
                           seed=config.seed,
                           drop_remainder=config.cross_replica_negatives and replicas > 1)
    log_dir = io.join(job_dir, "logs", "two_tower")
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch")

    def validate(epoch: int) -> float:
      self._item_embeddings = None
      return self._validation_hr(np.random.default_rng([config.seed, epoch]))

    summary = fit_with_validation(
        self.model, dataset, epochs=config.epochs, validate=validate,
        patience=config.early_stopping_patience, job_dir=job_dir, name="two_tower",
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, data=self.prepared.fingerprint),
        callbacks=[tensorboard],
        nan_advice="Lower the learning rate (`--set learning_rate=...`) or raise the "
                   "temperature.")
    self._item_embeddings = None
    summary["ignored_columns"] = self.ignored_columns
    summary["replicas"] = replicas
    self.fit_summary = summary
    self._write_projector(job_dir)
    return self.fit_summary

  def _validation_hr(self, rng: np.random.Generator) -> float:
    valid_users = self.prepared.valid["user_id"].to_numpy()
    n = self.config.validation_users
    subset = self.prepared
    if n and len(valid_users) > n:
      keep = set(rng.choice(valid_users, size=n, replace=False).tolist())
      subset = dataclasses.replace(self.prepared,
                                   valid=self.prepared.valid[self.prepared.valid["user_id"].isin(keep)])
    metrics = evaluate_scorer(self.scorer, subset, splits=("valid",), ks=(10,), cold_users=False,
                              lists=False)
    return float(metrics["valid/all/hr@10"])

  # ---------------------------------------------------------------- scoring
  def item_embeddings(self) -> np.ndarray:
    """[n_items, d] track vectors of the catalogue (cached until weights change)."""
    if self._item_embeddings is None:
      parts = []
      for start in range(0, self.prepared.n_items, 4096):
        index = tf.range(start, min(start + 4096, self.prepared.n_items), dtype=tf.int64)
        parts.append(self.candidate_tower(self.model.candidate_features(index)).numpy())
      self._item_embeddings = np.concatenate(parts)
    return self._item_embeddings

  def raw_query_features(self, user_ids: Sequence[str], split: str) -> Dict[str, np.ndarray]:
    """Raw user features at the time of `split` (history before it)."""
    user_ids = np.asarray(user_ids).astype(str)
    raw = {"user_id": user_ids.astype(object),
           "history": history_lib.history_matrix(user_ids, self.histories[split],
                                                 self.config.history_length)}
    for column in self.user_features:
      raw[column] = self.user_table[column].reindex(user_ids).fillna("").astype(str).to_numpy().astype(object)
    return raw

  def query_embeddings(self, user_ids: Sequence[str], split: str) -> np.ndarray:
    """[B, d] user vectors of `user_ids` with their history before `split`.

    Cold users of the `cold_user` split are not in the user vocabulary, so
    their ids map to the OOV bucket (as at serving time, and as the ids
    dropped during training) and they are served from history and country.
    """
    raw = self.raw_query_features(user_ids, split)
    encoded = self.query_encoder({k: tf.constant(v) for k, v in raw.items()})
    return self.query_tower(encoded).numpy()

  def scorer(self, split: str) -> Callable[[Sequence[str]], np.ndarray]:
    """Batched scorer for the evaluation protocol."""
    items = self.item_embeddings()

    def _score(user_ids):
      return self.query_embeddings(user_ids, split) @ items.T
    return _score

  def score_fn(self):
    """Scorer factory (split -> scorer)."""
    return self.scorer

  # ----------------------------------------------------------------- export
  def query_model(self) -> tf.keras.Model:
    """Raw user features -> query vectors (encoder + tower)."""
    encoder, tower = self.query_encoder, self.query_tower

    class _QueryModel(tf.keras.Model):

      def __init__(self):
        super().__init__(name="query_model")
        self.encoder, self.tower = encoder, tower

      def call(self, raw):
        return self.tower(self.encoder(raw))

      def get_config(self):
        return {"name": self.name}

    return _QueryModel()

  def query_signature(self) -> Dict[str, tf.TensorSpec]:
    """Raw query inputs besides `user_id`."""
    sig = {"history": tf.TensorSpec([None, None], tf.string, name="history")}
    for column in self.user_features:
      sig[column] = tf.TensorSpec([None], tf.string, name=column)
    return sig

  def save(self, directory: str) -> Dict[str, str]:
    """Exact-index SavedModel, ScaNN variant, both towers and the track vectors."""
    from tfrec_music.export import retrieval  # pylint: disable=g-import-not-at-top
    items = self.item_embeddings()
    k = min(self.config.top_k, self.prepared.n_items)
    if k < self.config.top_k:
      logging.warning("top_k=%d is larger than the catalogue (%d items): serving %d.",
                      self.config.top_k, self.prepared.n_items, k)
    popular_ids, popular_scores = PopularityModel.fit(self.prepared).top_k(k)
    known = np.asarray(self.prepared.vocabularies["user_id"])
    stored = self.raw_query_features(known, "test")
    stored.pop("user_id")
    query_model = self.query_model()
    # Everything played up to the test point, as the evaluation excludes.
    seen = history_lib.seen_matrix(known, pd.concat([self.prepared.train, self.prepared.valid]))
    for kind, path in (("exact", directory), ("scann", io.join(directory, "scann"))):
      module = retrieval.RetrievalServingModule(
          query_model, self.query_signature(), items, self.prepared.item_ids, kind, known,
          stored, popular_ids, popular_scores, k, stored_exclude=seen,
          max_exclusions=max(200, seen.shape[1]))
      retrieval.save_retrieval_module(module, path)
    self._save_towers(directory)
    metadata = {c: self.prepared.items[c].fillna("").astype(str).to_numpy()
                for c in ("title", "artist") if c in self.prepared.items.columns}
    retrieval.save_candidates(io.join(directory, "candidates"), self.prepared.item_ids,
                              items, metadata)
    return {
        "serving_default": "user_id [B] -> item_ids [B, k], scores [B, k], fallback [B] "
                           "(stored history of known users; popularity for unknown users)",
        "recommend": "user_id [B], history [B, H] (padded with ''), "
                     + "".join(f"{c} [B], " for c in self.user_features)
                     + "exclude [B, E] -> item_ids, scores, fallback",
        "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
        "query_tower/": "serving_default: raw user features -> embedding [B, d]",
        "candidate_tower/": "serving_default: raw track features -> embedding [B, d]",
        "candidates/": "item_ids.txt, embeddings.npy, metadata.tsv"}

  def _save_towers(self, directory: str) -> None:
    query_model = self.query_model()
    query_spec = dict(self.query_signature())
    query_spec["user_id"] = tf.TensorSpec([None], tf.string, name="user_id")

    @tf.function(input_signature=[query_spec])
    def serve_query(raw):
      return {"embedding": query_model(raw)}

    query_module = tf.Module()
    query_module.model = query_model
    tf.saved_model.save(query_module, io.join(directory, "query_tower"),
                        signatures={"serving_default": serve_query})
    encoder, tower = self.item_encoder, self.candidate_tower

    @tf.function(input_signature=[item_input_signature(self.spec)])
    def serve_candidate(raw):
      return {"embedding": tower(encoder(raw))}

    candidate_module = tf.Module()
    candidate_module.encoder, candidate_module.tower = encoder, tower
    tf.saved_model.save(candidate_module, io.join(directory, "candidate_tower"),
                        signatures={"serving_default": serve_candidate})

  def _write_projector(self, job_dir: str) -> None:
    """Track vectors in TensorBoard's embedding projector, labelled by title and artist."""
    write_item_projector(io.join(job_dir, "logs", "projector"), self.item_embeddings(),
                         self.prepared.items)


def _optimizer(config: TwoTowerConfig) -> tf.keras.optimizers.Optimizer:
  if config.optimizer == "adam":
    return tf.keras.optimizers.Adam(config.learning_rate)
  if config.optimizer == "adagrad":
    return tf.keras.optimizers.Adagrad(config.learning_rate)
  return tf.keras.optimizers.SGD(config.learning_rate)
