"""`python -m tuning.tune`: Keras Tuner search over the trainer's model builders.

  python -m tuning.tune --model two_tower --tuner random --max-trials 10
  python -m trainer.task --model two_tower --hparams jobs/tuning/two_tower/best_hparams.json

Takes the same data and model flags as `python -m trainer.task` (model flags
given here stay fixed in every trial; the family's search space covers the
rest). The objective is the family's validation metric, never a test metric.
The search state lives in the job dir: rerunning the same command resumes an
interrupted search without redoing finished trials (`--overwrite` starts
afresh). For distributed tuning start one process with
`KERASTUNER_TUNER_ID=chief` and workers with `KERASTUNER_TUNER_ID=tuner0`,
`tuner1`, ..., all with `KERASTUNER_ORACLE_IP` / `KERASTUNER_ORACLE_PORT` set
to the chief's address.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
from trainer import task


def build_parser(model: Optional[str] = None) -> argparse.ArgumentParser:
  """The trainer's data and model flags plus the search flags."""
  p = task.build_parser(model)
  p.prog = "python -m tuning.tune"
  p.description = "Search a model's hyperparameters with Keras Tuner."
  group = p.add_argument_group("search")
  group.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random",
                     help="Keras Tuner oracle.")
  group.add_argument("--max-trials", type=int, default=10,
                     help="Trials of random / Bayesian search (Hyperband sizes itself).")
  group.add_argument("--max-epochs", type=int, default=12, help="Hyperband's largest budget.")
  group.add_argument("--executions-per-trial", type=int, default=1,
                     help="Fits per configuration, with model seeds --seed, --seed+1, ... on "
                          "the same split; the objective is their mean (less seed noise).")
  group.add_argument("--overwrite", action="store_true",
                     help="Discard the search state in the job dir and start afresh.")
  group.add_argument("--output", default=None,
                     help="Best hyperparameters JSON (default <job-dir>/best_hparams.json).")
  return p


def main(argv: Optional[List[str]] = None) -> int:
  """Entry point; returns the process exit code (2: bad flags or data)."""
  model_args, _ = task._MODEL_PARSER.parse_known_args(argv)  # pylint: disable=protected-access
  parser = build_parser(model_args.model)
  args, unknown = parser.parse_known_args(argv)
  logging.basicConfig(level=getattr(logging, args.verbosity.upper(), logging.INFO),
                      format="%(asctime)s %(levelname)s %(message)s")
  task.check_unknown_flags(parser, args.model, unknown)
  from tfrec_music import training  # pylint: disable=g-import-not-at-top
  from tfrec_music import search  # pylint: disable=g-import-not-at-top
  from tfrec_music.data.tables import DataValidationError  # pylint: disable=g-import-not-at-top
  job_dir = args.job_dir or os.path.join("jobs", "tuning", args.model)
  try:
    fixed = task.resolve_hparams(args)
    config = training.RunConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, preset=args.preset,
        seed=args.seed, job_dir=job_dir, columns=args.columns,
        unknown_items=args.unknown_items, kcore=args.kcore, warm_share=args.warm_share,
        cold_user_share=args.cold_user_share, hparams=fixed, export=False)
    family_cls = training.get_family(args.model)
    try:
      family_cls.search_space(search.kt.HyperParameters())
    except NotImplementedError as e:
      raise ValueError(f"{e} Tunable models: {', '.join(search.tunable_models())}.") from e
    if args.max_trials <= 0:
      raise ValueError(f"`--max-trials` should be positive. Received: {args.max_trials}.")
    if args.executions_per_trial <= 0:
      raise ValueError("`--executions-per-trial` should be positive. "
                       f"Received: {args.executions_per_trial}.")
    prepared = None
    if not search.is_chief_oracle():  # the chief only serves the oracle
      _, _, _, prepared, report, _ = training.load_and_prepare(config)
      report.write(os.path.join(job_dir, "data_report.json"))
    oracle = search.make_oracle(args.tuner, family_cls, args.max_trials, args.seed,
                                args.max_epochs,
                                config=family_cls.make_config(args.preset, fixed))
    tuner = search.FamilyTuner(oracle, family_cls, prepared, preset=args.preset, fixed=fixed,
                               seed=args.seed, directory=job_dir,
                               project_name=f"{args.model}_{args.tuner}",
                               overwrite=args.overwrite,
                               executions_per_trial=args.executions_per_trial)
  except (DataValidationError, ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 2
  tuner.search()
  if search.is_chief_oracle():
    print("Oracle chief: all trials finished.")
  if "KERASTUNER_ORACLE_IP" in os.environ and not search.is_chief_oracle():
    print(f"Worker {tuner.tuner_id}: no trials left.")
    return 0  # the chief holds every result and writes the summary
  output = args.output or os.path.join(job_dir, "best_hparams.json")
  try:
    best = search.write_best(output, family_cls, tuner)
  except (RuntimeError, IndexError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  metric = best["objective"]["metric"]
  print(f"Best of {best['trials_completed']} trials: {metric} = "
        f"{best['objective']['value']:.4f} with {best['hparams']}")
  print(f"Best hyperparameters: {output}")
  print(f"Retrain: python -m trainer.task --model {args.model} --hparams {output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
