"""Deep & Cross Network v2 ranking (`--model dcn`): predicted rating of a (user, track) pair.

The recommender idea: a rating depends on crossings of features (this user's
taste x this track's genre, artist x audio), which a plain MLP learns
slowly. DCN v2 (Wang et al., WWW 2021) feeds the concatenated embeddings
x0 of the user (id, country) and the track (id, album, artist, genre,
parent genre, genre level, mood, normalized audio features) to cross layers
`x_{l+1} = x0 * (W x_l + b) + x_l` (`tfrs.layers.dcn.Cross`, optionally
low-rank: W = U V with `projection_dim`) and a deep network, stacked
(cross -> deep) or in parallel (cross || deep), then one output unit.

- `--labels explicit`: the output is the rating, trained with MSE
  (`tfrs.tasks.Ranking`), evaluated with RMSE / MSE / MAE beside the global
  mean, the biased baseline alpha + beta_u + beta_i and biased MF on the same
  split.
- `--labels implicit`: every interaction is a positive, `--negatives`
  uniformly sampled tracks per positive are negatives; sigmoid
  cross-entropy, evaluated with AUC and log loss.

Split: a seeded 80/10/10 ratio split of the rating rows (`prepare_overrides`).
Temporal leave-one-out would test on one (the last) rating per user and
hold 5% of users out entirely; for rating prediction the question is "how
well are held-out ratings of known users and tracks predicted", so the rows
are split at random and no users are held out (`cold_user_share=0`). The
k-core filter (default 5) still runs first, so every user and track has at
least 5 ratings before the split and almost all test users and tracks have
training ratings; the few that do not are scored through the OOV bucket
(their count is reported as `test/all/unseen_user_rows` and
`test/all/unseen_item_rows`).

Serving (`saved_models/dcn/<version>/`): `serving_default` takes raw user
and track features (strings and numbers; lookups inside) and returns the
predicted rating (`probability` for implicit labels); `score_ids` takes only
`user_id` and `item_id` and reads the track's features from the catalogue
stored in the model. Both also return `fallback` [B] (bool). Serving
fallbacks, all defined inputs rather than errors:

- Unknown or empty `user_id` or `item_id`: the network's OOV rows never
  trained, so the row is not scored by it; it gets the biased baseline
  alpha + beta_u + beta_i fitted on the same training split (unknown user:
  alpha + beta_i; unknown track: alpha + beta_u; both: alpha, the global
  mean), clipped to the rating range, with `fallback` true. Implicit labels:
  probability 1 / (1 + negatives), the training share of positives. The
  Python scorer (`predict_encoded`, hence the reported metrics) applies the
  same rule.
- Empty strings in the other categorical features (an empty genre, an
  unknown country) map to the missing-value index; NaN numbers sit at the
  training mean.
- Feature columns absent from a request: `serving_default` takes every raw
  feature (a request without one is rejected naming the inputs); send ""
  (or NaN) for unknown values, or call `score_ids` with ids only, which
  reads the user's and the track's stored features ("" / NaN for unknown ids).
- Duplicate rows in a batch get identical outputs (rows are independent).

Streaming (`DCNFamily.stream_run`): an explicit-rating DCN trained from
Parquet shards larger than memory, exported with the same signatures.
"""

import argparse
import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music import io
from tfrec_music.data.tables import AUDIO_FEATURES
from tfrec_music.evaluation.rating import binary_metrics
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.rating_baselines import baseline_scorers
from tfrec_music.models.rating_baselines import evaluate_rating_scorers
from tfrec_music.models.rating_baselines import fit_rating_baselines
from tfrec_music.pipeline.lookups import id_table
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.pipeline.lookups import string_lookup
from tfrec_music.prepare.prepared import PreparedData

ITEM_CATEGORICAL = ("album", "artist", "genre", "parent_genre", "genre_level", "mood")
USER_CATEGORICAL = ("country",)
RATING_TABLE_KEYS = ("test/all/rmse", "test/all/mse", "test/all/mae", "test/cold/rmse",
                     "test/warm/rmse")
BINARY_TABLE_KEYS = ("test/all/auc", "test/all/log_loss", "test/all/accuracy")


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


# --------------------------------------------------------------------------
# Features.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RankingFeatureSpec:
  """The raw features a DCN reads.

  Attributes:
    user_categorical: User columns besides `user_id` (e.g. `country`).
    item_categorical: Track columns besides `item_id` (album, artist, ...).
    numeric: Numeric track columns (audio features).
  """

  user_categorical: Tuple[str, ...] = ()
  item_categorical: Tuple[str, ...] = ()
  numeric: Tuple[str, ...] = ()

  @classmethod
  def from_tables(cls, items: Optional[pd.DataFrame],
                  users: Optional[pd.DataFrame]) -> "RankingFeatureSpec":
    """Whatever of the known columns the tables have."""
    item_cols = set(items.columns) if items is not None else set()
    user_cols = set(users.columns) if users is not None else set()
    return cls(user_categorical=tuple(c for c in USER_CATEGORICAL if c in user_cols),
               item_categorical=tuple(c for c in ITEM_CATEGORICAL if c in item_cols),
               numeric=tuple(c for c in AUDIO_FEATURES if c in item_cols))

  @property
  def user_columns(self) -> Tuple[str, ...]:
    """`user_id` and the user features."""
    return ("user_id",) + self.user_categorical

  @property
  def item_columns(self) -> Tuple[str, ...]:
    """`item_id`, the categorical and the numeric track features."""
    return ("item_id",) + self.item_categorical + self.numeric

  @property
  def categorical(self) -> Tuple[str, ...]:
    """Every string feature, in embedding order."""
    return ("user_id",) + self.user_categorical + ("item_id",) + self.item_categorical

  def as_dict(self) -> Dict[str, List[str]]:
    """JSON-ready description."""
    return {k: list(v) for k, v in dataclasses.asdict(self).items()}


def _tokens(values) -> List[str]:
  return sorted({str(v) for v in values if v is not None and str(v) not in ("", "nan")})


def ranking_vocabularies(spec: RankingFeatureSpec, train: pd.DataFrame, items: pd.DataFrame,
                         users: Optional[pd.DataFrame],
                         base: Optional[Dict[str, List[str]]] = None) -> Dict[str, List[str]]:
  """Vocabularies of every categorical feature, from training rows only.

  `base` (the vocabularies of `prepare`) is reused where it has the feature.
  """
  vocabs = dict(base or {})
  vocabs.setdefault("user_id", _tokens(train["user_id"].unique()))
  vocabs.setdefault("item_id", _tokens(train["item_id"].unique()))
  seen_items = items[items["item_id"].isin(set(vocabs["item_id"]))]
  for column in spec.item_categorical:
    if column not in vocabs:
      vocabs[column] = _tokens(seen_items[column].unique())
  if users is not None:
    seen_users = users[users["user_id"].isin(set(vocabs["user_id"]))]
    for column in spec.user_categorical:
      if column not in vocabs:
        vocabs[column] = _tokens(seen_users[column].unique())
  return vocabs


def numeric_statistics(spec: RankingFeatureSpec,
                       train_items: pd.DataFrame) -> Tuple[np.ndarray, np.ndarray]:
  """(mean [F], std [F]) of the numeric features over training tracks (std 1 if flat)."""
  if not spec.numeric:
    return np.zeros(0, np.float32), np.ones(0, np.float32)
  values = train_items[list(spec.numeric)].to_numpy(np.float64)
  mean = np.nan_to_num(np.nanmean(values, axis=0)) if len(values) else np.zeros(len(spec.numeric))
  std = np.nan_to_num(np.nanstd(values, axis=0)) if len(values) else np.ones(len(spec.numeric))
  return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _string_column(frame: pd.DataFrame, column: str) -> np.ndarray:
  values = frame[column]
  if values.dtype.kind in "iu":
    values = values.astype("Int64")
  return values.astype(object).where(values.notna(), "").astype(str).to_numpy().astype(object)


