"""Keras Tuner search over the model families the trainer uses.

keras-tuner 1.4.8 type-checks Keras 3 models in its default `Tuner.run_trial`,
and our models are tf-keras (Keras 2) models. So `FamilyTuner` derives from
Keras Tuner's `BaseTuner` and overrides `run_trial`: it builds the family's
config from the trial's hyperparameters, fits the family on the prepared data
(prepared once per process), and returns the family's validation objective.
Test metrics are never computed during a search.

Everything else is Keras Tuner's own machinery: the oracles (random,
Bayesian, Hyperband), the project folder that lets an interrupted search
resume without redoing finished trials, and the chief/worker mode driven by
`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`.
"""

import dataclasses
import json
import logging
import os
import random
import time
from typing import Any, Dict, Mapping, Optional, Type

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api

from tfrec_music import io
from tfrec_music.export.saved_model import write_json
from tfrec_music.hypertune import objective_tag
from tfrec_music.models.family import ModelFamily
from tfrec_music.prepare.prepared import PreparedData

TUNERS = ("random", "bayesian", "hyperband")


class FamilySpace(kt.HyperModel):
  """Declares a family's search space to the oracle (it never builds a model itself)."""

  def __init__(self, family_cls: Type[ModelFamily]):
    super().__init__(name=family_cls.name)
    self.family_cls = family_cls

  def build(self, hp):
    """Declares the space; `FamilyTuner.run_trial` builds the real model."""
    self.family_cls.search_space(hp)
    return None

  def declare_hyperparameters(self, hp):
    """Registers every hyperparameter so the oracle (chief included) knows the space."""
    self.family_cls.search_space(hp)


def is_chief_oracle() -> bool:
  """True in the process that serves the oracle in distributed tuning."""
  return ("KERASTUNER_ORACLE_IP" in os.environ
          and os.environ.get("KERASTUNER_TUNER_ID") == "chief")


class FamilyTuner(kt.engine.base_tuner.BaseTuner):
  """Runs each trial as `family_cls(config, prepared).fit(...)` and scores it on validation.

  Args:
    oracle: A Keras Tuner oracle.
    family_cls: The model family to tune.
    prepared: Prepared data shared by every trial (None on the oracle chief).
    preset: Model preset the trials start from.
    fixed: Config overrides every trial keeps (flags not under search).
    seed: Seed of every trial's initialization and shuffling (its first
      execution's; execution e uses `seed + e`).
    directory: Tuning folder (the job dir); trials and state live here.
    project_name: Sub-folder of this search.
    overwrite: Start afresh instead of resuming.
    executions_per_trial: Fits per configuration, each with its own model
      seed on the same data split; the objective is their mean, so a trial's
      score is less a matter of initialization luck (Keras Tuner's own
      `executions_per_trial`).
  """

  def __init__(self, oracle, family_cls: Type[ModelFamily], prepared: Optional[PreparedData],
               preset: str, fixed: Mapping[str, Any], seed: int, directory: str,
               project_name: str, overwrite: bool = False, executions_per_trial: int = 1):
    if int(executions_per_trial) < 1:
      raise ValueError("`executions_per_trial` should be a positive integer. Received: "
                       f"`executions_per_trial` = {executions_per_trial!r}.")
    self.family_cls = family_cls
    self.prepared = prepared
    self.preset = preset
    self.fixed = dict(fixed)
    self.seed = seed
    self.executions_per_trial = int(executions_per_trial)
    self.objective_metric = family_cls.objective_for(family_cls.make_config(preset, fixed))
    super().__init__(oracle=oracle, hypermodel=FamilySpace(family_cls), directory=directory,
                     project_name=project_name, overwrite=overwrite)

  def trial_overrides(self, hp) -> Dict[str, Any]:
    """Config overrides of one trial: fixed flags, then the searched values."""
    overrides = {**self.fixed, **self.family_cls.search_space(hp)}
    if "tuner/epochs" in hp.values:  # Hyperband's budget
      overrides["epochs"] = int(hp.values["tuner/epochs"])
    return overrides

  def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
    """Builds, fits and scores one configuration; returns `{objective: mean value}`.

    With several executions each fits in `<trial dir>/execution_<e>` with
    model seed `seed + e` (same data split); `result.json` keeps each
    execution's validation metrics and their mean.
    """
    del args, kwargs
    hp = trial.hyperparameters
    overrides = self.trial_overrides(hp)
    trial_dir = self.get_trial_dir(trial.trial_id)
    metric, _ = self.objective_metric
    start = time.perf_counter()
    runs = []
    for execution in range(self.executions_per_trial):
      seed = self.seed + execution
      run_dir = (trial_dir if self.executions_per_trial == 1
                 else io.join(trial_dir, f"execution_{execution}"))
      metrics = self._fit_once(overrides, seed, run_dir)
      if metric not in metrics:
        raise kt.errors.FailedTrialError(
            f"Model `{self.family_cls.name}` did not report its objective `{metric}`; "
            f"it reported {sorted(metrics)}.")
      runs.append({"seed": seed, "validation": metrics})
    seconds = time.perf_counter() - start
    mean = {k: float(np.mean([r["validation"][k] for r in runs]))
            for k in runs[0]["validation"]
            if all(k in r["validation"] for r in runs)}
    value = mean[metric]
    _log_hparams(io.join(self.project_dir, "logs", trial.trial_id), hp.values, metric, value,
                 seconds)
    result = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
              "hparams": _jsonable(overrides), "validation": mean, "seconds": seconds}
    if self.executions_per_trial > 1:
      result["executions"] = runs
      result["objective_std"] = float(np.std([r["validation"][metric] for r in runs]))
    write_json(io.join(trial_dir, "result.json"), result)
    logging.info("Trial %s: %s = %.4f (%s) in %.0fs (%s)", trial.trial_id, metric, value,
                 ", ".join(f"{r['validation'][metric]:.4f}" for r in runs), seconds,
                 json.dumps(_jsonable(hp.values)))
    return {objective_tag(metric): value}

  def _fit_once(self, overrides: Mapping[str, Any], seed: int, run_dir: str) -> Dict[str, float]:
    """Fits the configuration with model seed `seed`; its validation metrics."""
    config = self.family_cls.make_config(self.preset, dict(overrides))
    if "seed" in {f.name for f in dataclasses.fields(config)}:
      config = dataclasses.replace(config, seed=seed)
    random.seed(seed)
    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)
    family = self.family_cls(config, self.prepared)
    family.fit(run_dir)
    return {k: float(v) for k, v in family.validation_metrics().items()}

  def on_trial_end(self, trial):
    """Logs why a trial failed (Keras Tuner only stores the traceback)."""
    if trial.status in ("FAILED", "INVALID") and getattr(trial, "message", None):
      logging.error("Trial %s failed:\n%s", trial.trial_id, trial.message)
    super().on_trial_end(trial)

  def best_overrides(self) -> Dict[str, Any]:
    """Config overrides of the best finished trial."""
    best = self.oracle.get_best_trials(1)
    if not best:
      raise RuntimeError("No trial finished, so there is no best configuration. "
                         "Check the trial errors above.")
    return self.trial_overrides(best[0].hyperparameters)


