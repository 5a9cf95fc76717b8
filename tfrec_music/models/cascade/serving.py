"""The cascade's export: one SavedModel, retrieval and re-rankers inside.

`serving_default(user_id)` (stored history of known users; unknown users get
the popularity fallback) and `recommend(user_id, history, <user features>,
exclude)` (all raw) -> `item_ids` [B, k], `scores` [B, k], `fallback` [B].
The re-rankers' history features are computed inside the graph. See the
package docstring for the serving fallbacks.
"""

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.export import retrieval as retrieval_export
from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.export.saved_model import save_module
from tfrec_music.models import history as history_lib
from tfrec_music.models.rerank_features import HistoryFeatures
from tfrec_music.prepare.prepared import PreparedData


class CascadeServingModule(tf.Module):
  """Raw user features -> two-tower top-C -> DCN re-rank -> top-k ids and scores.

  Args:
    retrieval: `RetrievalServingModule` returning the top C candidates.
    rankers: `DCNServingModule`s (implicit labels) with the catalogue's
      features, one per re-ranker of the ensemble (a candidate's logit is
      their mean); they share one vocabulary.
    query_signature: Raw query inputs besides `user_id` (history, country...).
    blend: Weight of the retrieval score in the final score.
    temperature: The two-tower softmax temperature (retrieval logit scale).
    k: Results served.
    history_features: The re-ranker's `HistoryFeatures` (None: it reads none),
      computed in the graph from the request's `history` (`recommend`) or the
      stored history of a known user (`serving_default`).
  """

  def __init__(self, retrieval, rankers, query_signature: Dict[str, tf.TensorSpec],
               blend: float, temperature: float, k: int,
               history_features: Optional[HistoryFeatures] = None):
    super().__init__()
    if not isinstance(rankers, (list, tuple)):
      rankers = [rankers]
    self.retrieval, self.rankers = retrieval, list(rankers)
    self.ranker = self.rankers[0]  # its vocabularies encode every ranker's inputs
    self.history_features = history_features
    if history_features is not None:
      # The re-ranker's own signatures score pairs without a history, which
      # this network cannot: only its tables, encoder and network are kept.
      for ranker in self.rankers:
        ranker.serve = ranker.score_ids = None
    self.k = int(min(k, retrieval.k))
    self.weight = tf.constant(float(blend) / float(temperature), tf.float32)
    self.inverse_temperature = tf.constant(1.0 / float(temperature), tf.float32)
    self.user_columns = [c for c in ranker.spec.user_categorical if c in query_signature]
    recommend_spec = dict(query_signature)
    recommend_spec["user_id"] = tf.TensorSpec([None], tf.string, name="user_id")
    recommend_spec["exclude"] = tf.TensorSpec([None, None], tf.string, name="exclude")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      return self._rerank(user_id, self.retrieval.serve(user_id), {},
                          self._stored_history(user_id))

    @tf.function(input_signature=[recommend_spec])
    def recommend(inputs):
      given = {c: inputs[c] for c in self.user_columns}
      return self._rerank(inputs["user_id"], self.retrieval.recommend(inputs), given,
                          inputs.get("history"))

    self.serve, self.recommend = serve, recommend

  def _stored_history(self, user_id):
    """[B, H] stored history of known users ("" for unknown ones), as the retrieval reads it."""
    if "history" not in self.retrieval.stored:
      return None
    rows = self.retrieval.user_table.lookup(user_id)
    history = tf.gather(self.retrieval.stored["history"], tf.maximum(rows, 0))
    return tf.where((rows >= 0)[:, tf.newaxis], history, tf.fill(tf.shape(history), ""))

  def _logits(self, users, ids, given, history):
    """[B, C] re-ranker logits of the candidates `ids` [B, C] (as `HardNegativeDCN` predicts)."""
    batch, c = tf.shape(ids)[0], tf.shape(ids)[1]
    flat_users = tf.reshape(tf.tile(users[:, tf.newaxis], [1, c]), [-1])
    flat_ids = tf.reshape(ids, [-1])
    raw = self.ranker.features_from_ids(flat_users, flat_ids)
    for column, values in given.items():
      raw[column] = tf.reshape(tf.tile(values[:, tf.newaxis], [1, c]), [-1])
    extra = None
    if self.history_features is not None:
      if history is None:
        history = tf.fill([batch, 1], "")
      table = self.retrieval.item_table  # catalogue id -> catalogue row (-1: unknown)
      rows = tf.repeat(table.lookup(history), c, axis=0)  # [B * C, H]
      extra = {"dense": self.history_features(rows, table.lookup(flat_ids)),
               **self.history_features.history_indices(rows)}
    logits = tf.add_n([ranker._predict(raw, extra)["logit"]  # pylint: disable=protected-access
                       for ranker in self.rankers]) / float(len(self.rankers))
    return tf.reshape(logits, [batch, c])

  def _rerank(self, user_id, stage_one, given, history=None):
    ids, scores, fallback = stage_one["item_ids"], stage_one["scores"], stage_one["fallback"]
    logits = self._logits(user_id, ids, given, history)
    c = tf.shape(ids)[1]
    final = logits + self.weight * scores
    # Users the re-ranker never trained on (new ids served from their history,
    # "") keep the retrieval order, as in `CascadeFamily._final`.
    unknown_user = self.ranker.encoder.lookups["user_id"](user_id) < 2
    final = tf.where(unknown_user[:, tf.newaxis], self.inverse_temperature * scores, final)
    # Slots the retrieval stage left empty (id "": every other track excluded) and
    # excluded tracks (score -inf) stay last, whatever the blend.
    empty_in = tf.equal(ids, "") | (tf.math.is_inf(scores) & (scores < 0))
    final = tf.where(empty_in, tf.constant(-np.inf, tf.float32), final)
    # Fallback users (no history, unknown id) keep the popularity order.
    position = -tf.cast(tf.range(c), tf.float32)[tf.newaxis, :]
    final = tf.where(fallback[:, tf.newaxis], position + tf.zeros_like(final), final)
    top_scores, top = tf.math.top_k(final, k=self.k)
    top_ids = tf.gather(ids, top, batch_dims=1)
    # Slots left once the excluded tracks are set aside (k near the catalogue) are
    # empty, as in the ALS and playlist exports: id "" and the lowest float32 score.
    empty = tf.math.is_inf(top_scores) & (top_scores < 0)
    return {"item_ids": tf.where(empty, tf.constant(""), top_ids),
            "scores": tf.where(empty, tf.constant(EMPTY_SCORE, tf.float32), top_scores),
            "fallback": fallback}

  def signatures(self) -> Dict[str, Callable]:
    """`serving_default` (user id) and `recommend` (raw features)."""
    return {"serving_default": self.serve, "recommend": self.recommend}


