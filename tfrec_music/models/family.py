"""What a model family provides to the one training pipeline.

`tfrec_music.training.run` loads, prepares, then for the chosen family calls
`fit`, evaluates `score_fn` beside the baselines, and exports with `save`.
A new model implements these four methods and reuses everything else.
"""

import abc
import dataclasses
from typing import Any, Callable, Dict, Mapping, Sequence

import numpy as np

from tfrec_music.prepare.prepared import PreparedData


class ModelFamily(abc.ABC):
  """One recommender family plugged into the pipeline.

  Attributes:
    name: Folder name under the export dir, e.g. `"two_tower"`.
    config_class: Frozen dataclass of the family's hyperparameters.
  """

  name: str = ""
  config_class: type = None

  def __init__(self, config: Any, prepared: PreparedData):
    self.config = config
    self.prepared = prepared

  @classmethod
  def make_config(cls, preset: str, overrides: Mapping[str, Any]) -> Any:
    """Builds the config from a named preset plus overrides (flags, hparams file).

    Raises:
      ValueError: an override names no field of the config.
    """
    base = cls.presets().get(preset, cls.presets().get("default", {}))
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"Unknown hyperparameter(s) {unknown} for model `{cls.name}`. "
                       f"Known: {sorted(fields)}.")
    return cls.config_class(**{**base, **overrides})

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """Named presets: preset name -> config overrides."""
    return {}

  @abc.abstractmethod
  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains on `prepared.train` (validating on `prepared.valid`); returns a summary."""

  @abc.abstractmethod
  def score_fn(self) -> Callable[[str], Callable[[Sequence[str]], np.ndarray]]:
    """Scorer factory: split -> batched `user ids [B] -> [B, n_items]` scores."""

  @abc.abstractmethod
  def save(self, directory: str) -> Dict[str, str]:
    """Writes the SavedModel(s) into `directory`; returns signature descriptions."""
