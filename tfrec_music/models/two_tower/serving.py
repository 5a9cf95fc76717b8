"""The two-tower export: retrieval SavedModels (exact and ScaNN), both towers, track vectors."""

import logging
from typing import Any, Dict, Sequence

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.export.saved_model import save_module
from tfrec_music.models import history as history_lib
from tfrec_music.models.features import item_input_signature
from tfrec_music.models.popularity import PopularityModel


def query_model(encoder: tf.keras.layers.Layer, tower: tf.keras.layers.Layer) -> tf.keras.Model:
  """Raw user features -> query vectors (`encoder`, a `QueryEncoder`, then `tower`)."""

  class _QueryModel(tf.keras.Model):

    def __init__(self):
      super().__init__(name="query_model")
      self.encoder, self.tower = encoder, tower

    def call(self, raw):
      return self.tower(self.encoder(raw))

    def get_config(self):
      return {"name": self.name}

  return _QueryModel()


def query_signature(user_features: Sequence[str],
                    history: bool = True) -> Dict[str, tf.TensorSpec]:
  """Raw query inputs besides `user_id` (`history` unless the model has none)."""
  sig = {"history": tf.TensorSpec([None, None], tf.string, name="history")} if history else {}
  for column in user_features:
    sig[column] = tf.TensorSpec([None], tf.string, name=column)
  return sig


def save_export(family: Any, directory: str) -> Dict[str, str]:
  """Writes `family`'s (a trained `TwoTowerCore`) export into `directory`.

  Exact-index SavedModel, ScaNN variant, both towers and the track vectors.

  Returns:
    A description of the signatures and folders.
  """
  from tfrec_music.export import retrieval  # pylint: disable=g-import-not-at-top
  items = family.item_embeddings()
  k = min(family.config.top_k, family.prepared.n_items)
  if k < family.config.top_k:
    logging.warning("top_k=%d is larger than the catalogue (%d items): serving %d.",
                    family.config.top_k, family.prepared.n_items, k)
  popular_ids, popular_scores = PopularityModel.fit(family.prepared).top_k(k)
  known = np.asarray(family.prepared.vocabularies["user_id"])
  stored = family.raw_query_features(known, "test")
  stored.pop("user_id")
  query_model = family.query_model()
  # Everything played up to the test point, as the in-memory evaluation excludes (the
  # streamed family excludes its stored history, as its own evaluation does).
  seen = (history_lib.seen_matrix(known, pd.concat([family.prepared.train,
                                                    family.prepared.valid]))
          if family.exclude_seen_rows else None)
  for kind, path in (("exact", directory), ("scann", io.join(directory, "scann"))):
    module = retrieval.RetrievalServingModule(
        query_model, family.query_signature(), items, family.prepared.item_ids, kind, known,
        stored, popular_ids, popular_scores, k, stored_exclude=seen,
        max_exclusions=max(200, seen.shape[1] if seen is not None else 0))
    retrieval.save_retrieval_module(module, path)
  save_towers(family, directory)
  metadata = {c: family.prepared.items[c].fillna("").astype(str).to_numpy()
              for c in ("title", "artist") if c in family.prepared.items.columns}
  retrieval.save_candidates(io.join(directory, "candidates"), family.prepared.item_ids,
                            items, metadata)
  return {
      "serving_default": "user_id [B] -> item_ids [B, k], scores [B, k], fallback [B] "
                         "(stored history of known users; popularity for unknown users)",
      "recommend": "user_id [B], "
                   + ("history [B, H] (padded with ''), " if family.use_history else "")
                   + "".join(f"{c} [B], " for c in family.user_features)
                   + "exclude [B, E] -> item_ids, scores, fallback",
      "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
      "query_tower/": "serving_default: raw user features -> embedding [B, d]",
      "candidate_tower/": "serving_default: raw track features -> embedding [B, d]",
      "candidates/": "item_ids.txt, embeddings.npy, metadata.tsv"}


def save_towers(family: Any, directory: str) -> None:
  """The query and candidate towers as SavedModels under `directory`."""
  query_model = family.query_model()
  query_spec = dict(family.query_signature())
  query_spec["user_id"] = tf.TensorSpec([None], tf.string, name="user_id")

  @tf.function(input_signature=[query_spec])
  def serve_query(raw):
    return {"embedding": query_model(raw)}

  query_module = tf.Module()
  query_module.model = query_model
  save_module(query_module, io.join(directory, "query_tower"),
              signatures={"serving_default": serve_query})
  encoder, tower = family.item_encoder, family.candidate_tower

  @tf.function(input_signature=[item_input_signature(family.spec)])
  def serve_candidate(raw):
    return {"embedding": tower(encoder(raw))}

  candidate_module = tf.Module()
  candidate_module.encoder, candidate_module.tower = encoder, tower
  save_module(candidate_module, io.join(directory, "candidate_tower"),
              signatures={"serving_default": serve_candidate})