def build_serving_module(retrieval, rankers: Sequence[Any], prepared: PreparedData,
                         candidates: int, top_k: int, blend: float, temperature: float,
                         history_features: Optional[HistoryFeatures]
                         ) -> CascadeServingModule:
  """The cascade's serving module (raw user features in, ranked track ids out).

  Args:
    retrieval: The fitted `TwoTowerFamily` (the candidates' stage).
    rankers: The fitted `HardNegativeDCN`s of the ensemble.
    prepared: Prepared data (catalogue, users, histories up to the test point).
    candidates: Tracks retrieved per user (at most the catalogue).
    top_k: Results served.
    blend: Weight of the retrieval score in the final score.
    temperature: The two-tower softmax temperature.
    history_features: The re-rankers' `HistoryFeatures` (None: none).
  """
  from tfrec_music.models.popularity import PopularityModel  # pylint: disable=g-import-not-at-top
  r = retrieval
  c = min(candidates, prepared.n_items)
  popular_ids, popular_scores = PopularityModel.fit(prepared).top_k(c)
  known = np.asarray(prepared.vocabularies["user_id"])
  stored = r.raw_query_features(known, "test")
  stored.pop("user_id")
  # Everything played up to the test point is excluded, as the evaluation does.
  seen = history_lib.seen_matrix(known, pd.concat([prepared.train, prepared.valid]))
  stage_one = retrieval_export.RetrievalServingModule(
      r.query_model(), r.query_signature(), r.item_embeddings(), prepared.item_ids,
      "exact", known, stored, popular_ids, popular_scores, c, stored_exclude=seen)
  return CascadeServingModule(stage_one, [ranker.serving_module() for ranker in rankers],
                              r.query_signature(), blend, temperature, top_k, history_features)


def save_serving_module(module: CascadeServingModule, directory: str,
                        user_features: Sequence[str]) -> Dict[str, str]:
  """Writes the cascade's SavedModel; returns its signatures' descriptions.

  Args:
    module: The serving module.
    directory: Export folder.
    user_features: The retrieval's raw user feature columns (`recommend` inputs).
  """
  save_module(module, directory, signatures=module.signatures())
  k = module.k
  return {"serving_default": f"user_id [B] -> item_ids [B, {k}], scores [B, {k}], "
                             "fallback [B] (stored history of known users; popularity "
                             "for unknown users)",
          "recommend": "user_id [B], history [B, H] (padded with ''), "
                       + "".join(f"{c} [B], " for c in user_features)
                       + f"exclude [B, E] -> item_ids [B, {k}], scores, fallback"}
