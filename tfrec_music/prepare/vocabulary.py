"""Vocabularies built from the training split only, saved as text files.

Unseen ids are not an error anywhere: the `StringLookup` layers built from
these files map them to OOV buckets, at training and at serving time.
"""

import os
from typing import Dict, Iterable, List

import pandas as pd

from tfrec_music import io

# Item and user columns that get a vocabulary when present.
ITEM_VOCAB_COLUMNS = ("artist", "album", "genre", "parent_genre")
ITEM_LIST_VOCAB_COLUMNS = ("tags",)
USER_VOCAB_COLUMNS = ("country",)


def _sorted_unique(values: Iterable[str]) -> List[str]:
  # Sorted, so the same training data gives the same indices in every run.
  return sorted({str(v) for v in values if v is not None and str(v) != ""})


def build_vocabularies(train: pd.DataFrame, items: pd.DataFrame,
                       users: pd.DataFrame = None) -> Dict[str, List[str]]:
  """Builds vocabularies for ids and categorical features from `train`.

  Args:
    train: Training interactions (`user_id`, `item_id`).
    items: The catalogue; only items seen in `train` contribute tokens.
    users: Optional users table; only users seen in `train` contribute.

  Returns:
    Feature name -> sorted list of tokens (no OOV token; lookups add it).
  """
  vocabs = {"user_id": _sorted_unique(train["user_id"].unique()),
            "item_id": _sorted_unique(train["item_id"].unique())}
  seen_items = items[items["item_id"].isin(set(vocabs["item_id"]))]
  for column in ITEM_VOCAB_COLUMNS:
    if column in seen_items.columns:
      vocabs[column] = _sorted_unique(seen_items[column])
  for column in ITEM_LIST_VOCAB_COLUMNS:
    if column in seen_items.columns:
      vocabs[column] = _sorted_unique(t for tags in seen_items[column] for t in tags)
  if users is not None:
    seen_users = users[users["user_id"].isin(set(vocabs["user_id"]))]
    for column in USER_VOCAB_COLUMNS:
      if column in seen_users.columns:
        vocabs[column] = _sorted_unique(seen_users[column])
  return vocabs


def save_vocabularies(vocabs: Dict[str, List[str]], directory: str) -> Dict[str, str]:
  """Writes one `<name>.txt` per vocabulary (one token per line).

  Returns:
    Feature name -> file path.
  """
  paths = {}
  for name, tokens in vocabs.items():
    for token in tokens:
      if "\n" in token or "\r" in token:
        raise ValueError(f"Vocabulary `{name}` has a token with a line break: "
                         f"{token!r}. Remove line breaks from ids and feature values.")
    path = io.join(directory, f"{name}.txt")
    io.write_text(path, "".join(t + "\n" for t in tokens))
    paths[name] = path
  return paths


def load_vocabularies(directory: str) -> Dict[str, List[str]]:
  """Reads the vocabularies written by `save_vocabularies`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  vocabs = {}
  for path in sorted(tf.io.gfile.glob(io.join(directory, "*.txt"))):
    name = os.path.basename(path)[:-4]
    text = io.read_text(path)
    vocabs[name] = text.split("\n")[:-1] if text else []
  return vocabs
