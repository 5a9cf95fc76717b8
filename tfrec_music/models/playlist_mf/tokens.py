"""Words of playlist names and track titles: one tokenizer for training and serving,
and the -1-padded index rows that token codes and seed tracks are passed as."""

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

NAME_TOKEN_PATTERN = r"[^\p{L}\p{N}]+"


def name_tokens(names: tf.Tensor) -> tf.RaggedTensor:
  """Texts [B] -> ragged tokens [B, None]: lower case, split on non-alphanumerics."""
  text = tf.strings.lower(names, encoding="utf-8")
  text = tf.strings.regex_replace(text, NAME_TOKEN_PATTERN, " ")
  return tf.strings.split(tf.strings.strip(text))


def token_lists(texts: Sequence[str]) -> List[List[str]]:
  """Texts [N] -> their tokens as Python strings (the `name_tokens` split)."""
  if not len(texts):
    return []
  ragged = name_tokens(tf.constant(np.asarray(texts).astype(str), tf.string))
  return [[t.decode("utf-8") for t in row] for row in ragged.to_list()]


def token_codes(texts: Sequence[str], min_count: int) -> Tuple[np.ndarray, List[str]]:
  """Texts -> (codes [N, L] of each text's distinct kept tokens, -1 padded; vocabulary).

  A token is kept when at least `min_count` texts hold it; the vocabulary is
  sorted, so codes do not depend on the order of the texts.

  Example: texts ["chill rock 1", "chill pop 2", "Rock!"], min_count 2 ->
  vocabulary ["chill", "rock"], codes [[0, 1], [0, -1], [1, -1]].
  """
  return label_codes(token_lists(texts), min_count)


def tag_codes(tags: Sequence[Any], min_count: int) -> Tuple[np.ndarray, List[str]]:
  """A list-valued column (a track's tags; None or a scalar: no tags) -> `label_codes`.

  Example: [["rock", "chill", "rock"], ["chill"], None], min_count 2 ->
  vocabulary ["chill"], codes [[0], [0], [-1]].
  """
  return label_codes([[str(t) for t in row] if isinstance(row, (list, tuple, np.ndarray))
                      else [] for row in tags], min_count)


def label_codes(rows: Sequence[Sequence[str]], min_count: int) -> Tuple[np.ndarray, List[str]]:
  """Label lists -> (codes [N, L] of each row's distinct kept labels, -1 padded; vocabulary).

  A label is kept when at least `min_count` rows hold it (a row holding it twice
  counts once); the vocabulary is sorted, so codes do not depend on row order.
  """
  rows = [set(row) for row in rows]
  counts: Dict[str, int] = {}
  for row in rows:
    for label in row:
      counts[label] = counts.get(label, 0) + 1
  vocab = sorted(t for t, c in counts.items() if c >= min_count)
  index = {t: i for i, t in enumerate(vocab)}
  return pad_indices([sorted(index[t] for t in row if t in index) for row in rows]), vocab


def pad_indices(rows: Sequence[Sequence[int]]) -> np.ndarray:
  """[B] index rows -> [B, L] int64 padded with -1 (L = the longest row, >= 1)."""
  width = max([len(row) for row in rows] + [1])
  out = np.full((len(rows), width), -1, np.int64)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out
