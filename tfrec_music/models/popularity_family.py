"""The popularity baseline as a trainable, exportable family (`--model popularity`).

The recommender idea: recommend the most-played training tracks to everyone.
The export's `serving_default(user_id)` answers every user id, known,
unknown or empty, with the same ranking; `top_k` above the catalogue is
clamped to the catalogue (every track once), so identical rows get identical
outputs (`tests/test_serving_fallbacks_playlist.py`).
"""

import dataclasses
from typing import Any, Dict

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
    """SavedModel with `serving_default`: user_id -> top-k item ids and scores."""
    module = self.model.serving_module(self.config.top_k)
    tf.saved_model.save(module, directory, signatures={"serving_default": module.serve})
    return {"serving_default": "user_id [batch] string -> item_ids [batch, k], scores [batch, k]"}
