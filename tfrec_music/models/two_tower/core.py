"""The two-tower family in memory: towers, training, scoring, export.

`TwoTowerCore` is everything `TwoTowerFamily` does except `--stream`, so that
the streaming trainer (`two_tower.stream`) can build the very same towers
without importing the family that calls it.
"""

import dataclasses
import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.export.projector import write_item_projector
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models import history as history_lib
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.features import ItemEncoder
from tfrec_music.models.features import ItemFeatureSpec
from tfrec_music.models.features import TEXT_VECTOR_COLUMN
from tfrec_music.models.features import encode_catalogue
from tfrec_music.models.item_item import WEIGHT_COLUMN
from tfrec_music.models.item_item import raw_weights
from tfrec_music.models.towers import BAG_SUFFIX
from tfrec_music.models.towers import CandidateTower
from tfrec_music.models.towers import QueryTower
from tfrec_music.models.two_tower import config as config_lib
from tfrec_music.models.two_tower import serving
from tfrec_music.models.two_tower.config import TwoTowerConfig
from tfrec_music.models.two_tower.config import USER_FEATURES
from tfrec_music.models.two_tower.network import EXAMPLE_WEIGHT
from tfrec_music.models.two_tower.network import QueryEncoder
from tfrec_music.models.two_tower.network import TwoTowerModel
from tfrec_music.models.two_tower.network import optimizer
from tfrec_music.pipeline.dataset import make_dataset
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.prepare.prepared import PreparedData


def play_weights(train: pd.DataFrame, transform: str) -> Optional[np.ndarray]:
  """[N] float32 loss weight of each training row (`play_weight`), mean 1; None: unweighted.

  `log1p`: log(1 + the row's `weight`), the play count of its (user, track)
  pair as the item-item families read it (`item_item.raw_weights`); None
  when the rows have no `weight` column, `transform` is `none`, or every
  weight is 0.
  """
  if transform == "none" or WEIGHT_COLUMN not in train.columns:
    return None
  weights = np.log1p(raw_weights(train).astype(np.float64))
  mean = weights.mean() if len(weights) else 0.0
  return (weights / mean).astype(np.float32) if mean > 0 else None


class TwoTowerCore(ModelFamily):
  """Two-tower retrieval in memory (`TwoTowerFamily` adds `--stream`)."""

  name = "two_tower"
  config_class = TwoTowerConfig
  config_module = config_lib
  supports_parameter_server = True
  # The export excludes every training + validation track of a known user (what the
  # evaluation excludes); False: only the stored history (the streamed export).
  exclude_seen_rows = True

  @classmethod
  def search_space(cls, hp) -> Dict[str, Any]:
    """Embedding and layer sizes, learning rate and optimizer, temperature and negatives,
    batch size (the in-batch negatives), history length and pooling, the id
    and history dropouts and the least plays for a track id of its own.

    Each default is the `default` preset's value, so a search's first trial
    (see `tfrec_music.search`) is the hand-tuned configuration.
    """
    d = cls.make_config("default", {})
    return config_lib.search_space(hp, d)

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
    self.use_history = config.history_length > 0
    self.query_encoder = QueryEncoder(vocabs, self.user_features, history=self.use_history,
                                      name="query_encoder")
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
        use_history=self.use_history, name="query_tower")
    counts = prepared.item_train_counts.astype(np.float64)
    self.model = TwoTowerModel(self.query_tower, self.candidate_tower, self._model_catalogue(),
                               counts / max(counts.sum(), 1.0), config)
    self.compile(len(prepared.train))
    self._item_embeddings: Optional[np.ndarray] = None
    self.histories = {
        "valid": history_lib.last_items(prepared.train, config.history_length),
        "test": history_lib.last_items(pd.concat([prepared.train, prepared.valid]),
                                       config.history_length),
        "cold_user": history_lib.last_items(prepared.cold_user_history, config.history_length),
    } if self.use_history else {}
    self.ignored_columns = self._ignored_columns()
    if any(self.ignored_columns.values()):
      logging.info("two_tower ignores columns it has no encoder for: %s", self.ignored_columns)
    self.fit_summary: Dict[str, Any] = {}

  def compile(self, n_train: int) -> None:
    """Compiles the model with the optimizer sized for `n_train` training rows an epoch.

    The learning-rate decay and the weight average count steps; an epoch is
    `n_train` rows in global batches of `batch_size` x replicas.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    steps = -(-int(n_train) // (self.config.batch_size * replicas))
    self.model.compile(optimizer=optimizer(self.config, steps_per_epoch=steps))

  def _id_keep(self) -> Optional[np.ndarray]:
    """[item vocab + 2] bool of the track ids the track tower embeds (see `item_id_min_count`)."""
    if not self.use_content or self.config.item_id_min_count <= 0:
      return None
    vocab = self.prepared.vocabularies["item_id"]
    counts = self.prepared.item_train_counts[self.prepared.item_index(vocab)]
    keep = np.ones(len(vocab) + 2, dtype=bool)
    keep[2:] = counts >= self.config.item_id_min_count
    return keep

  def _model_catalogue(self) -> Dict[str, np.ndarray]:
    """The catalogue the model gathers candidates from: small bag features as dense bags.

    A tags or text column with a dense bag (`CandidateTower.dense_bags`) is
    given as the bag only; the export's track tower still reads the ids.
    """
    bags = self.candidate_tower.dense_bags(self.catalogue)
    kept = {k: v for k, v in self.catalogue.items() if k + BAG_SUFFIX not in bags}
    return {**kept, **bags}

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
    """Encoded training rows: user features, causal history (if used) and item index."""
    train = self.prepared.train
    vocabs = self.prepared.vocabularies
    features = {
        "user_id": lookup_indices(train["user_id"], vocabs["user_id"]),
        "item_index": self.prepared.item_index(train["item_id"]).astype(np.int64)}
    if self.use_history:
      features["history"] = self._training_history(train)
    for column in self.user_features:
      values = self.user_table[column].reindex(train["user_id"]).fillna("").to_numpy()
      features[column] = lookup_indices(values, vocabs[column])
    weights = play_weights(train, self.config.play_weight)
    if weights is not None:
      features[EXAMPLE_WEIGHT] = weights
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
    """Raw user features at the time of `split` (history before it, if used)."""
    user_ids = np.asarray(user_ids).astype(str)
    raw = {"user_id": user_ids.astype(object)}
    if self.use_history:
      raw["history"] = history_lib.history_matrix(user_ids, self.histories[split],
                                                  self.config.history_length)
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
    return serving.query_model(self.query_encoder, self.query_tower)

  def query_signature(self) -> Dict[str, tf.TensorSpec]:
    """Raw query inputs besides `user_id`."""
    return serving.query_signature(self.user_features, history=self.use_history)

  def save(self, directory: str) -> Dict[str, str]:
    """Exact-index SavedModel, ScaNN variant, both towers and the track vectors."""
    return serving.save_export(self, directory)

  def _write_projector(self, job_dir: str) -> None:
    """Track vectors in TensorBoard's embedding projector, labelled by title and artist."""
    write_item_projector(io.join(job_dir, "logs", "projector"), self.item_embeddings(),
                         self.prepared.items)
