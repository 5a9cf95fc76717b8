"""The SavedModel of an EASE export."""

import numpy as np

from tfrec_music.models.ease.network import DenseProduct
from tfrec_music.models.item_item import HistoryServingModule
from tfrec_music.prepare.prepared import PreparedData


def serving_module(weights: np.ndarray, prepared: PreparedData, weighting: str,
                   k: int) -> HistoryServingModule:
  """`serving_default(user_id)` and `recommend(user_id, history, weights, exclude)`.

  Args:
    weights: [n_items, n_items] B the model was scored with.
    prepared: Prepared data (catalogue, histories up to the test point).
    weighting: How play counts become x_ui.
    k: Results per request.
  """
  return HistoryServingModule(DenseProduct(weights), prepared, weighting, k)
