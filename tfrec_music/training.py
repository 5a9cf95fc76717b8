"""The one training pipeline: load -> prepare -> fit -> evaluate -> export.

Usable from a notebook (`run(RunConfig(model="popularity", preset="tiny"))`)
and behind `python -m trainer.task`.
"""

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional

from tfrec_music import io
from tfrec_music.data.registry import load_data
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import parse_column_mapping
from tfrec_music.evaluation.protocol import format_metrics_table
from tfrec_music.export.saved_model import write_json
from tfrec_music.hypertune import report_objective
from tfrec_music.models.family import EvalContext
from tfrec_music.models.family import RETRIEVAL_TABLE_KEYS
from tfrec_music.models.registry import get_family
from tfrec_music.prepare.prepared import PrepareConfig
from tfrec_music.prepare.prepared import prepare

TABLE_KEYS = RETRIEVAL_TABLE_KEYS


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one training run needs (the CLI flags, resolved).

  Attributes:
    model: Model family name (see `tfrec_music.models.registry.FAMILIES`).
    data: Data source (`synthetic`, `csv`, `parquet`, `lastfm-loved`, `tfds:<name>`).
    data_dir: Folder of file sources.
    preset: Synthetic catalogue preset and model preset (`tiny`, `default`).
    seed: Seed of data generation, splits, initialization and shuffling.
    job_dir: Folder of run outputs (report, metrics, config, logs).
    export_dir: Root of exports; the model goes to `<export_dir>/<model>/<version>`.
    columns: Column mapping text `canonical=source,...`.
    unknown_items: `error` or `drop`.
    bad_slices: `error` or `drop` for unreadable slice files (`--data mpd`).
    stream: Train from Parquet shards without loading them whole (`--stream`,
      families with `stream_train`).
    kcore: Minimum interactions per user (items are never dropped).
    warm_share: Share of items marked warm.
    cold_user_share: Share of users held out as cold users.
    (The three preparation defaults are `PrepareConfig`'s, the one source.)
    hparams: Model hyperparameter overrides.
    export: Whether to export the model.
    distribution: `tf.distribute` strategy name (`tfrec_music.distribute`).
    checkpoint_every: Checkpoint every N training steps (0: every epoch).
  """

  model: str = "two_tower"
  data: str = "synthetic"
  data_dir: Optional[str] = None
  preset: str = "default"
  seed: int = 0
  job_dir: str = "jobs"
  export_dir: str = "saved_models"
  columns: str = ""
  unknown_items: str = "error"
  bad_slices: str = "error"
  stream: bool = False
  kcore: int = PrepareConfig.kcore
  warm_share: float = PrepareConfig.warm_share
  cold_user_share: float = PrepareConfig.cold_user_share
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  export: bool = True
  distribution: str = "auto"
  checkpoint_every: int = 0


@dataclasses.dataclass
class RunResult:
  """What a run produced."""

  metrics: Dict[str, Dict[str, float]]
  export_path: Optional[str]
  job_dir: str
  report: DataReport
  model_config: Any


def _set_seeds(seed: int) -> None:
  import random  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  random.seed(seed)
  np.random.seed(seed)
  tf.random.set_seed(seed)


def model_config_for(family_cls: Any, config: RunConfig) -> Any:
  """The family's config for this run: its preset, the overrides, and the run's seed.

  `--seed` drives initialization and shuffling too: a config with a `seed`
  field takes the run's seed unless the overrides set one.
  """
  hparams = dict(config.hparams)
  fields = {f.name for f in dataclasses.fields(family_cls.config_class)}
  if "seed" in fields and "seed" not in hparams:
    hparams["seed"] = config.seed
  return family_cls.make_config(config.preset, hparams)


def load_and_prepare(config: RunConfig):
  """The shared front half of a run (also used by tuning): load, then prepare.

  Returns:
    (family class, model config, loaded data, prepared data, data report,
    timings dict). Writes `data_card.json` to the job dir for synthetic data.
  """
  family_cls = get_family(config.model)
  model_config = model_config_for(family_cls, config)
  _set_seeds(config.seed)
  io.makedirs(config.job_dir)
  report = DataReport()

  start = time.perf_counter()
  loaded = load_data(config.data, data_dir=config.data_dir, preset=config.preset,
                     seed=config.seed, columns=parse_column_mapping(config.columns),
                     unknown_items=config.unknown_items, report=report,
                     bad_slices=config.bad_slices)
  load_seconds = time.perf_counter() - start
  if loaded.data_card is not None:
    write_json(io.join(config.job_dir, "data_card.json"), loaded.data_card)

  start = time.perf_counter()
  tables = family_cls.select_tables(loaded, model_config)
  prepare_config = {"kcore": config.kcore, "warm_share": config.warm_share,
                    "cold_user_share": config.cold_user_share, "seed": config.seed,
                    **dict(family_cls.prepare_overrides_for(model_config))}
  prepared = prepare(tables, PrepareConfig(**prepare_config), report)
  prepare_seconds = time.perf_counter() - start
  logging.info("Loaded in %.1fs, prepared in %.1fs: %d train / %d valid / %d test rows, "
               "%d items", load_seconds, prepare_seconds, len(prepared.train),
               len(prepared.valid), len(prepared.test), prepared.n_items)
  timings = {"load_seconds": load_seconds, "prepare_seconds": prepare_seconds}
  return family_cls, model_config, loaded, prepared, report, timings


def run(config: RunConfig) -> RunResult:
  """Runs the whole pipeline for one model and returns metrics and the export path.

  Writes to `config.job_dir`: `data_report.json`, `config.json`,
  `metrics.json` (and the synthetic `data_card.json`). Exports to
  `<export_dir>/<model>/<version>/` with `metrics.json` and `model_card.json`.

  With several workers (`TF_CONFIG`), every worker trains and exports (Keras
  needs all of them to), but only the chief writes to `job_dir` and
  `export_dir`; the others write to per-task scratch folders beside them.
  """
  from tfrec_music import distribute  # pylint: disable=g-import-not-at-top
  if distribute.resolve(config.distribution) == "parameter_server":
    _check_parameter_server(config)
  strategy = distribute.make_strategy(config.distribution)
  backup_dir = io.join(config.job_dir, "backup")  # the chief's: every worker restores from it
  if not distribute.is_chief():
    config = dataclasses.replace(config, job_dir=distribute.scratch_dir(config.job_dir),
                                 export_dir=distribute.scratch_dir(config.export_dir))
  if config.stream:
    return _run_streaming(config, strategy, backup_dir)
  family_cls, model_config, loaded, prepared, report, timings = load_and_prepare(config)
  with strategy.scope():
    family = family_cls(model_config, prepared)
  family.checkpoint_every = config.checkpoint_every
  family.backup_dir = backup_dir
  start = time.perf_counter()
  fit_summary = family.fit(config.job_dir)
  fit_seconds = time.perf_counter() - start

  start = time.perf_counter()
  metrics = family.evaluate(EvalContext(oracle=loaded.oracle, loaded=loaded))
  eval_seconds = time.perf_counter() - start
  objective = family_cls.objective_for(model_config)[0]
  report_objective(objective, metrics["model"].get(objective))

  timings.update({"fit_seconds": fit_seconds, "eval_seconds": eval_seconds})
  report.record("timings", **{k: round(v, 3) for k, v in timings.items()})
  report.write(io.join(config.job_dir, "data_report.json"))
  resolved = {"run": dataclasses.asdict(config),
              "model": dataclasses.asdict(model_config),
              "prepare": dataclasses.asdict(prepared.config)}
  write_json(io.join(config.job_dir, "config.json"), resolved)
  write_json(io.join(config.job_dir, "metrics.json"), metrics)
  logging.info("Timings: %s", json.dumps({k: round(v, 2) for k, v in timings.items()}))

  export_path = None
  if config.export:
    export_path = _export(config, family.name, family.save, metrics, resolved,
                          {"name": prepared.name, "fingerprint": prepared.fingerprint,
                           "report": report.as_dict()}, fit_summary)
  return RunResult(metrics=metrics, export_path=export_path, job_dir=config.job_dir,
                   report=report, model_config=model_config)


def _check_parameter_server(config: RunConfig) -> None:
  """Refuses what cannot train under a parameter-server strategy.

  A family opts in with the class attribute `supports_parameter_server = True`:
  its Keras model trains through `tfrec_music.fit_loop` (which coordinates the
  workers) and its loss is reduced per replica (`Reduction.SUM`), as Keras
  needs under any `tf.distribute` strategy.
  """
  if config.stream:
    raise ValueError("`--stream` cannot train with `--distribution parameter_server`: the "
                     "workers read rows the chief writes once. Drop `--stream`, or train "
                     "without `--distribution parameter_server`.")
  if not getattr(get_family(config.model), "supports_parameter_server", False):
    raise ValueError(
        f"`--model {config.model}` cannot train with `--distribution parameter_server`: its "
        "family does not declare `supports_parameter_server` (a Keras model trained through "
        "the shared fit loop with a per-replica loss). Train it without "
        "`--distribution parameter_server`.")


def _export(config: RunConfig, name: str, save_fn: Callable[[str], Any],
            metrics: Mapping[str, Any], resolved: Mapping[str, Any], data: Mapping[str, Any],
            fit_summary: Mapping[str, Any]) -> str:
  """Writes the next version of `<export_dir>/<name>` atomically, with metrics and model card."""
  from tfrec_music.export.saved_model import export_versioned  # pylint: disable=g-import-not-at-top
  signatures = {}

  def _save(directory):
    result = save_fn(directory)
    signatures.update(result if isinstance(result, dict) else {})

  card = {"config": resolved, "data": data, "fit": fit_summary, "signatures": signatures}
  return export_versioned(_save, config.export_dir, name, metrics=metrics, model_card=card)


def _run_streaming(config: RunConfig, strategy: Any, backup_dir: str) -> RunResult:
  """`--stream`: the family trains from Parquet shards (`ModelFamily.stream_train`).

  Nothing is loaded whole: no k-core filter and no in-memory split run, so the
  family's own streaming split and evaluation sample apply (its docstring
  says which). Writes `config.json` and `metrics.json` to the job dir and
  exports atomically like `run`.
  """
  if config.data != "parquet" or not config.data_dir:
    raise ValueError("`--stream` reads canonical Parquet shards: use `--data parquet "
                     "--data-dir DIR` (write them with `python -m tfrec_music.data.synthetic "
                     "--preset large --out DIR`, or `python -m "
                     "tfrec_music.data.loaders.yahoo_music --out DIR`).")
  family_cls = get_family(config.model)
  model_config = model_config_for(family_cls, config)
  _set_seeds(config.seed)
  io.makedirs(config.job_dir)
  resolved = {"run": dataclasses.asdict(config), "model": dataclasses.asdict(model_config)}
  start = time.perf_counter()
  with strategy.scope():
    metrics, fit_summary, save_fn = family_cls.stream_train(
        config.data_dir, model_config, config.job_dir,
        checkpoint_every=config.checkpoint_every, backup_dir=backup_dir)
  fit_seconds = time.perf_counter() - start
  objective = family_cls.objective_for(model_config)[0]
  report_objective(objective, metrics["model"].get(objective))
  report = DataReport()
  # Scalars of the summary, and its flat dicts (row counts: read, per split and
  # dropped) as their own steps, so dropped rows are counted in the report.
  report.record("stream", **{k: v for k, v in fit_summary.items()
                             if isinstance(v, (int, float, str))})
  for key, value in fit_summary.items():
    if isinstance(value, dict) and value and all(
        isinstance(v, (int, float)) for v in value.values()):
      report.record(f"stream/{key}", **value)
  report.record("timings", fit_seconds=round(fit_seconds, 3))
  report.write(io.join(config.job_dir, "data_report.json"))
  write_json(io.join(config.job_dir, "config.json"), resolved)
  write_json(io.join(config.job_dir, "metrics.json"), metrics)
  logging.info("Streamed training and evaluation in %.1fs", fit_seconds)
  export_path = None
  if config.export:
    export_path = _export(config, family_cls.name, save_fn, metrics, resolved,
                          {"name": "parquet-stream", "dir": config.data_dir,
                           "report": report.as_dict()}, fit_summary)
  return RunResult(metrics=metrics, export_path=export_path, job_dir=config.job_dir,
                   report=report, model_config=model_config)


def metrics_table(metrics: Dict[str, Dict[str, float]], model_name: str = "") -> str:
  """The compact table the CLI prints (test split; the model row named after its family)."""
  label = f"model ({model_name})" if model_name else "model"
  keys = get_family(model_name).table_keys if model_name else TABLE_KEYS
  renamed = {(label if name == "model" else name): values for name, values in metrics.items()}
  return format_metrics_table(renamed, keys)


def default_job_dir(model: str) -> str:
  """`jobs/<model>` locally, or Vertex AI's `AIP_CHECKPOINT_DIR` on a cloud job."""
  aip = os.environ.get("AIP_CHECKPOINT_DIR")
  return aip if aip else os.path.join("jobs", model)
