"""`python -m trainer.task`: train, evaluate and export one model.

Defaults train on the embedded synthetic catalogue. Cloud platforms append
their own flags, so unknown flags are logged and ignored (`parse_known_args`);
Vertex AI's `AIP_*` variables provide defaults for the job and export folders.
"""

import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
from tfrec_music.data.registry import NAMED_LOADERS
from tfrec_music.distribute import DISTRIBUTIONS
from tfrec_music.models.registry import FAMILY_NAMES
from tfrec_music.prepare.prepared import PrepareConfig


def _parse_value(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text



_MODEL_PARSER = argparse.ArgumentParser(add_help=False)
_MODEL_PARSER.add_argument("--model", default="two_tower")

# Flags of the common group: fields of most families' configs. A family's own
# flags (`ModelFamily.add_arguments`) join the parser when `--model` names it.
MODEL_FLAGS = ("epochs", "embedding_dim", "learning_rate", "batch_size", "top_k")


def build_parser(model: Optional[str] = None) -> argparse.ArgumentParser:
  """The CLI's argument parser (the common flags), plus `model`'s own flags."""
  p = argparse.ArgumentParser(
      prog="python -m trainer.task",
      description="Train, evaluate and export a tfrec-music recommender.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--model", default="two_tower",
                 help="Model family: " + ", ".join(FAMILY_NAMES) + ".")
  p.add_argument("--data", default="synthetic",
                 help="Data source: synthetic (embedded catalogue), csv or parquet "
                      "(canonical folder in --data-dir), one of the named loaders ("
                      + ", ".join(NAMED_LOADERS) + "), or tfds:<name>.")
  p.add_argument("--data-dir", default=os.environ.get("AIP_TRAINING_DATA_URI"),
                 help="Folder of the source files (local, gs:// or any tf.io.gfile path).")
  p.add_argument("--columns", default="",
                 help="Map source columns onto canonical ones, e.g. "
                      "user_id=username,item_id=track_name.")
  p.add_argument("--unknown-items", choices=("error", "drop"), default="error",
                 help="Interactions whose item is missing from items: fail, or drop "
                      "and count them in the data report.")
  p.add_argument("--stream", action="store_true",
                 help="Train from canonical Parquet shards (--data parquet) without loading "
                      "them whole: two_tower (materialized once as TFRecords) and dcn.")
  p.add_argument("--bad-slices", choices=("error", "drop"), default="error",
                 help="Unreadable slice files of `--data mpd` (truncated or malformed JSON): "
                      "error (default) stops with the file and position; drop skips the whole "
                      "file and counts it in the data report.")
  p.add_argument("--preset", default="default",
                 help="Synthetic catalogue size and model preset: tiny or default.")
  p.add_argument("--epochs", type=int, default=None, help="Training epochs (model default if unset).")
  p.add_argument("--seed", type=int, default=0, help="Seed of data, split, init and shuffling.")
  p.add_argument("--kcore", type=int, default=PrepareConfig.kcore,
                 help="Minimum interactions per user (users with fewer are dropped and "
                      "counted); every item stays a candidate.")
  p.add_argument("--warm-share", type=float, default=PrepareConfig.warm_share,
                 help="Share of items (most interacted) marked warm; the rest are cold.")
  p.add_argument("--cold-user-share", type=float, default=PrepareConfig.cold_user_share,
                 help="Share of users held out of training, evaluated from history alone.")
  p.add_argument("--job-dir", default=None,
                 help="Run outputs (report, metrics, config, logs). Default jobs/<model> "
                      "or $AIP_CHECKPOINT_DIR.")
  p.add_argument("--export-dir", default=os.environ.get("AIP_MODEL_DIR", "saved_models"),
                 help="Export root; the model goes to <export-dir>/<model>/<version>/.")
  p.add_argument("--no-export", action="store_true", help="Train and evaluate only.")
  p.add_argument("--distribution", choices=DISTRIBUTIONS, default="auto",
                 help="tf.distribute strategy; auto reads TF_CONFIG / CLUSTER_SPEC, TPU_NAME "
                      "and the visible GPUs.")
  p.add_argument("--checkpoint-every", type=int, default=0,
                 help="Checkpoint every N training steps (0: every epoch); a killed job "
                      "rerun with the same command resumes from the last checkpoint.")
  common = p.add_argument_group(
      "model hyperparameters (unset: the preset's value)",
      "Flags most models take; each model's own follow in its group "
      "(`--model NAME --help` lists them).")
  common.add_argument("--embedding-dim", type=int, default=None, help="Embedding size.")
  common.add_argument("--learning-rate", type=float, default=None, help="Learning rate.")
  common.add_argument("--batch-size", type=int, default=None, help="Training batch size.")
  common.add_argument("--top-k", type=int, default=None, help="Results per request in the export.")
  p.add_argument("--hparams", default=None,
                 help="JSON file of hyperparameters (as written by python -m tuning.tune); "
                      "explicit flags override it.")
  p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                 help="Set one model hyperparameter, e.g. --set top_k=50 (repeatable).")
  p.add_argument("--verbosity", default="INFO", help="Logging level.")
  if model:
    from tfrec_music.models.registry import get_family  # pylint: disable=g-import-not-at-top
    try:
      family = get_family(model)
    except (ValueError, ImportError):
      return p  # reported by `main` with the list of models
    group = p.add_argument_group(f"{model} hyperparameters (unset: the preset's value)")
    before = {a.dest for a in p._actions}  # pylint: disable=protected-access
    family.add_arguments(group)
    p.set_defaults(family_flags=[a.dest for a in p._actions  # pylint: disable=protected-access
                                 if a.dest not in before])
  return p


