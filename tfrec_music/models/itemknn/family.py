"""`--model itemknn`: item-based k-nearest neighbours as a model family."""

import time
from typing import Any, Dict

from tfrec_music.models.item_item import HistoryServingModule
from tfrec_music.models.item_item import ItemItemFamily
from tfrec_music.models.item_item import select_on_validation
from tfrec_music.models.item_item import user_item_matrix
from tfrec_music.models.itemknn import config as config_lib
from tfrec_music.models.itemknn import network
from tfrec_music.models.itemknn import serving


class ItemKNNFamily(ItemItemFamily):
  """Recommends the tracks most similar (cosine over listeners) to the user's tracks."""

  name = "itemknn"
  config_class = config_lib.ItemKNNConfig
  config_module = config_lib

  matrix = None

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Finds every item's neighbours, keeps the K with the best validation HR@10."""
    del job_dir  # nothing to write: the model is the neighbour matrix
    start = time.perf_counter()
    _, train = user_item_matrix(self.prepared, self.prepared.train, self.config.weighting)
    indices, sims = network.cosine_neighbours(train, max(self.config.neighbours),
                                              self.config.shrink)
    neighbour_seconds = time.perf_counter() - start

    def scorer_for(k):
      matrix = network.neighbour_matrix(indices, sims, k)
      return self.histories.with_product(lambda histories: (histories @ matrix).toarray())

    best, self.selection = select_on_validation(self.prepared, "neighbours",
                                                self.config.neighbours, scorer_for)
    self.matrix = network.neighbour_matrix(indices, sims, best)
    return {"neighbours": int(best), "shrink": self.config.shrink,
            "weighting": self.config.weighting, "similarities": int(self.matrix.nnz),
            "neighbour_seconds": round(neighbour_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3), "selection": self.selection}

  def product(self):
    """Histories times the chosen neighbour matrix."""
    if self.matrix is None:
      raise ValueError("`fit` must run before scoring or saving.")
    matrix = self.matrix
    return lambda histories: (histories @ matrix).toarray()

  def serving_module(self) -> HistoryServingModule:
    """Neighbour lists and histories in a `HistoryServingModule`."""
    self.product()  # fitted?
    return serving.serving_module(self.matrix, self.prepared, self.config.weighting,
                                  self.config.top_k)