def _jsonable(values: Mapping[str, Any]) -> Dict[str, Any]:
  out = {}
  for k, v in values.items():
    if isinstance(v, tuple):
      v = list(v)
    elif isinstance(v, np.generic):
      v = v.item()
    out[k] = v
  return out


def _log_hparams(log_dir: str, values: Mapping[str, Any], metric: str, value: float,
                 seconds: float) -> None:
  """One run of TensorBoard's HParams dashboard: the trial's values and its objective."""
  hparams = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
             for k, v in values.items()}
  with tf.summary.create_file_writer(log_dir).as_default():
    hp_api.hparams(hparams)
    tf.summary.scalar(objective_tag(metric), value, step=1)
    tf.summary.scalar("trial_seconds", seconds, step=1)


def tunable_models() -> list:
  """Names of the registered families that declare a search space."""
  from tfrec_music.models.registry import FAMILIES  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.registry import get_family  # pylint: disable=g-import-not-at-top
  names = []
  for name in FAMILIES:
    try:
      get_family(name).search_space(kt.HyperParameters())
    except (NotImplementedError, ImportError):
      continue
    names.append(name)
  return names


class _DefaultsFirst:
  """Oracle mixin: the first trial of a search runs the space's defaults.

  The families declare each hyperparameter's default as the preset's value,
  so trial 0 is the hand-tuned configuration, scored under the same
  conditions as every other trial: the search's best is compared with the
  defaults inside one search, and the search never reports a best below them.
  """

  def populate_space(self, trial_id):
    """Defaults for the first trial of a fresh search; the oracle's choice after."""
    if not self.trials and self.hyperparameters.space:
      values = {hp.name: hp.default for hp in self.hyperparameters.space}
      return {"status": "RUNNING", "values": values}
    return super().populate_space(trial_id)


class DefaultsFirstRandomSearchOracle(_DefaultsFirst, kt.oracles.RandomSearchOracle):
  """Random search whose first trial is the defaults."""


class DefaultsFirstBayesianOracle(_DefaultsFirst, kt.oracles.BayesianOptimizationOracle):
  """Bayesian optimization whose first trial is the defaults."""


def make_oracle(tuner: str, family_cls: Type[ModelFamily], max_trials: int, seed: int,
                max_epochs: int = 12, config: Any = None):
  """The Keras Tuner oracle of `--tuner` with the family's objective for `config`.

  Raises:
    ValueError: unknown tuner name.
  """
  metric, direction = (family_cls.objective_for(config) if config is not None
                       else family_cls.objective)
  objective = kt.Objective(objective_tag(metric), direction=direction)
  # Random and Bayesian searches start from the defaults (trial 0); Hyperband's
  # brackets sample their own starting points.
  if tuner == "random":
    return DefaultsFirstRandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed)
  if tuner == "bayesian":
    # Keras Tuner's default starts with 3 random trials per hyperparameter, which
    # is the whole budget of a small search; a third of it (the defaults
    # included) is not model-guided here.
    return DefaultsFirstBayesianOracle(objective=objective, max_trials=max_trials,
                                       num_initial_points=max(2, max_trials // 3), seed=seed)
  if tuner == "hyperband":
    return kt.oracles.HyperbandOracle(objective=objective, max_epochs=max_epochs, factor=3,
                                      hyperband_iterations=1, seed=seed)
  raise ValueError(f"`--tuner` should be one of {TUNERS}. Received: `--tuner` = {tuner!r}.")


def write_best(path: str, family_cls: Type[ModelFamily], tuner: FamilyTuner,
               extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Writes the best configuration as JSON that `trainer.task --hparams FILE` reads."""
  best = tuner.oracle.get_best_trials(1)[0]
  metric, direction = tuner.objective_metric
  finished = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
  payload = {"model": family_cls.name,
             "hparams": _jsonable(tuner.best_overrides()),
             "objective": {"metric": metric, "direction": direction,
                           "value": float(best.score)},
             "trial_id": best.trial_id,
             "trials_completed": len(finished),
             **dict(extra or {})}
  write_json(path, payload)
  return payload
