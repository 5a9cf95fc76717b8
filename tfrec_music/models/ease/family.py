"""`--model ease`: EASE as a model family."""

import time
from typing import Any, Dict

import numpy as np

from tfrec_music.models.ease import config as config_lib
from tfrec_music.models.ease import network
from tfrec_music.models.ease import serving
from tfrec_music.models.item_item import HistoryServingModule
from tfrec_music.models.item_item import ItemItemFamily
from tfrec_music.models.item_item import rows_scorer
from tfrec_music.models.item_item import select_on_validation
from tfrec_music.models.item_item import user_item_matrix
from tfrec_music.prepare.prepared import PreparedData


class EASEFamily(ItemItemFamily):
  """A user's next tracks from a ridge regression of every track on all the others."""

  name = "ease"
  config_class = config_lib.EASEConfig
  config_module = config_lib

  weights = None

  def __init__(self, config: config_lib.EASEConfig, prepared: PreparedData):
    network.check_catalogue(prepared.n_items, config.max_items)
    super().__init__(config, prepared)

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Chooses lambda on validation HR@10 (no items x items matrix needed), then solves B."""
    del job_dir  # nothing to write: the model is B
    start = time.perf_counter()
    index, train = user_item_matrix(self.prepared, self.prepared.train, self.config.weighting)
    solver = network.EASESolver(train)
    has_history = np.diff(train.indptr) > 0

    def scorer_for(lam):
      scores = solver.training_scores(lam)
      score = rows_scorer(index, lambda rows: scores[rows], self.histories.popularity,
                          has_history)
      return lambda split: score

    best, self.selection = select_on_validation(self.prepared, "lambda", self.config.lambdas,
                                                scorer_for, self.config.search)
    select_seconds = time.perf_counter() - start
    self.weights = solver.weights(best)
    return {"lambda": float(best), "weighting": self.config.weighting,
            "user_side_inverse": bool(solver.dual), "select_seconds": round(select_seconds, 3),
            "seconds": round(time.perf_counter() - start, 3), "selection": self.selection}

  def product(self):
    """Histories times B."""
    if self.weights is None:
      raise ValueError("`fit` must run before scoring or saving.")
    weights = self.weights
    return lambda histories: histories @ weights

  def serving_module(self) -> HistoryServingModule:
    """B and the histories in a `HistoryServingModule`."""
    self.product()  # fitted?
    return serving.serving_module(self.weights, self.prepared, self.config.weighting,
                                  self.config.top_k)
