"""The SavedModel of an ItemKNN export."""

import scipy.sparse as sp

from tfrec_music.models.item_item import HistoryServingModule
from tfrec_music.models.itemknn.network import NeighbourProduct
from tfrec_music.prepare.prepared import PreparedData


def serving_module(matrix: sp.csr_matrix, prepared: PreparedData, weighting: str,
                   k: int) -> HistoryServingModule:
  """`serving_default(user_id)` and `recommend(user_id, history, weights, exclude)`.

  Args:
    matrix: [n_items, n_items] neighbour matrix the model was scored with.
    prepared: Prepared data (catalogue, histories up to the test point).
    weighting: How play counts become x_ui.
    k: Results per request.
  """
  return HistoryServingModule(NeighbourProduct(matrix), prepared, weighting, k)
