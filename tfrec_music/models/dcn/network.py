"""The DCN v2 network: raw-feature encoder, cross + deep ranker, and the `tfrs.Model`."""

from typing import Dict, List, Sequence

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music.models.dcn.config import DCNConfig
from tfrec_music.models.dcn.features import RankingFeatureSpec
from tfrec_music.pipeline.lookups import string_lookup


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
    # SUM: Keras refuses its default reduction inside a distribution strategy. Labels are
    # [B], so the loss already averages the batch; `compute_loss` divides by the replicas.
    sum_ = tf.keras.losses.Reduction.SUM
    if labels == "explicit":
      self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(reduction=sum_))
    else:
      self.task = tfrs.tasks.Ranking(
          loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=sum_))

  def compute_loss(self, inputs: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    """Loss of a batch of encoded features with a `label` [B]."""
    features = {k: v for k, v in inputs.items() if k != "label"}
    predictions = self.ranker(features, training=training)
    loss = self.task(labels=inputs["label"], predictions=predictions, compute_metrics=False)
    loss = loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
    return loss + tf.add_n(self.ranker.losses) if self.ranker.losses else loss


def build_ranker(encoder: RankingEncoder, config: DCNConfig, output_bias: float) -> DCNRanker:
  """A `DCNRanker` sized for `encoder`'s vocabularies."""
  tf.keras.utils.set_random_seed(config.seed)
  return DCNRanker(encoder.vocab_sizes(), len(encoder.spec.numeric), config, output_bias,
                   name="dcn_ranker")


def optimizer(config: DCNConfig) -> tf.keras.optimizers.Optimizer:
  """Adam at the configured rate."""
  return tf.keras.optimizers.Adam(config.learning_rate)
