"""StringLookup layers from saved vocabularies, used in pipelines and exports.

Index 0 is the mask (an empty string: a missing value or padding) and index 1
the OOV bucket, so ids unseen in training map to it instead of failing, at
training and at serving time. Vocabulary tokens start at index 2.
"""

from typing import Dict, Iterable, List, Mapping

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


def string_lookup(vocabulary: List[str], name: str, num_oov_indices: int = 1) -> tf.keras.layers.StringLookup:
  """A `StringLookup` over `vocabulary`: "" -> 0, unseen -> 1, tokens from 2.

  Args:
    vocabulary: Tokens in index order (from `build_vocabularies`).
    name: Layer name.
    num_oov_indices: OOV buckets; unseen strings hash into them.

  Returns:
    The layer; its vocabulary size is `len(vocabulary) + num_oov_indices + 1`.
  """
  if not vocabulary:
    # An empty vocabulary (e.g. a feature with no values in training) still
    # works: everything maps to OOV.
    vocabulary = ["[EMPTY]"]
  return tf.keras.layers.StringLookup(vocabulary=list(vocabulary), mask_token="",
                                      num_oov_indices=num_oov_indices, name=name)


def build_lookups(vocabularies: Mapping[str, List[str]],
                  names: Iterable[str]) -> Dict[str, tf.keras.layers.StringLookup]:
  """Lookups for the named features (each must have a vocabulary)."""
  out = {}
  for name in names:
    if name not in vocabularies:
      raise ValueError(f"No vocabulary for feature `{name}` (have: {sorted(vocabularies)}).")
    out[name] = string_lookup(vocabularies[name], name=f"{name}_lookup")
  return out


def lookup_indices(values, vocabulary: List[str]) -> np.ndarray:
  """Host-side StringLookup twin: "" -> 0, unseen -> 1, vocab[i] -> i + 2."""
  index = pd.Index(vocabulary)
  values = pd.Series(values).astype(str)
  found = index.get_indexer(values)
  out = np.where(found >= 0, found + 2, 1).astype(np.int64)
  out[(values == "").to_numpy()] = 0
  return out


def id_table(ids) -> tf.lookup.StaticHashTable:
  """Serving-side id -> row table: `ids[i]` maps to `i`, anything else to -1.

  Unlike `string_lookup` (training vocabularies with an OOV bucket), exports
  use this to find a raw id's row and detect unknown ids themselves.
  """
  ids = np.asarray(ids).astype(str).astype(object)
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                          tf.range(len(ids), dtype=tf.int64)), default_value=-1)
