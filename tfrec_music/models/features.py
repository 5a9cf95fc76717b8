"""Feature encoders: raw item and user features -> model-ready integer/float tensors.

An encoder is a Keras layer holding the lookups (StringLookup, TextVectorization,
normalization statistics), all fitted on the training split only. Training
runs it once over the catalogue on the host and feeds the towers the encoded
arrays; exports put the same encoder in front of the towers, so serving takes
raw strings and numbers.

Index conventions (see `tfrec_music.pipeline.lookups`): 0 is missing/padding,
1 is OOV, known tokens start at 2.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.data.tables import AUDIO_FEATURES
from tfrec_music.pipeline.lookups import string_lookup

CATEGORICAL_ITEM_FEATURES = ("artist", "album", "genre", "parent_genre")
TEXT_ITEM_FEATURES = {"title": 8, "text": 32}  # feature -> tokens kept
TEXT_VECTOR_COLUMN = "text_vector"
MAX_TAGS = 8
TEXT_VOCAB_SIZE = 20_000


@dataclasses.dataclass(frozen=True)
class ItemFeatureSpec:
  """Which item features a catalogue has and the towers use.

  Attributes:
    categorical: Categorical columns (artist, album, genre, parent_genre).
    tags: Whether the multi-valued `tags` column is used.
    text: Text columns with their token lengths (title, text).
    numeric: Numeric audio-feature columns.
    text_vector_dim: Size of a precomputed `text_vector` column (0 if absent).
  """

  categorical: Sequence[str] = ()
  tags: bool = False
  text: Sequence[str] = ()
  numeric: Sequence[str] = ()
  text_vector_dim: int = 0

  @classmethod
  def from_items(cls, items: pd.DataFrame, use_content: bool) -> "ItemFeatureSpec":
    """The features `items` has (none but the id when `use_content` is False)."""
    if not use_content:
      return cls()
    dim = 0
    if TEXT_VECTOR_COLUMN in items.columns and len(items):
      first = next((v for v in items[TEXT_VECTOR_COLUMN] if v is not None), None)
      dim = len(first) if first is not None else 0
    return cls(categorical=tuple(c for c in CATEGORICAL_ITEM_FEATURES if c in items.columns),
               tags="tags" in items.columns,
               text=tuple(c for c in TEXT_ITEM_FEATURES if c in items.columns),
               numeric=tuple(c for c in AUDIO_FEATURES if c in items.columns),
               text_vector_dim=dim)


class ItemEncoder(tf.keras.layers.Layer):
  """Raw item features -> encoded features for the candidate tower.

  Args:
    spec: The features to encode.
    vocabularies: From `prepare` (train split only).
    train_items: Items seen in training, to adapt text vocabularies and
      numeric statistics on.
  """

  def __init__(self, spec: ItemFeatureSpec, vocabularies: Dict[str, List[str]],
               train_items: Optional[pd.DataFrame] = None, **kwargs):
    super().__init__(**kwargs)
    self.spec = spec
    self.lookups = {"item_id": string_lookup(vocabularies["item_id"], "item_id_lookup")}
    for column in spec.categorical:
      self.lookups[column] = string_lookup(vocabularies.get(column, []), f"{column}_lookup")
    if spec.tags:
      self.lookups["tags"] = string_lookup(vocabularies.get("tags", []), "tags_lookup")
    self.text_layers = {}
    for column in spec.text:
      layer = tf.keras.layers.TextVectorization(
          max_tokens=TEXT_VOCAB_SIZE, output_sequence_length=TEXT_ITEM_FEATURES[column],
          name=f"{column}_vectorizer")
      corpus = (train_items[column].fillna("").astype(str).tolist()
                if train_items is not None else [""])
      layer.adapt(tf.constant(corpus or [""]))
      self.text_layers[column] = layer
    if spec.numeric:
      values = (train_items[list(spec.numeric)].to_numpy(np.float64)
                if train_items is not None else np.zeros((1, len(spec.numeric))))
      mean = np.nanmean(values, axis=0) if len(values) else np.zeros(len(spec.numeric))
      std = np.nanstd(values, axis=0) if len(values) else np.ones(len(spec.numeric))
      mean = np.nan_to_num(mean)
      std = np.where(np.nan_to_num(std) > 1e-6, np.nan_to_num(std), 1.0)
      self.numeric_mean = tf.constant(mean, tf.float32)
      self.numeric_std = tf.constant(std, tf.float32)

  def text_vocab_sizes(self) -> Dict[str, int]:
    """Vocabulary size of each text feature."""
    return {c: int(layer.vocabulary_size()) for c, layer in self.text_layers.items()}

  def lookup_sizes(self) -> Dict[str, int]:
    """Vocabulary size (incl. mask and OOV) of each categorical lookup."""
    return {c: int(layer.vocabulary_size()) for c, layer in self.lookups.items()}

  def call(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Encodes a batch.

    Args:
      raw: `item_id` [B] string; categorical [B] strings; `tags` [B, T]
        strings padded with ""; text [B] strings; numeric [B] floats (NaN for
        missing); `text_vector` [B, D] floats.

    Returns:
      Encoded dict: ints for lookups and tokens, normalized float
      `numeric` [B, F], `text_vector` [B, D].
    """
    out = {"item_id": self.lookups["item_id"](raw["item_id"])}
    for column in self.spec.categorical:
      out[column] = self.lookups[column](raw[column])
    if self.spec.tags:
      tags = raw["tags"][:, :MAX_TAGS]
      pad = MAX_TAGS - tf.shape(tags)[1]
      tags = tf.pad(tags, [[0, 0], [0, pad]], constant_values="")
      out["tags"] = self.lookups["tags"](tags)
    for column in self.spec.text:
      out[column] = self.text_layers[column](raw[column])
    if self.spec.numeric:
      values = tf.stack([tf.cast(raw[c], tf.float32) for c in self.spec.numeric], axis=1)
      # Missing values sit at the training mean (0 after normalization).
      values = tf.where(tf.math.is_nan(values), self.numeric_mean, values)
      out["numeric"] = (values - self.numeric_mean) / self.numeric_std
    if self.spec.text_vector_dim:
      out[TEXT_VECTOR_COLUMN] = tf.cast(raw[TEXT_VECTOR_COLUMN], tf.float32)
    return out