def raw_item_table(items: pd.DataFrame, spec: RankingFeatureSpec) -> Dict[str, np.ndarray]:
  """Catalogue columns in the encoder's raw format (strings; float32 with NaN)."""
  out = {"item_id": items["item_id"].astype(str).to_numpy().astype(object)}
  for column in spec.item_categorical:
    out[column] = _string_column(items, column)
  for column in spec.numeric:
    out[column] = items[column].to_numpy(np.float32)
  return out


def raw_user_table(user_ids: Sequence[str], users: Optional[pd.DataFrame],
                   spec: RankingFeatureSpec) -> Dict[str, np.ndarray]:
  """Raw user features of `user_ids` ("" where the users table has none)."""
  ids = np.asarray(user_ids).astype(str)
  out = {"user_id": ids.astype(object)}
  if spec.user_categorical:
    table = users.drop_duplicates("user_id").set_index("user_id")
    for column in spec.user_categorical:
      values = table[column].reindex(ids)
      out[column] = values.astype(object).where(values.notna(), "").astype(str).to_numpy().astype(object)
  return out


class RankingEncoder(tf.keras.layers.Layer):
  """Raw features -> lookup indices and normalized numbers.

  Index conventions of `tfrec_music.pipeline.lookups`: "" -> 0 (missing),
  unseen -> 1 (OOV), tokens from 2. Numeric NaN sits at the training mean.

  Args:
    spec: Features to encode.
    vocabularies: Feature -> tokens (training split only).
    numeric_mean: [F] training means.
    numeric_std: [F] training standard deviations.
  """

  def __init__(self, spec: RankingFeatureSpec, vocabularies: Dict[str, List[str]],
               numeric_mean: np.ndarray, numeric_std: np.ndarray, **kwargs):
    super().__init__(**kwargs)
    self.spec = spec
    self.lookups = {c: string_lookup(vocabularies.get(c, []), f"{c}_lookup")
                    for c in spec.categorical}
    self.numeric_mean = tf.constant(np.asarray(numeric_mean, np.float32))
    self.numeric_std = tf.constant(np.asarray(numeric_std, np.float32))

  def vocab_sizes(self) -> Dict[str, int]:
    """Lookup size (mask + OOV + tokens) of each categorical feature."""
    return {c: int(layer.vocabulary_size()) for c, layer in self.lookups.items()}

  def encode(self, raw: Dict[str, tf.Tensor], columns: Sequence[str]) -> Dict[str, tf.Tensor]:
    """Encodes the named raw columns (numeric ones stacked into `numeric` [B, F])."""
    out = {c: self.lookups[c](raw[c]) for c in columns if c in self.lookups}
    numeric = [c for c in self.spec.numeric if c in columns]
    if numeric:
      values = tf.stack([tf.cast(raw[c], tf.float32) for c in numeric], axis=1)
      values = tf.where(tf.math.is_nan(values), self.numeric_mean, values)
      out["numeric"] = (values - self.numeric_mean) / self.numeric_std
    return out

  def call(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Encodes a batch of every raw feature: strings [B], numbers [B]."""
    return self.encode(raw, self.spec.user_columns + self.spec.item_columns)


def raw_signature(spec: RankingFeatureSpec) -> Dict[str, tf.TensorSpec]:
  """TensorSpecs of the raw serving inputs."""
  sig = {c: tf.TensorSpec([None], tf.string, name=c) for c in spec.categorical}
  for c in spec.numeric:
    sig[c] = tf.TensorSpec([None], tf.float32, name=c)
  return sig


# --------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------


class DCNRanker(tf.keras.Model):
  """Encoded features -> one output per row ([B] rating or logit).

  Args:
    vocab_sizes: Categorical feature -> lookup size.
    n_numeric: Number of numeric features F.
    config: `DCNConfig`.
    output_bias: Initial output bias (the training mean rating, so training
      starts from the global-mean predictor).
  """

  def __init__(self, vocab_sizes: Dict[str, int], n_numeric: int, config: DCNConfig,
               output_bias: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.feature_names = tuple(vocab_sizes)
    self.n_numeric = n_numeric
    self.structure = config.structure
    self.l2 = config.l2
    self.embeddings = {c: tf.keras.layers.Embedding(n, config.embedding_dim, name=f"{c}_embedding")
                       for c, n in vocab_sizes.items()}
    projection = config.projection_dim or None
    self.cross = [tfrs.layers.dcn.Cross(projection_dim=projection,
                                        kernel_initializer="glorot_uniform",
                                        name=f"cross_{k}")
                  for k in range(config.cross_layers)]
    self.deep = [tf.keras.layers.Dense(n, activation="relu", name=f"deep_{k}")
                 for k, n in enumerate(config.deep_layers)]
    self.dropout = (tf.keras.layers.Dropout(config.dropout, seed=config.seed)
                    if config.dropout > 0 else None)
    self.out = tf.keras.layers.Dense(
        1, name="output", bias_initializer=tf.keras.initializers.Constant(output_bias))

  def _deep(self, x, training):
    for layer in self.deep:
      x = layer(x)
      if self.dropout is not None:
        x = self.dropout(x, training=training)
    return x

  def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Encoded features (ints [B], `numeric` [B, F]) -> [B] outputs.

    An optional `dense` [B, P] input (numbers the caller computed per row,
    e.g. the cascade's history features) joins x0 beside the numeric ones;
    the plain DCN never passes it.
    """
    parts = [self.embeddings[c](features[c]) for c in self.feature_names]
    if training and self.l2 > 0:
      self.add_loss(self.l2 * tf.add_n([tf.reduce_sum(tf.square(p)) for p in parts])
                    / tf.cast(tf.shape(parts[0])[0], tf.float32))
    if self.n_numeric:
      parts.append(features["numeric"])
    if "dense" in features:
      parts.append(tf.cast(features["dense"], tf.float32))
    x0 = tf.concat(parts, axis=1)
    x = x0
    for layer in self.cross:
      x = layer(x0, x)
    if self.structure == "stacked":
      x = self._deep(x, training)
    else:
      x = tf.concat([x, self._deep(x0, training)], axis=1) if self.deep else x
    return tf.squeeze(self.out(x), axis=1)

  def get_config(self):
    """Rebuilt from the family config; SavedModels carry the weights."""
    return {"name": self.name}


class DCNModel(tfrs.Model):
  """The training model: ranker plus the ranking task (MSE or sigmoid cross-entropy)."""

  def __init__(self, ranker: DCNRanker, labels: str):
    super().__init__()
    self.ranker = ranker
    self.labels = labels
    if labels == "explicit":
      self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())
    else:
      self.task = tfrs.tasks.Ranking(
          loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Loss of a batch of encoded features with a `label` [B]."""
    features = {k: v for k, v in inputs.items() if k != "label"}
    predictions = self.ranker(features, training=training)
    loss = self.task(labels=inputs["label"], predictions=predictions, compute_metrics=False)
    return loss + tf.add_n(self.ranker.losses) if self.ranker.losses else loss


def epoch_batches(draw: Callable[[int], Dict[str, np.ndarray]], steps: int,
                  epoch_of: Callable[[], int], seed: int,
                  signature: Dict[str, tf.TensorSpec]) -> tf.data.Dataset:
  """Exactly `steps` batches per epoch of the rows `draw(epoch)` returns, reshuffled each epoch.

  Keras' `BackupAndRestore` resumes mid-epoch only when the number of steps
  per epoch is known, so the rows are cut into exactly `steps` near-equal
  batches (`np.array_split`) whatever their count that epoch (hard negatives
  that hit a user's own track are dropped, so the count varies a little).
  Rows are sliced from the arrays on demand: no copy is made, which matters
  when implicit labels draw millions of fresh negatives every epoch.

  Args:
    draw: epoch -> feature arrays [N, ...] with a `label` [N].
    steps: Batches per epoch.
    epoch_of: Which epoch an iteration is for, read when the iteration starts
      (the optimizer's step count // `steps`: after a resumed run restored
      its counters, the resumed epoch; so the rows and order depend on the
      epoch, not on how many times the run was started).
    seed: Shuffle seed (plus the epoch).
    signature: Feature name -> `tf.TensorSpec` of one batch.

  Returns:
    A `tf.data.Dataset` of known cardinality `steps`.
  """

  def _batches():
    epoch = int(epoch_of())
    features = draw(epoch)
    n = len(features["label"])
    order = np.random.default_rng(seed + epoch).permutation(n)
    for rows in np.array_split(order, steps):
      rows = np.sort(rows)
      yield {k: v[rows] for k, v in features.items()}

  dataset = tf.data.Dataset.from_generator(_batches, output_signature=signature)
  return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


def feature_signature(features: Dict[str, np.ndarray]) -> Dict[str, tf.TensorSpec]:
  """`tf.TensorSpec`s of batches of `features` (any number of rows)."""
  return {k: tf.TensorSpec((None,) + v.shape[1:], tf.as_dtype(v.dtype))
          for k, v in features.items()}


class _Throughput(tf.keras.callbacks.Callback):
  """Training steps and seconds of this `fit` (validation excluded; a resumed run counts
  only the steps it ran)."""

  def __init__(self):
    super().__init__()
    self.steps = 0
    self.seconds = 0.0
    self._start_step = 0
    self._epoch_start = 0.0
    self._last_batch = None

  def on_train_begin(self, logs=None):
    self._start_step = int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start, self._last_batch = time.perf_counter(), None

  def on_train_batch_end(self, batch, logs=None):
    self._last_batch = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    # Runs after the validation callback: time up to the last batch only.
    if self._last_batch is not None:
      self.seconds += self._last_batch - self._epoch_start

  def on_train_end(self, logs=None):
    self.steps = int(self.model.optimizer.iterations.numpy()) - self._start_step


def build_ranker(encoder: RankingEncoder, config: DCNConfig, output_bias: float) -> DCNRanker:
  """A `DCNRanker` sized for `encoder`'s vocabularies."""
  tf.keras.utils.set_random_seed(config.seed)
  return DCNRanker(encoder.vocab_sizes(), len(encoder.spec.numeric), config, output_bias,
                   name="dcn_ranker")


def optimizer(config: DCNConfig) -> tf.keras.optimizers.Optimizer:
  """Adam at the configured rate."""
  return tf.keras.optimizers.Adam(config.learning_rate)


def check_finite(loss: float, epoch: int) -> None:
  """Raises FloatingPointError with advice when training diverged."""
  if not np.isfinite(loss):
    raise FloatingPointError(
        f"DCN training loss became {loss} at epoch {epoch}. Lower the learning rate "
        "(`--learning-rate`) or the number of cross layers.")


# --------------------------------------------------------------------------
# Serving.
# --------------------------------------------------------------------------


class DCNServingModule(tf.Module):
  """Raw (user, track) features -> predicted rating (or click probability).

  Args:
    encoder: `RankingEncoder`.
    ranker: Trained `DCNRanker`.
    labels: `explicit` or `implicit`.
    items: Raw catalogue features (`raw_item_table`), for `score_ids`.
    users: Raw features of known users (`raw_user_table`), for `score_ids`.
    rating_range: (low, high) clip of predicted ratings (explicit).
    fallback: `FallbackBiases` for rows whose user or track id is unknown
      (default: zero biases, offset 0).
  """

  def __init__(self, encoder: RankingEncoder, ranker: DCNRanker, labels: str,
               items: Dict[str, np.ndarray], users: Dict[str, np.ndarray],
               rating_range: Tuple[float, float] = (-np.inf, np.inf),
               fallback: Optional["FallbackBiases"] = None):
    super().__init__()
    self.encoder, self.ranker, self.labels = encoder, ranker, labels
    self.spec = encoder.spec
    sizes = encoder.vocab_sizes()
    fallback = fallback or FallbackBiases(0.0, np.zeros(sizes["user_id"]),
                                          np.zeros(sizes["item_id"]))
    self.fallback_offset = tf.constant(float(fallback.offset), tf.float32)
    self.fallback_user = tf.constant(np.asarray(fallback.user, np.float32))
    self.fallback_item = tf.constant(np.asarray(fallback.item, np.float32))
    self.low = tf.constant(float(rating_range[0]), tf.float32)
    self.high = tf.constant(float(rating_range[1]), tf.float32)
    self.item_table = id_table(items["item_id"])
    self.items = {c: tf.constant(_with_missing(v)) for c, v in items.items() if c != "item_id"}
    self.user_table = id_table(users["user_id"])
    self.users = {c: tf.constant(_with_missing(v)) for c, v in users.items() if c != "user_id"}

    @tf.function(input_signature=[raw_signature(self.spec)])
    def serve(raw):
      return self._predict(raw)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None], tf.string, name="item_id")])
    def score_ids(user_id, item_id):
      return self._predict(self.features_from_ids(user_id, item_id))

    self.serve = serve
    self.score_ids = score_ids

  def features_from_ids(self, user_id: tf.Tensor, item_id: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Raw features of (user, track) pairs from the stored tables (unknown: missing)."""
    raw = {"user_id": user_id, "item_id": item_id}
    for ids, table, stored in ((user_id, self.user_table, self.users),
                               (item_id, self.item_table, self.items)):
      if not stored:
        continue
      # The stored arrays end with a "missing" row, used for unknown ids.
      missing = tf.cast(tf.shape(next(iter(stored.values())))[0] - 1, tf.int64)
      rows = table.lookup(ids)
      rows = tf.where(rows < 0, missing, rows)
      for column, values in stored.items():
        raw[column] = tf.gather(values, rows)
    return raw

  def _predict(self, raw: Dict[str, tf.Tensor],
               extra: Optional[Dict[str, tf.Tensor]] = None) -> Dict[str, tf.Tensor]:
    """Predictions of raw rows; `extra`: inputs the caller already encoded (the
    cascade's history features), joined to the encoded features."""
    encoded = self.encoder(raw)
    if extra:
      encoded.update(extra)
    out = self.ranker(encoded)
    user, item = encoded["user_id"], encoded["item_id"]
    # Lookup index 0 is "" and 1 the OOV bucket: ids the network never trained on.
    fallback = (user < 2) | (item < 2)
    base = (self.fallback_offset + tf.gather(self.fallback_user, user)
            + tf.gather(self.fallback_item, item))
    out = tf.where(fallback, base, out)
    if self.labels == "explicit":
      return {"rating": tf.clip_by_value(out, self.low, self.high), "fallback": fallback}
    return {"probability": tf.sigmoid(out), "logit": out, "fallback": fallback}

  def signatures(self) -> Dict[str, Callable]:
    """`serving_default` (raw features) and `score_ids` (ids only)."""
    return {"serving_default": self.serve, "score_ids": self.score_ids}


@dataclasses.dataclass(frozen=True)
class FallbackBiases:
  """What a (user, track) row with an unknown or empty user or track id gets.

  The network's OOV embeddings never trained (every training id is in the
  vocabulary), so such rows are not sent through it; they get
  `offset + user[user index] + item[item index]` instead, indexed like the
  lookups (index 0 = "", 1 = OOV, both 0).

  Attributes:
    offset: Explicit labels: the biased baseline's global mean alpha.
      Implicit labels: the logit of the training share of positives.
    user: [user lookup size] biases beta_u of known users (0 for "" and OOV).
    item: [track lookup size] biases beta_i of known tracks (0 for "" and OOV).
  """

  offset: float
  user: np.ndarray
  item: np.ndarray

  def apply(self, features: Dict[str, np.ndarray], out: np.ndarray) -> np.ndarray:
    """[N] `out` with the fallback where an encoded row's user or track id is unknown."""
    user, item = np.asarray(features["user_id"]), np.asarray(features["item_id"])
    unknown = (user < 2) | (item < 2)
    if not unknown.any():
      return out
    return np.where(unknown, self.offset + self.user[user] + self.item[item], out)


def _with_missing(values: np.ndarray) -> np.ndarray:
  """Appends the missing value ("" or NaN) as the last row."""
  values = np.asarray(values)
  if values.dtype.kind in "OUS":
    return np.append(values.astype(str), "").astype(object)
  return np.append(values.astype(np.float32), np.float32(np.nan))


# --------------------------------------------------------------------------
# The family.
# --------------------------------------------------------------------------


class DCNFamily(ModelFamily):
  """DCN v2 rating (or click) prediction plugged into the training pipeline."""

  name = "dcn"
  config_class = DCNConfig
  table_keys = RATING_TABLE_KEYS
  # Random 80/10/10 split of rating rows, no held-out users (see the module doc).
  prepare_overrides = {"split": "ratio", "ratios": (0.8, 0.1, 0.1), "cold_user_share": 0.0}
  # Tuning minimizes the validation RMSE (explicit labels; see `validation_metrics`).
  objective = ("valid/all/rmse", "min")

  @classmethod
  def objective_for(cls, config: DCNConfig) -> Tuple[str, str]:
    """Validation RMSE for ratings; validation AUC for implicit labels."""
    return ("valid/all/auc", "max") if config.labels == "implicit" else cls.objective

  @classmethod
  def search_space(cls, hp) -> Dict[str, Any]:
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

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """`tiny` trains in seconds for tests; `default` is the measured setting."""
    return {"tiny": {"epochs": 4, "batch_size": 256, "embedding_dim": 8,
                     "deep_layers": (32,), "baseline_mf_dim": 4},
            "default": {}}

  @classmethod
  def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
    """DCN flags; each `dest` is a `DCNConfig` field."""
    group.add_argument("--labels", choices=("explicit", "implicit"), default=None,
                       help="explicit: ratings with MSE; implicit: plays plus sampled "
                            "negatives with sigmoid cross-entropy.")
    group.add_argument("--cross-layers", dest="cross_layers", type=int, default=None,
                       help="Number of cross layers.")
    group.add_argument("--projection-dim", dest="projection_dim", type=int, default=None,
                       help="Low-rank size of the cross layers (0: full rank).")
    group.add_argument("--deep-layers", dest="deep_layers", type=_int_list, default=None,
                       help="Deep network sizes, comma-separated, e.g. 128,64 ('' for none).")
    group.add_argument("--structure", choices=("stacked", "parallel"), default=None,
                       help="Cross network then deep network, or both side by side.")
    group.add_argument("--negatives", type=int, default=None,
                       help="Sampled negatives per positive (implicit labels).")

  def __init__(self, config: DCNConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    if config.labels == "explicit" and "rating" not in prepared.train.columns:
      raise ValueError("`--labels explicit` needs a `rating` column in the interactions; "
                       "this data has none. Use `--labels implicit`.")
    items, users = prepared.items, prepared.users
    self.spec = RankingFeatureSpec.from_tables(items, users)
    self.vocabs = ranking_vocabularies(self.spec, prepared.train, items, users,
                                       prepared.vocabularies)
    train_items = items[items["item_id"].isin(set(self.vocabs["item_id"]))]
    mean, std = numeric_statistics(self.spec, train_items)
    self.encoder = RankingEncoder(self.spec, self.vocabs, mean, std, name="ranking_encoder")
    if config.labels == "explicit":
      ratings = prepared.train["rating"].to_numpy(np.float64)
      self.rating_range = (float(ratings.min()), float(ratings.max()))
      bias = float(ratings.mean())
    else:
      self.rating_range = (0.0, 1.0)
      bias = 0.0
    self.ranker = build_ranker(self.encoder, config, bias)
    self.model = DCNModel(self.ranker, config.labels)
    self.model.compile(optimizer=optimizer(config))
    self.raw_items = raw_item_table(items, self.spec)
    self.encoded_items = self._encode(self.raw_items, self.spec.item_columns)
    self.fit_summary: Dict[str, Any] = {}
    self._baselines = None
    self._fallback: Optional[FallbackBiases] = None

  # ----------------------------------------------------------------- encoding
  def _encode(self, raw: Dict[str, np.ndarray], columns: Sequence[str],
              batch_size: int = 8192) -> Dict[str, np.ndarray]:
    n = len(raw[columns[0]])
    parts: Dict[str, List[np.ndarray]] = {}
    for start in range(0, max(n, 1), batch_size):
      batch = {c: tf.constant(raw[c][start:start + batch_size]) for c in columns}
      for k, v in self.encoder.encode(batch, columns).items():
        parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}

  def pair_features(self, user_ids: Sequence[str], item_index: np.ndarray) -> Dict[str, np.ndarray]:
    """Encoded features of (user, catalogue item) pairs."""
    raw_users = raw_user_table(user_ids, self.prepared.users, self.spec)
    features = {"user_id": lookup_indices(raw_users["user_id"], self.vocabs["user_id"])}
    for column in self.spec.user_categorical:
      features[column] = lookup_indices(raw_users[column], self.vocabs[column])
    for key, values in self.encoded_items.items():
      features[key] = values[item_index]
    return features

  def _rows(self, frame: pd.DataFrame) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    return (self.pair_features(frame["user_id"].to_numpy(),
                               self.prepared.item_index(frame["item_id"])),
            self.prepared.item_index(frame["item_id"]))

  def _implicit_rows(self, frame: pd.DataFrame, seed: int) -> Dict[str, np.ndarray]:
    """Positives of `frame` plus `negatives` sampled tracks per positive (label 0)."""
    rng = np.random.default_rng(seed)
    n_items = self.prepared.n_items
    users = frame["user_id"].to_numpy().astype(str)
    pos = self.prepared.item_index(frame["item_id"])
    k = self.config.negatives
    neg_users = np.repeat(users, k)
    neg = rng.integers(0, n_items, size=len(neg_users))
    # Resample negatives that hit one of the user's known tracks (a few passes).
    known = set(zip(self.prepared.train["user_id"].astype(str),
                    self.prepared.item_index(self.prepared.train["item_id"])))
    known |= set(zip(users, pos))
    for _ in range(3):
      hit = np.fromiter(((u, i) in known for u, i in zip(neg_users, neg)), bool, len(neg))
      if not hit.any():
        break
      neg[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    all_users = np.concatenate([users, neg_users])
    all_items = np.concatenate([pos, neg])
    features = self.pair_features(all_users, all_items)
    features["label"] = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    return features

  def training_features(self, epoch: int = 0) -> Dict[str, np.ndarray]:
    """Encoded training rows with labels (fresh negatives every epoch)."""
    if self.config.labels == "explicit":
      features, _ = self._rows(self.prepared.train)
      features["label"] = self.prepared.train["rating"].to_numpy(np.float32)
      return features
    return self._implicit_rows(self.prepared.train, self.config.seed * 1000 + epoch)

  # ----------------------------------------------------------------- training
  # Backup sub-folder of `fit_with_validation` (the cascade's re-ranker has its own).
  fit_name = "dcn"

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with early stopping on the validation loss, keeping the best weights.

    Through `tfrec_music.fit_loop.fit_with_validation`: checkpoints every
    `self.checkpoint_every` steps (every epoch when 0) in `self.backup_dir`
    (default `<job_dir>/backup`), so a killed job rerun with the same command
    resumes there; a non-finite loss stops training with advice and keeps the
    last good checkpoint. The validation metric is the negated validation
    loss (MSE for ratings, log loss for implicit labels), since the loop
    keeps the highest value.
    """
    config = self.config
    n_train = len(self.prepared.train)
    if n_train == 0:
      raise ValueError("No training rows after preparation: give more data or lower `--kcore`.")
    valid = self._valid_features()
    first = self.training_features(0)
    n_rows = len(first["label"])
    steps = max(1, -(-n_rows // config.batch_size))
    signature = feature_signature(first)
    if config.labels == "implicit":
      del first  # fresh negatives every epoch: drawn when the epoch starts
      draw = self.training_features
    else:
      draw = lambda epoch: first  # noqa: E731  (the same ratings, reshuffled)
    dataset = epoch_batches(draw, steps,
                            lambda: int(self.model.optimizer.iterations.numpy()) // steps,
                            config.seed, signature)
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=io.join(job_dir, "logs", self.fit_name),
                                                 update_freq="epoch")
    throughput = _Throughput()
    loss_name = "mse" if config.labels == "explicit" else "log_loss"
    summary = fit_with_validation(
        self.model, dataset, epochs=config.epochs,
        validate=lambda epoch: -self._valid_loss(valid),
        patience=config.early_stopping_patience, job_dir=job_dir, name=self.fit_name,
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, family=type(self).__name__,
                                       data=self.prepared.fingerprint),
        callbacks=[tensorboard, throughput],
        nan_advice="Lower the learning rate (`--set learning_rate=...`) or the number of "
                   "cross layers (`--cross-layers`).",
        metric_name=f"neg_valid_{loss_name}")
    metric = f"neg_valid_{loss_name}"
    for entry in summary["history"]:
      entry["valid_loss"] = -entry[metric]
    summary["best_valid_loss"] = -summary.pop(f"best_{metric}")
    summary["valid_loss"] = loss_name
    summary["steps_per_epoch"] = steps
    summary["train_seconds"] = throughput.seconds
    summary["examples_per_second"] = (throughput.steps * n_rows / steps
                                      / max(throughput.seconds, 1e-9))
    summary["features"] = self.spec.as_dict()
    self.fit_summary = summary
    return self.fit_summary

  def _valid_features(self) -> Optional[Dict[str, np.ndarray]]:
    valid = self.prepared.valid
    if len(valid) == 0:
      return None
    if self.config.labels == "explicit":
      features, _ = self._rows(valid)
      features["label"] = valid["rating"].to_numpy(np.float32)
      return features
    return self._implicit_rows(valid, self.config.seed + 10_007)

  def _valid_loss(self, valid: Optional[Dict[str, np.ndarray]]) -> float:
    if valid is None:
      return float("nan")
    out = self.predict_encoded(valid)
    label = valid["label"]
    if self.config.labels == "explicit":
      return float(np.mean((out - label) ** 2))
    return binary_metrics(label, 1.0 / (1.0 + np.exp(-out)))["log_loss"]

  def predict_encoded(self, features: Dict[str, np.ndarray], batch_size: int = 16384) -> np.ndarray:
    """[N] model outputs (clipped ratings, or logits) of encoded rows."""
    keys = [k for k in features if k != "label"]
    n = len(features[keys[0]])
    outs = []
    for start in range(0, n, batch_size):
      batch = {k: tf.constant(features[k][start:start + batch_size]) for k in keys}
      outs.append(self.ranker(batch).numpy())
    out = np.concatenate(outs) if outs else np.zeros(0, np.float32)
    if n and "user_id" in features and "item_id" in features:
      # As served: unknown ids get the fallback, not the untrained OOV embeddings.
      out = self.fallback_biases().apply(features, out)
    if self.config.labels == "explicit":
      out = np.clip(out, *self.rating_range)
    return out.astype(np.float64)

  def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """[N] predicted ratings (explicit) or probabilities (implicit) of pairs.

    Items outside the catalogue are not supported here (use the export's
    `serving_default`, which takes raw features).
    """
    index = self.prepared.item_index(item_ids)
    if (index < 0).any():
      raise ValueError(f"{int((index < 0).sum())} item ids are not in the catalogue.")
    out = self.predict_encoded(self.pair_features(user_ids, index))
    return out if self.config.labels == "explicit" else 1.0 / (1.0 + np.exp(-out))

  # ----------------------------------------------------------------- evaluation
  def score_fn(self):
    """Scorer factory for the full-ranking protocol: every catalogue track scored."""
    n_items = self.prepared.n_items

    def _scorer(split):
      del split

      def _score(user_ids):
        users = np.repeat(np.asarray(user_ids).astype(str), n_items)
        items = np.tile(np.arange(n_items), len(user_ids))
        return self.predict_encoded(self.pair_features(users, items)).reshape(-1, n_items)
      return _score
    return _scorer

  def baselines(self):
    """The three rating baselines fitted on the same training split (cached)."""
    if self._baselines is None:
      self._baselines = fit_rating_baselines(self.prepared.train, self.prepared.valid,
                                             mf_dim=self.config.baseline_mf_dim,
                                             seed=self.config.seed)
    return self._baselines

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """Explicit: RMSE / MSE / MAE of the model, global mean, biased baseline and
    biased MF on valid and test, overall and by cold / warm tracks.
    Implicit: AUC, log loss and accuracy on held-out positives plus sampled
    negatives."""
    del context
    if self.config.labels == "implicit":
      return {"model": self._evaluate_implicit()}
    fits = self.baselines()
    scorers = {"model": lambda frame: self.predict_encoded(self._rows(frame)[0]),
               **baseline_scorers(fits, self.rating_range)}
    out = evaluate_rating_scorers(self.prepared, scorers)
    for split in ("valid", "test"):
      frame = getattr(self.prepared, split)
      unseen_users = ~frame["user_id"].astype(str).isin(set(self.vocabs["user_id"]))
      unseen_items = ~frame["item_id"].astype(str).isin(set(self.vocabs["item_id"]))
      out["model"][f"{split}/all/unseen_user_rows"] = int(unseen_users.sum())
      out["model"][f"{split}/all/unseen_item_rows"] = int(unseen_items.sum())
    out["biased_mf"]["chosen_reg"] = fits.chosen["biased_mf/reg"]
    out["biased"]["chosen_reg"] = fits.chosen["biased/reg"]
    return out

  def validation_metrics(self) -> Dict[str, float]:
    """Validation-split metrics only: RMSE / MSE / MAE (explicit) or AUC / log loss (implicit).

    No test row is read, so tuning and model selection cannot peek at the test split.
    """
    valid = self.prepared.valid
    if len(valid) == 0:
      raise ValueError("The validation split is empty: tuning needs validation ratings. "
                       "Give more data or change the split ratios.")
    if self.config.labels == "implicit":
      features = self._implicit_rows(valid, self.config.seed + 20_011)
      prob = 1.0 / (1.0 + np.exp(-self.predict_encoded(features)))
      return {f"valid/all/{k}": v for k, v in binary_metrics(features["label"], prob).items()}
    return evaluate_rating_scorers(
        self.prepared, {"model": lambda frame: self.predict_encoded(self._rows(frame)[0])},
        splits=("valid",))["model"]

  def _evaluate_implicit(self) -> Dict[str, float]:
    metrics = {}
    for offset, split in enumerate(("valid", "test")):
      frame = getattr(self.prepared, split)
      if len(frame) == 0:
        continue
      features = self._implicit_rows(frame, self.config.seed + 20_011 + offset)
      prob = 1.0 / (1.0 + np.exp(-self.predict_encoded(features)))
      for key, value in binary_metrics(features["label"], prob).items():
        metrics[f"{split}/all/{key}"] = value
    return metrics

  # ----------------------------------------------------------------- export
  def serving_module(self) -> DCNServingModule:
    """The serving module (raw features in, lookups inside)."""
    known = np.asarray(self.vocabs["user_id"])
    return DCNServingModule(self.encoder, self.ranker, self.config.labels, self.raw_items,
                            raw_user_table(known, self.prepared.users, self.spec),
                            self.rating_range, self.fallback_biases())

  def fallback_biases(self) -> FallbackBiases:
    """The prediction for rows with an unknown (or empty) user or track id.

    Explicit labels: the biased baseline alpha + beta_u + beta_i fitted on the
    same training split (a known user with an unknown track gets alpha +
    beta_u, both unknown alpha). Implicit labels: the training share of
    positives, 1 / (1 + negatives), for every such row.
    """
    if self._fallback is None:
      sizes = self.encoder.vocab_sizes()
      user, item = np.zeros(sizes["user_id"]), np.zeros(sizes["item_id"])
      if self.config.labels == "explicit":
        biased = self.baselines().biased
        users, items = self.vocabs["user_id"], self.vocabs["item_id"]
        user[2:2 + len(users)] = biased.biases(users, [""] * len(users))[0]
        item[2:2 + len(items)] = biased.biases([""] * len(items), items)[1]
        offset = biased.alpha
      else:
        offset = -float(np.log(self.config.negatives))  # logit(1 / (1 + negatives))
      self._fallback = FallbackBiases(float(offset), user, item)
    return self._fallback

  def save(self, directory: str) -> Dict[str, str]:
    """SavedModel with `serving_default` (raw features) and `score_ids` (ids only)."""
    return save_serving_module(self.serving_module(), directory)

  @classmethod
  def stream_train(cls, data_dir: str, config: DCNConfig, job_dir: str, *,
                   checkpoint_every: int = 0, backup_dir: Optional[str] = None,
                   read_rows: int = 65_536
                   ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Any], Callable[[str], Any]]:
    """`--stream`: trains from Parquet shards (`StreamedDCN`); see `ModelFamily.stream_train`.

    The split is the hashed 80/10/10 split of `split_buckets` (no k-core);
    metrics are RMSE / MSE / MAE of the valid and test rows beside the
    training mean (`global_mean`).

    Returns:
      `(metrics, fit_summary, save_fn)`; `save_fn(directory)` writes the
      in-memory DCN's export contract and returns the signature descriptions.
    """
    streamed = StreamedDCN(data_dir, config, read_rows)
    streamed.checkpoint_every, streamed.backup_dir = checkpoint_every, backup_dir
    fit = streamed.fit(job_dir)
    return streamed.evaluate(), fit, streamed.save

  @classmethod
  def stream_run(cls, data_dir: str, config: DCNConfig, job_dir: str,
                 export_root: Optional[str] = None, *, checkpoint_every: int = 0,
                 read_rows: int = 65_536) -> Dict[str, Any]:
    """Trains, evaluates and exports a DCN streamed from Parquet shards (`--stream`).

    See `StreamedDCN`: one read batch in memory, the hashed 80/10/10 split,
    the shared fit loop (a killed run rerun with the same `job_dir` resumes).
    Writes `metrics.json` and `config.json` to `job_dir`; exports to
    `<export_root>/dcn/<version>/` with the in-memory DCN's signatures
    (`serving_default`: raw user + track features -> rating), `metrics.json`
    and `model_card.json`.

    Args:
      data_dir: Folder of canonical Parquet shards (`interactions-*.parquet`,
        `items.parquet`, optional `users.parquet`).
      config: `DCNConfig` (explicit labels).
      job_dir: Run folder (logs, backup, metrics).
      export_root: Export root (None: no export).
      checkpoint_every: Checkpoint every N steps (0: every epoch).
      read_rows: Rows read from a shard at a time.

    Returns:
      `{"metrics": {"model": {...}, "global_mean": {...}}, "fit": summary,
      "examples_per_second": float, "export_path": str or None}`.
    """
    from tfrec_music.export.saved_model import export_versioned  # pylint: disable=g-import-not-at-top
    from tfrec_music.export.saved_model import write_json  # pylint: disable=g-import-not-at-top
    metrics, fit, save_fn = cls.stream_train(data_dir, config, job_dir,
                                             checkpoint_every=checkpoint_every,
                                             read_rows=read_rows)
    resolved = {"model": dataclasses.asdict(config),
                "stream": {"data_dir": data_dir, "read_rows": read_rows,
                           "split": "hashed 80/10/10 (split_buckets)",
                           "checkpoint_every": checkpoint_every}}
    write_json(io.join(job_dir, "metrics.json"), metrics)
    write_json(io.join(job_dir, "config.json"), resolved)
    export_path = None
    if export_root:
      signatures = {}
      card = {"config": resolved, "data": {"name": "stream", "rows": fit["rows"]},
              "fit": fit, "signatures": signatures}
      export_path = export_versioned(lambda d: signatures.update(save_fn(d)),
                                     export_root, cls.name, metrics=metrics, model_card=card)
    return {"metrics": metrics, "fit": fit, "examples_per_second": fit["examples_per_second"],
            "export_path": export_path}


def save_serving_module(module: DCNServingModule, directory: str) -> Dict[str, str]:
  """Writes a DCN SavedModel (`serving_default`, `score_ids`); returns their descriptions.

  One writer for the in-memory and the streamed DCN, so both exports have
  the same serving contract.
  """
  tf.saved_model.save(module, directory, signatures=module.signatures())
  output = ("rating [B] (clipped to the training range)" if module.labels == "explicit"
            else "probability [B], logit [B]")
  output += ", fallback [B] (unknown or empty user or track id: baseline prediction)"
  inputs = ", ".join(f"{c} [B]" for c in raw_signature(module.spec))
  return {"serving_default": f"{inputs} -> {output}",
          "score_ids": f"user_id [B], item_id [B] -> {output} (features of known users and "
                       "tracks from the stored tables)"}


def _int_list(text: str) -> List[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError as e:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers like 128,64. Received: {text!r}.") from e


# --------------------------------------------------------------------------
# Streaming training from Parquet shards (data larger than memory).
# --------------------------------------------------------------------------


def split_buckets(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
  """[N] bucket 0-99 of each (user, item) pair, stable across runs and shard layouts.

  Streaming cannot shuffle the whole data set to split it, so the 80/10/10
  ratio split is a hash: buckets 0-79 train, 80-89 valid, 90-99 test.
  """
  keys = (pd.Series(np.asarray(user_ids).astype(str)) + "\t"
          + pd.Series(np.asarray(item_ids).astype(str)))
  return (pd.util.hash_array(keys.to_numpy(object)) % np.uint64(100)).astype(np.int64)


def _shard_batches(paths: Sequence[str], columns: Sequence[str], rows: int):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  for path in paths:
    # Local files are memory-mapped by Arrow; gs:// and other gfile paths are
    # read through a GFile handle (Parquet needs random access, which it has).
    source = path if "://" not in path else tf.io.gfile.GFile(path, "rb")
    for batch in pq.ParquetFile(source).iter_batches(batch_size=rows, columns=list(columns)):
      yield batch.to_pandas()


def _split_mask(frame: pd.DataFrame, split: str) -> np.ndarray:
  bucket = split_buckets(frame["user_id"].to_numpy(), frame["item_id"].to_numpy())
  low, high = {"train": (0, 80), "valid": (80, 90), "test": (90, 100)}[split]
  return (bucket >= low) & (bucket < high)


def stream_train(data_dir: str, config: DCNConfig, job_dir: Optional[str] = None,
                 read_rows: int = 65_536) -> Dict[str, Any]:
  """Trains an explicit-rating DCN from canonical Parquet shards (no export).

  The training of `DCNFamily.stream_run` (see `StreamedDCN`) without the
  export; `job_dir` None trains in a temporary folder (no resume).

  Returns:
    `StreamedDCN.fit`'s summary plus the model's valid/test RMSE, MSE, MAE.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as scratch:
    streamed = StreamedDCN(data_dir, config, read_rows)
    summary = streamed.fit(job_dir or scratch)
    summary.update(streamed.evaluate()["model"])
  return summary


class StreamedDCN:
  """An explicit-rating DCN trained from canonical Parquet shards, one read batch in memory.

  Reads `items.parquet`, optional `users.parquet` and the interaction shards
  `interactions-*.parquet` of `data_dir` (as `synthetic.write_large` or
  `yahoo_music.convert_yahoo_music` write them). Memory holds the catalogue,
  the vocabularies (users and tracks seen in training), per-id bias arrays
  and one read batch, never the ratings: each epoch re-reads the shards
  through `tf.data`. The split is the hashed 80/10/10 split of
  `split_buckets`. No k-core filter runs (it needs every row at once).

  Training goes through `tfrec_music.fit_loop.fit_with_validation` like the
  in-memory DCN (step checkpoints and resume, NaN guard, early stopping on
  the validation RMSE keeping the best weights). The export
  (`serving_module`) has the in-memory DCN's signatures; its fallback for
  unknown ids is alpha + beta_u + beta_i with one-step biases
  beta = sum(r - alpha) / (n + 5) of each id's training ratings.

  Args:
    data_dir: Folder of the canonical Parquet shards.
    config: `DCNConfig` (explicit labels).
    read_rows: Rows read from a shard at a time.

  Raises:
    ValueError: implicit labels.
    DataValidationError: no interaction shards, or no training rows.
  """

  checkpoint_every: int = 0
  backup_dir: Optional[str] = None

  def __init__(self, data_dir: str, config: DCNConfig, read_rows: int = 65_536):
    from tfrec_music.data.loaders import canonical  # pylint: disable=g-import-not-at-top
    from tfrec_music.data.tables import DataValidationError  # pylint: disable=g-import-not-at-top
    if config.labels != "explicit":
      raise ValueError("Streaming trains explicit ratings; `labels` should be 'explicit'. "
                       f"Received: `labels` = {config.labels!r}.")
    self.data_dir, self.config, self.read_rows = data_dir, config, read_rows
    names = canonical.list_dir(data_dir)
    self.shards = [io.join(data_dir, n) for n in names
                   if n.startswith("interactions") and n.endswith(".parquet")]
    if not self.shards:
      raise DataValidationError(
          f"no interactions-*.parquet shards in the folder. Found: {names[:20]}.",
          file=io.join(data_dir, "interactions-00000.parquet"),
          fix="write the shards with `python -m tfrec_music.data.synthetic --out DIR` or "
              "`python -m tfrec_music.data.loaders.yahoo_music --out DIR`.")
    items = canonical.read_parquet_file(io.join(data_dir, "items.parquet"))
    users = (canonical.read_parquet_file(io.join(data_dir, "users.parquet"))
             if "users.parquet" in names else None)
    items = items.drop(columns=[c for c in items.columns if c.startswith("_")])
    items["item_id"] = items["item_id"].astype(str)
    # Pass 1: training ids, rating mean and range, two id columns at a time.
    user_set, item_set, total, count = set(), set(), 0.0, 0
    low, high = np.inf, -np.inf
    self.rows = {"train": 0, "valid": 0, "test": 0}
    for frame in self._read(("user_id", "item_id", "rating")):
      train = _split_mask(frame, "train")
      valid = _split_mask(frame, "valid")
      self.rows["train"] += int(train.sum())
      self.rows["valid"] += int(valid.sum())
      self.rows["test"] += int((~train & ~valid).sum())
      user_set.update(frame["user_id"].astype(str)[train])
      item_set.update(frame["item_id"].astype(str)[train])
      ratings = frame["rating"].to_numpy(np.float64)[train]
      total += float(ratings.sum())
      count += int(train.sum())
      if len(ratings):
        low, high = min(low, float(ratings.min())), max(high, float(ratings.max()))
    if count == 0:
      raise DataValidationError("no training rows in the shards.", file=self.shards[0],
                                fix="check that the shards hold interactions with ratings.")
    self.mean, self.rating_range = total / count, (low, high)
    self.spec = RankingFeatureSpec.from_tables(items, users)
    vocabs = {"user_id": sorted(user_set), "item_id": sorted(item_set)}
    del user_set, item_set
    self.vocabs = ranking_vocabularies(self.spec, pd.DataFrame({"user_id": [], "item_id": []}),
                                       items, users, vocabs)
    train_items = items[items["item_id"].isin(set(self.vocabs["item_id"]))]
    mean, std = numeric_statistics(self.spec, train_items)
    self.encoder = RankingEncoder(self.spec, self.vocabs, mean, std, name="ranking_encoder")
    self.ranker = build_ranker(self.encoder, config, self.mean)
    self.model = DCNModel(self.ranker, "explicit")
    self.model.compile(optimizer=optimizer(config))
    self.items, self.users = items, users
    self.item_rows = pd.Index(items["item_id"])
    self.raw_items = raw_item_table(items, self.spec)
    encoded = {}
    for start in range(0, len(items), 8192):
      batch = {c: tf.constant(self.raw_items[c][start:start + 8192]) for c in self.spec.item_columns}
      for k, v in self.encoder.encode(batch, self.spec.item_columns).items():
        encoded.setdefault(k, []).append(v.numpy())
    self.encoded_items = {k: np.concatenate(v) for k, v in encoded.items()}
    self.user_table = (users.drop_duplicates("user_id").set_index("user_id")
                       if users is not None else None)
    probe = self.encode(pd.DataFrame({"user_id": ["x"], "item_id": ["x"], "rating": [0.0]}))
    self.signature = feature_signature(probe)
    self.fit_summary: Dict[str, Any] = {}
    self._fallback: Optional[FallbackBiases] = None

  def _read(self, columns: Sequence[str], paths: Optional[Sequence[str]] = None):
    return _shard_batches(paths or self.shards, columns, self.read_rows)

  def encode(self, frame: pd.DataFrame) -> Dict[str, np.ndarray]:
    """Encoded features and `label` of rating rows (tracks missing from items: missing)."""
    user_ids = frame["user_id"].astype(str).to_numpy()
    out = {"user_id": lookup_indices(user_ids, self.vocabs["user_id"])}
    for column in self.spec.user_categorical:
      values = self.user_table[column].reindex(user_ids).fillna("").astype(str).to_numpy()
      out[column] = lookup_indices(values, self.vocabs[column])
    row = self.item_rows.get_indexer(frame["item_id"].astype(str))
    known = row >= 0
    for key, values in self.encoded_items.items():
      out[key] = np.where(known.reshape((-1,) + (1,) * (values.ndim - 1)),
                          values[np.maximum(row, 0)], 0).astype(values.dtype)
    out["label"] = frame["rating"].to_numpy(np.float32)
    return out

  def dataset(self, split: str, epoch_of: Callable[[], int] = lambda: 0) -> tf.data.Dataset:
    """Batches of `split`'s rows; training shards in a per-epoch order, rows shuffled."""
    config = self.config

    def batches():
      paths = self.shards
      if split == "train":
        order = np.random.default_rng(config.seed + int(epoch_of())).permutation(len(paths))
        paths = [paths[i] for i in order]
      for frame in self._read(("user_id", "item_id", "rating"), paths):
        frame = frame[_split_mask(frame, split)]
        if len(frame):
          yield self.encode(frame)

    ds = tf.data.Dataset.from_generator(batches, output_signature=self.signature).unbatch()
    if split == "train":
      ds = ds.shuffle(16 * config.batch_size, seed=config.seed)
    ds = ds.batch(config.batch_size)
    if split == "train":
      # A known number of steps per epoch lets BackupAndRestore resume mid-epoch.
      steps = -(-self.rows["train"] // config.batch_size)
      ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(2)

  def predict_split(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """([N] true, [N] predicted) ratings of a split, as served (fallback, clip)."""
    truth, pred = [], []
    fallback = self.fallback_biases()
    for batch in self.dataset(split):
      label = batch.pop("label").numpy()
      out = fallback.apply({k: v.numpy() for k, v in batch.items()
                            if k in ("user_id", "item_id")}, self.ranker(batch).numpy())
      truth.append(label)
      pred.append(np.clip(out, *self.rating_range))
    if not truth:
      return np.zeros(0), np.zeros(0)
    return np.concatenate(truth), np.concatenate(pred)

  def split_rmse(self, split: str) -> float:
    """RMSE of a split's predictions (NaN when the split is empty)."""
    truth, pred = self.predict_split(split)
    return float(np.sqrt(np.mean((truth - pred) ** 2))) if len(truth) else float("nan")

  def fallback_biases(self) -> FallbackBiases:
    """alpha + one-step biases of each training user and track (pass 2 over the shards)."""
    if self._fallback is None:
      sizes = self.encoder.vocab_sizes()
      sums = {"user_id": np.zeros(sizes["user_id"]), "item_id": np.zeros(sizes["item_id"])}
      counts = {k: np.zeros_like(v) for k, v in sums.items()}
      for frame in self._read(("user_id", "item_id", "rating")):
        frame = frame[_split_mask(frame, "train")]
        residual = frame["rating"].to_numpy(np.float64) - self.mean
        for key in sums:
          index = lookup_indices(frame[key].astype(str).to_numpy(), self.vocabs[key])
          sums[key] += np.bincount(index, residual, minlength=len(sums[key]))
          counts[key] += np.bincount(index, minlength=len(sums[key]))
      bias = {k: sums[k] / (counts[k] + 5.0) for k in sums}
      for values in bias.values():
        values[:2] = 0.0  # "" and OOV
      self._fallback = FallbackBiases(self.mean, bias["user_id"], bias["item_id"])
    return self._fallback

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with checkpoints, resume and early stopping on the validation RMSE.

    Args:
      job_dir: Logs and the resumable backup (`<job_dir>/backup` unless
        `backup_dir` is set); a killed run rerun with the same folder resumes.

    Returns:
      Summary: `rows` by split, `examples_per_second` (training steps only),
      per-epoch history with `valid_rmse`, best epoch, resume counters.
    """
    config = self.config
    steps = -(-self.rows["train"] // config.batch_size)
    dataset = self.dataset("train",
                           lambda: int(self.model.optimizer.iterations.numpy()) // steps)
    self.fallback_biases()  # before training: validation predicts as served
    throughput = _Throughput()
    summary = fit_with_validation(
        self.model, dataset, epochs=config.epochs,
        validate=lambda epoch: -self.split_rmse("valid"),
        patience=config.early_stopping_patience, job_dir=job_dir, name="dcn_stream",
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, data=self.data_dir, rows=self.rows),
        callbacks=[tf.keras.callbacks.TensorBoard(log_dir=io.join(job_dir, "logs", "dcn_stream"),
                                                  update_freq="epoch"), throughput],
        nan_advice="Lower the learning rate (`--set learning_rate=...`) or the number of "
                   "cross layers (`--cross-layers`).",
        metric_name="neg_valid_rmse")
    for entry in summary["history"]:
      entry["valid_rmse"] = -entry.pop("neg_valid_rmse")
    summary["best_valid_rmse"] = -summary.pop("best_neg_valid_rmse")
    examples = throughput.steps * self.rows["train"] / steps
    summary.update({"rows": self.rows, "users": len(self.vocabs["user_id"]),
                    "items": len(self.items), "steps_per_epoch": steps,
                    "train_seconds": throughput.seconds,
                    "examples_per_second": examples / max(throughput.seconds, 1e-9)})
    logging.info("dcn stream: %d epochs, best valid RMSE %.4f, %.0f examples/s",
                 summary["epochs_run"], summary["best_valid_rmse"],
                 summary["examples_per_second"])
    self.fit_summary = summary
    return summary

  def evaluate(self) -> Dict[str, Dict[str, float]]:
    """RMSE / MSE / MAE of the valid and test splits (streamed), as served, beside the
    training mean rating (`global_mean`)."""
    from tfrec_music.evaluation.rating import rating_metrics  # pylint: disable=g-import-not-at-top
    out = {"model": {}, "global_mean": {}}
    for split in ("valid", "test"):
      truth, pred = self.predict_split(split)
      if not len(truth):
        continue
      for name, values in (("model", pred), ("global_mean", np.full(len(truth), self.mean))):
        for key, value in rating_metrics(truth, values).items():
          out[name][f"{split}/all/{key}"] = value
    return out

  def serving_module(self) -> DCNServingModule:
    """The serving module: the in-memory DCN's signatures over this model."""
    known = np.asarray(self.vocabs["user_id"])
    return DCNServingModule(self.encoder, self.ranker, "explicit", self.raw_items,
                            raw_user_table(known, self.users, self.spec), self.rating_range,
                            self.fallback_biases())

  def save(self, directory: str) -> Dict[str, str]:
    """Writes the SavedModel (see `save_serving_module`)."""
    return save_serving_module(self.serving_module(), directory)
