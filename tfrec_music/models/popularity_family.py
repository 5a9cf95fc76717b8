"""The popularity baseline as a trainable, exportable family (`--model popularity`).

The recommender idea: recommend the most-played training tracks to everyone.
The export's `serving_default(user_id)` answers every user id with the same
ranking, minus a known user's own tracks up to the test point; unknown or
empty ids get the whole ranking. `top_k` above the catalogue is clamped to the
catalogue, so identical rows get identical outputs.
"""

import dataclasses
from typing import Any, Dict

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.evaluation.protocol import fixed_scorer
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.popularity import PopularityModel


@dataclasses.dataclass(frozen=True)
class PopularityConfig:
  """Popularity settings.

  Attributes:
    top_k: Items returned per request by the export.
  """

  top_k: int = 100


class PopularityFamily(ModelFamily):
  """Most-played training tracks for everyone."""

  name = "popularity"
  config_class = PopularityConfig

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Counts plays per item in the training split."""
    self.model = PopularityModel.fit(self.prepared)
    return {"items": len(self.model.item_ids)}

  def score_fn(self):
    """Same scores for every user and split."""
    return fixed_scorer(self.model.score_fn())

  def save(self, directory: str) -> Dict[str, str]:
    """SavedModel with `serving_default`: user_id -> top-k item ids and scores.

    Known users' tracks up to the test point (train + valid) are excluded, as
    the evaluation excludes them, so the export reproduces the test metrics.
    """
    from tfrec_music.export import retrieval  # pylint: disable=g-import-not-at-top
    from tfrec_music.models import history  # pylint: disable=g-import-not-at-top
    prepared = self.prepared
    k = min(self.config.top_k, prepared.n_items)
    known = np.asarray(sorted(set(prepared.train["user_id"]) | set(prepared.valid["user_id"])))
    seen = history.seen_matrix(known, pd.concat([prepared.train, prepared.valid]))
    fallback_ids, fallback_scores = self.model.top_k(k)
    # Every query is the vector [1]: a track's score is its popularity score.
    module = retrieval.RetrievalServingModule(
        _ones_query, {}, self.model.item_scores[:, None], prepared.item_ids, "exact", known, {},
        fallback_ids, fallback_scores, k, stored_exclude=seen)
    retrieval.save_retrieval_module(module, directory)
    return {"serving_default": "user_id [batch] string -> item_ids [batch, k], scores [batch, k] "
                               "(known users' own tracks excluded)",
            "recommend": "user_id [B], exclude [B, E] -> item_ids, scores, fallback"}


def _ones_query(features: Dict[str, tf.Tensor]) -> tf.Tensor:
  """[B, 1] ones: the popularity score of a track is the same for every user."""
  return tf.ones([tf.shape(features["user_id"])[0], 1], tf.float32)