def _flag_owners(model: str) -> Dict[str, List[str]]:
  """Each other family's own flags -> the families that define it."""
  from tfrec_music.models.registry import get_family  # pylint: disable=g-import-not-at-top
  owners = {}
  for name in FAMILY_NAMES:
    if name == model:
      continue
    try:
      family = get_family(name)
    except ImportError:  # an optional dependency is missing: its flags are unknown here
      continue
    scratch = argparse.ArgumentParser(add_help=False)
    family.add_arguments(scratch.add_argument_group(name))
    for action in scratch._actions:  # pylint: disable=protected-access
      for flag in action.option_strings:
        owners.setdefault(flag, []).append(name)
  return owners


def check_unknown_flags(parser: argparse.ArgumentParser, model: str,
                        unknown: Sequence[str]) -> None:
  """Stops with a usage error on another model's flag; logs and ignores other unknown flags.

  Cloud platforms append flags of their own, so an unknown flag alone is no
  error; but one that another family defines (`--temperature` with
  `--model dcn`) would be silently lost, so it is refused (exit code 2).
  """
  if not unknown:
    return
  if model in FAMILY_NAMES and any(arg.startswith("--") for arg in unknown):
    owners = _flag_owners(model)
    foreign = {flag: owners[flag] for flag in (arg.split("=", 1)[0] for arg in unknown)
               if flag in owners}
    if foreign:
      taken = ", ".join(f"{flag} (a flag of --model {' / '.join(models)})"
                        for flag, models in foreign.items())
      parser.error(f"--model {model} does not take {taken}. `--model {model} --help` lists its "
                   "flags; --set NAME=VALUE sets any field of its config.")
  logging.warning("Ignoring unknown flags: %s", unknown)


def resolve_hparams(args: argparse.Namespace) -> dict:
  """Merges `--hparams FILE`, the model flags and `--set NAME=VALUE` (later wins)."""
  hparams = {}
  if args.hparams:
    from tfrec_music import io  # pylint: disable=g-import-not-at-top
    loaded = json.loads(io.read_text(args.hparams))
    hparams.update(loaded.get("hparams", loaded))
  for name in MODEL_FLAGS + tuple(getattr(args, "family_flags", ())):
    value = getattr(args, name)
    if value is not None:
      hparams[name] = value
  for item in args.set:
    if "=" not in item:
      raise SystemExit(f"--set expects NAME=VALUE. Received: {item!r}.")
    name, value = item.split("=", 1)
    hparams[name.strip().replace("-", "_")] = _parse_value(value.strip())
  return hparams


def main(argv: Optional[List[str]] = None) -> int:
  """Entry point; returns the process exit code."""
  model, _ = _MODEL_PARSER.parse_known_args(argv)
  parser = build_parser(model.model)
  args, unknown = parser.parse_known_args(argv)
  logging.basicConfig(level=getattr(logging, args.verbosity.upper(), logging.INFO),
                      format="%(asctime)s %(levelname)s %(message)s")
  check_unknown_flags(parser, args.model, unknown)
  from tfrec_music import distribute  # pylint: disable=g-import-not-at-top
  from tfrec_music import training  # pylint: disable=g-import-not-at-top
  from tfrec_music.data.tables import DataValidationError  # pylint: disable=g-import-not-at-top
  try:
    if distribute.serve_parameter_server_task(args.distribution):
      return 0  # a `ps` or `worker` task: it served until it was stopped
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  config = training.RunConfig(
      model=args.model, data=args.data, data_dir=args.data_dir, preset=args.preset,
      seed=args.seed, job_dir=args.job_dir or training.default_job_dir(args.model),
      export_dir=args.export_dir, columns=args.columns, unknown_items=args.unknown_items,
      bad_slices=args.bad_slices, stream=args.stream,
      kcore=args.kcore, warm_share=args.warm_share, cold_user_share=args.cold_user_share,
      hparams=resolve_hparams(args), export=not args.no_export,
      distribution=args.distribution, checkpoint_every=args.checkpoint_every)
  try:
    result = training.run(config)
  except (DataValidationError, ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:
    # Diverged training: nothing is exported, the message says what to change.
    logging.error("%s", e)
    print(f"training diverged: {e}", file=sys.stderr)
    return 3
  print(training.metrics_table(result.metrics, args.model))
  print(f"Job outputs: {result.job_dir}")
  if result.export_path:
    print(f"Exported: {result.export_path}")
  return 0


def exit_with(code: int) -> None:
  """Ends the process with `code`; a failed run skips interpreter teardown.

  Once a run has failed (bad data, bad flags, diverged training) there is
  nothing left to write but the message, already printed. Under load
  TensorFlow's native thread pools were seen (once in a CI run) to abort the
  process at interpreter teardown ("terminate called without an active
  exception"), turning exit code 2 into -6, so failed runs flush their
  streams and logs and leave with `os._exit`. Successful runs exit normally
  (exit handlers may still have work to do).
  """
  if code == 0:
    sys.exit(0)
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


if __name__ == "__main__":
  exit_with(main())
