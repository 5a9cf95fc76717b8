"""The raw features a DCN reads: which columns, their vocabularies, statistics and raw tables."""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.data.tables import AUDIO_FEATURES
from tfrec_music.prepare.vocabulary import feature_vocabularies
from tfrec_music.prepare.vocabulary import sorted_tokens

ITEM_CATEGORICAL = ("album", "artist", "genre", "parent_genre", "genre_level", "mood")
USER_CATEGORICAL = ("country",)
# Spellings of a missing categorical value (a NaN read as text is "nan").
MISSING_TOKENS = ("", "nan")


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


def ranking_vocabularies(spec: RankingFeatureSpec, train: pd.DataFrame, items: pd.DataFrame,
                         users: Optional[pd.DataFrame],
                         base: Optional[Dict[str, List[str]]] = None) -> Dict[str, List[str]]:
  """Vocabularies of every categorical feature, from training rows only.

  `base` (the vocabularies of `prepare`) is reused where it has the feature.
  """
  vocabs = dict(base or {})
  for key in ("user_id", "item_id"):
    vocabs.setdefault(key, sorted_tokens(train[key].unique(), MISSING_TOKENS))
  vocabs.update(feature_vocabularies(
      vocabs["item_id"], vocabs["user_id"], items, users,
      item_columns=[c for c in spec.item_categorical if c not in vocabs],
      user_columns=[c for c in spec.user_categorical if c not in vocabs],
      missing=MISSING_TOKENS))
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


def raw_signature(spec: RankingFeatureSpec) -> Dict[str, tf.TensorSpec]:
  """TensorSpecs of the raw serving inputs."""
  sig = {c: tf.TensorSpec([None], tf.string, name=c) for c in spec.categorical}
  for c in spec.numeric:
    sig[c] = tf.TensorSpec([None], tf.float32, name=c)
  return sig