def raw_item_features(items: pd.DataFrame, spec: ItemFeatureSpec) -> Dict[str, np.ndarray]:
  """Catalogue columns as arrays in the encoder's raw input format."""
  out = {"item_id": items["item_id"].astype(str).to_numpy().astype(object)}
  for column in spec.categorical + tuple(spec.text):
    out[column] = items[column].fillna("").astype(str).to_numpy().astype(object)
  if spec.tags:
    tags = np.full((len(items), MAX_TAGS), "", dtype=object)
    for row, values in enumerate(items["tags"]):
      values = list(values)[:MAX_TAGS] if values is not None else []
      tags[row, :len(values)] = values
    out["tags"] = tags
  for column in spec.numeric:
    out[column] = items[column].to_numpy(np.float32)
  if spec.text_vector_dim:
    out[TEXT_VECTOR_COLUMN] = np.stack([np.asarray(v, np.float32) for v in items[TEXT_VECTOR_COLUMN]])
  return out


def encode_catalogue(encoder: ItemEncoder, items: pd.DataFrame,
                     batch_size: int = 4096) -> Dict[str, np.ndarray]:
  """Runs the encoder over the whole catalogue, in batches, on the host."""
  raw = raw_item_features(items, encoder.spec)
  parts: Dict[str, List[np.ndarray]] = {}
  for start in range(0, len(items), batch_size):
    batch = {k: tf.constant(v[start:start + batch_size]) for k, v in raw.items()}
    for k, v in encoder(batch).items():
      parts.setdefault(k, []).append(v.numpy())
  return {k: np.concatenate(v) for k, v in parts.items()}


def item_input_signature(spec: ItemFeatureSpec) -> Dict[str, tf.TensorSpec]:
  """`tf.TensorSpec`s of the raw item inputs (for the candidate-tower export)."""
  sig = {"item_id": tf.TensorSpec([None], tf.string, name="item_id")}
  for column in tuple(spec.categorical) + tuple(spec.text):
    sig[column] = tf.TensorSpec([None], tf.string, name=column)
  if spec.tags:
    sig["tags"] = tf.TensorSpec([None, None], tf.string, name="tags")
  for column in spec.numeric:
    sig[column] = tf.TensorSpec([None], tf.float32, name=column)
  if spec.text_vector_dim:
    sig[TEXT_VECTOR_COLUMN] = tf.TensorSpec([None, spec.text_vector_dim], tf.float32,
                                            name=TEXT_VECTOR_COLUMN)
  return sig
