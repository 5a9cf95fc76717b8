"""What a model family provides to the one training pipeline.

`tfrec_music.training.run` loads, prepares, then for the chosen family calls
`fit`, evaluates `score_fn` beside the baselines, and exports with `save`.
A new model implements these four methods and reuses everything else.
"""

import abc
import argparse
import dataclasses
import logging
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfrec_music.prepare.prepared import PreparedData

# Retrieval baselines evaluated beside every retrieval model (registry names).
NEIGHBOURHOOD_BASELINES = ("itemknn", "ease")
RETRIEVAL_TABLE_KEYS = ("test/all/hr@10", "test/all/ndcg@10", "test/all/recall@50",
                        "test/cold/hr@10", "test/warm/hr@10", "test/cold_user/hr@10")


@dataclasses.dataclass
class EvalContext:
  """What evaluation may use besides the trained family.

  Attributes:
    oracle: The synthetic generator's true scorer (None on real data).
    loaded: The `LoadedData` the run started from (tables, playlists, ...).
  """

  oracle: Optional[Any] = None
  loaded: Optional[Any] = None


class ModelFamily(abc.ABC):
  """One recommender family plugged into the pipeline.

  Attributes:
    name: Folder name under the export dir, e.g. `"two_tower"`.
    config_class: Frozen dataclass of the family's hyperparameters.
    config_module: The family's `config` module; its `presets()`,
      `add_arguments(group)` and `search_space(hp)`, where defined, are the
      family's (a family overrides the classmethods only to do more).
  """

  name: str = ""
  config_class: type = None
  config_module: Any = None
  # Metric keys of the table the CLI prints (test split).
  table_keys: Sequence[str] = RETRIEVAL_TABLE_KEYS
  # `PrepareConfig` fields this family needs changed (e.g. a ratio split).
  prepare_overrides: Mapping[str, Any] = {}
  # The validation metric tuning optimizes, and its direction ("max" or "min").
  objective: Tuple[str, str] = ("valid/all/hr@10", "max")
  # Keras families checkpoint every this many steps (0: every epoch); set by the run.
  checkpoint_every: int = 0
  # Where Keras families keep their resumable backup (None: `<job_dir>/backup`); one
  # folder shared by all workers of a multi-worker run.
  backup_dir: Optional[str] = None

  def __init__(self, config: Any, prepared: PreparedData):
    self.config = config
    self.prepared = prepared

  @classmethod
  def make_config(cls, preset: str, overrides: Mapping[str, Any]) -> Any:
    """Builds the config from a named preset plus overrides (flags, hparams file).

    A preset name is the family's own or one of the synthetic catalogue's
    (`tiny`, `default`, `large`: `--preset` names both); a catalogue preset the
    family has no settings for uses the family's `default` settings.

    Raises:
      ValueError: the preset is unknown, or an override names no field of the config.
    """
    from tfrec_music.data.synthetic.config import PRESETS  # pylint: disable=g-import-not-at-top
    names = sorted(set(cls.presets()) | set(PRESETS))
    if preset not in names:
      raise ValueError(f"`preset` should be one of {names}. Received: `preset` = {preset!r}.")
    base = cls.presets().get(preset, cls.presets().get("default", {}))
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"Unknown hyperparameter(s) {unknown} for model `{cls.name}`. "
                       f"Known: {sorted(fields)}.")
    return cls.config_class(**{**base, **overrides})

  @classmethod
  def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
    """Adds the family's own CLI flags; each flag's `dest` names a config field.

    Flags must default to None (unset: the preset's value). By default the
    `add_arguments(group)` of `config_module`, if it has one.
    """
    if hasattr(cls.config_module, "add_arguments"):
      cls.config_module.add_arguments(group)

  @classmethod
  def select_tables(cls, loaded: Any, config: Any) -> Any:
    """The canonical tables this family trains on (default: `loaded.tables`).

    The playlist model, for instance, trains on playlist-track rows instead of
    listening events.
    """
    del config
    return loaded.tables

  def evaluate(self, context: EvalContext) -> Dict[str, Dict[str, float]]:
    """Metrics by scorer name: the model and the baselines beside it.

    The default is the full-ranking retrieval protocol for the model, the
    popularity, ItemKNN and EASE baselines (their default configs; EASE is
    skipped, with a logged reason, over its catalogue limit) and (on
    synthetic data) the oracle. Families with other tasks (ratings,
    playlists) override this and reuse `tfrec_music.evaluation`.
    """
    from tfrec_music.evaluation.protocol import evaluate_scorer  # pylint: disable=g-import-not-at-top
    from tfrec_music.evaluation.protocol import fixed_scorer  # pylint: disable=g-import-not-at-top
    from tfrec_music.models.popularity import PopularityModel  # pylint: disable=g-import-not-at-top
    from tfrec_music.models.registry import get_family  # pylint: disable=g-import-not-at-top
    metrics = {"model": evaluate_scorer(self.score_fn(), self.prepared)}
    if self.name != "popularity":
      metrics["popularity"] = evaluate_scorer(
          fixed_scorer(PopularityModel.fit(self.prepared).score_fn()), self.prepared)
    for name in NEIGHBOURHOOD_BASELINES:
      if name == self.name:
        continue
      family_cls = get_family(name)
      try:
        baseline = family_cls(family_cls.make_config("default", {}), self.prepared)
      except ValueError as e:  # EASE over its catalogue limit
        logging.warning("Baseline `%s` skipped: %s", name, e)
        continue
      start = time.perf_counter()
      summary = baseline.fit(None)
      metrics[name] = evaluate_scorer(baseline.score_fn(), self.prepared)
      metrics[name].update(summary.get("selection", {}))
      logging.info("Baseline `%s` fitted and evaluated in %.1fs", name,
                   time.perf_counter() - start)
    if context.oracle is not None:
      metrics["oracle"] = evaluate_scorer(
          fixed_scorer(context.oracle.score_fn(self.prepared.item_ids)), self.prepared)
    return metrics

  @classmethod
  def objective_for(cls, config: Any) -> Tuple[str, str]:
    """The tuning objective of this configuration (default: `objective`).

    Families whose task depends on the config (ALS: explicit ratings are
    scored by RMSE, implicit plays by HR@10) override this.
    """
    del config
    return cls.objective

  @classmethod
  def prepare_overrides_for(cls, config: Any) -> Mapping[str, Any]:
    """`PrepareConfig` fields this configuration needs (default: `prepare_overrides`)."""
    del config
    return cls.prepare_overrides

  @classmethod
  def search_space(cls, hp: Any) -> Dict[str, Any]:
    """Declares the tuning search space on `hp` (a `keras_tuner.HyperParameters`).

    Returns:
      Config overrides built from `hp`'s current values.

    By default the `search_space(hp)` of `config_module`, if it has one.

    Raises:
      NotImplementedError: the family has nothing to tune.
    """
    if hasattr(cls.config_module, "search_space"):
      return cls.config_module.search_space(hp)
    raise NotImplementedError(f"Model `{cls.name}` has no tuning search space.")

  @classmethod
  def stream_train(cls, data_dir: str, config: Any, job_dir: str, *, checkpoint_every: int = 0,
                   backup_dir: Optional[str] = None
                   ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Any], Callable[[str], Any]]:
    """Trains from canonical Parquet shards without loading them whole (`--stream`).

    Args:
      data_dir: Folder of `items.parquet`, optional `users.parquet` and the
        `interactions-*.parquet` shards.
      config: The family's config.
      job_dir: Run folder (logs, checkpoints, materialized shards).
      checkpoint_every: Checkpoint every this many steps (0: every epoch).
      backup_dir: Shared backup folder.

    Returns:
      `(metrics, fit_summary, save_fn)`: metrics as `{"model": {...},
      "popularity": ...}` keyed `<split>/<slice>/<metric>`, what training reports
      (examples/s, epochs, ...), and the function that writes the trained
      model's SavedModel into a folder (the export contract of `save`).

    Raises:
      ValueError: the family cannot stream.
    """
    raise ValueError(f"`--stream` is not available for `--model {cls.name}`; models that train "
                     "from shards: two_tower, dcn. Drop `--stream` to load the data in memory.")

  def validation_metrics(self) -> Dict[str, float]:
    """Validation-split metrics only (what tuning and early stopping may look at).

    The default is the full-ranking protocol on the `valid` split; families
    whose objective is not a retrieval metric override it.
    """
    from tfrec_music.evaluation.protocol import evaluate_scorer  # pylint: disable=g-import-not-at-top
    return evaluate_scorer(self.score_fn(), self.prepared, splits=("valid",), cold_users=False)

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """Named presets: preset name -> config overrides.

    By default `config_module.presets()` (or its `PRESETS`), if it has one.
    """
    if hasattr(cls.config_module, "presets"):
      return cls.config_module.presets()
    return dict(getattr(cls.config_module, "PRESETS", {}))

  @abc.abstractmethod
  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains on `prepared.train` (validating on `prepared.valid`); returns a summary."""

  @abc.abstractmethod
  def score_fn(self) -> Callable[[str], Callable[[Sequence[str]], np.ndarray]]:
    """Scorer factory: split -> batched `user ids [B] -> [B, n_items]` scores."""

  @abc.abstractmethod
  def save(self, directory: str) -> Dict[str, str]:
    """Writes the SavedModel(s) into `directory`; returns signature descriptions."""
