"""Vocabularies built from the training split only, saved as text files.

Unseen ids are not an error anywhere: the `StringLookup` layers built from
these files map them to OOV buckets, at training and at serving time.
"""

import os
from typing import Dict, Iterable, List, Optional, Sequence

import pandas as pd

from tfrec_music import io

# Item and user columns that get a vocabulary when present.
ITEM_VOCAB_COLUMNS = ("artist", "album", "genre", "parent_genre")
ITEM_LIST_VOCAB_COLUMNS = ("tags",)
USER_VOCAB_COLUMNS = ("country",)


def sorted_tokens(values: Iterable, missing: Sequence[str] = ("",)) -> List[str]:
  """The distinct values as sorted strings, without None and the `missing` spellings.

  Sorted, so the same training data gives the same indices in every run.
  """
  return sorted({str(v) for v in values if v is not None and str(v) not in missing})


def feature_vocabularies(item_ids: Iterable[str], user_ids: Iterable[str], items: pd.DataFrame,
                         users: Optional[pd.DataFrame], item_columns: Sequence[str],
                         user_columns: Sequence[str] = (), list_columns: Sequence[str] = (),
                         missing: Sequence[str] = ("",)) -> Dict[str, List[str]]:
  """Vocabularies of feature columns over the items and users with the given (training) ids.

  Args:
    item_ids: Ids of the items that contribute tokens.
    user_ids: Ids of the users that contribute tokens.
    items: The catalogue.
    users: The users table (None: no user vocabularies).
    item_columns: String item columns (those the catalogue has get a vocabulary).
    user_columns: String user columns (likewise).
    list_columns: Item columns holding lists of strings (e.g. `tags`).
    missing: Spellings of a missing value, never tokens.

  Returns:
    Column -> sorted list of tokens.
  """
  vocabs = {}
  seen_items = items[items["item_id"].isin(set(item_ids))]
  for column in item_columns:
    if column in seen_items.columns:
      vocabs[column] = sorted_tokens(seen_items[column], missing)
  for column in list_columns:
    if column in seen_items.columns:
      vocabs[column] = sorted_tokens((t for tags in seen_items[column] for t in tags), missing)
  if users is not None:
    seen_users = users[users["user_id"].isin(set(user_ids))]
    for column in user_columns:
      if column in seen_users.columns:
        vocabs[column] = sorted_tokens(seen_users[column], missing)
  return vocabs


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
  vocabs = {"user_id": sorted_tokens(train["user_id"].unique()),
            "item_id": sorted_tokens(train["item_id"].unique())}
  vocabs.update(feature_vocabularies(vocabs["item_id"], vocabs["user_id"], items, users,
                                     ITEM_VOCAB_COLUMNS, USER_VOCAB_COLUMNS,
                                     ITEM_LIST_VOCAB_COLUMNS))
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
