"""The DCN export: raw (user, track) features or ids in, rating or probability out.

Serving fallbacks are defined inputs, not errors:

- Unknown or empty `user_id` or `item_id`: the network's OOV rows never
  trained, so such a row gets `FallbackBiases` instead (explicit labels: the
  biased baseline alpha + beta_u + beta_i, clipped to the rating range;
  implicit: the training share of positives), with `fallback` true.
- Empty strings in the other categorical features map to the missing-value
  index; NaN numbers sit at the training mean.
- `serving_default` takes every raw feature (a request without one is
  rejected naming the inputs); `score_ids` takes ids only and reads the
  stored features ("" / NaN for unknown ids).
"""

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.export.saved_model import save_module
from tfrec_music.models.dcn.features import raw_signature
from tfrec_music.models.dcn.network import DCNRanker
from tfrec_music.models.dcn.network import RankingEncoder
from tfrec_music.pipeline.lookups import id_table


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


def save_serving_module(module: DCNServingModule, directory: str) -> Dict[str, str]:
  """Writes a DCN SavedModel (`serving_default`, `score_ids`); returns their descriptions.

  One writer for the in-memory and the streamed DCN, so both exports have
  the same serving contract.
  """
  save_module(module, directory, signatures=module.signatures())
  output = ("rating [B] (clipped to the training range)" if module.labels == "explicit"
            else "probability [B], logit [B]")
  output += ", fallback [B] (unknown or empty user or track id: baseline prediction)"
  inputs = ", ".join(f"{c} [B]" for c in raw_signature(module.spec))
  return {"serving_default": f"{inputs} -> {output}",
          "score_ids": f"user_id [B], item_id [B] -> {output} (features of known users and "
                       "tracks from the stored tables)"}
