"""Two-tower training speed: ours vs a reference written as the TFRS retrieval tutorial.

Two-tower retrieval learns a user vector and a track vector whose dot product
ranks tracks for the user, trained with in-batch softmax. The reference is
built the way the TFRS basic retrieval tutorial builds it: `StringLookup` +
`Embedding` inside each tower (string ids in the batches), a
`tfrs.tasks.Retrieval` task with `FactorizedTopK` metrics over the catalogue
(candidate dataset batched by 128, as in the tutorial), Adagrad(0.1), and a
plain `tf.data` pipeline (`from_tensor_slices` -> shuffle -> batch, no cache,
no prefetch; tf.data autotuning off, as in ours: with it on, an epoch of either
model sometimes stalls ~2.4 s when its iterator is deleted). As in the tutorial
the metrics are computed in training steps
too (`--ref-train-metrics on`); `off` is the tutorial's own advice for speed
(`compute_metrics=not training`), reported as a second, stronger reference.

Ours is `tfrec_music.models.two_tower` with its own pipeline (`make_dataset`:
integer lookups on the host, rows gathered per batch, prefetched), in two
settings (`--ours`):

  ids_no_history    `features=ids` with history off (`history_length` 0: the
                    user tower has no history input, the pipeline builds no
                    history feature), the setting closest to the tutorial's
                    towers (ours still has each tower's MLP, the logQ
                    correction and accidental-hit removal; no user-id
                    dropout, which needs a history); reported as `ours`.
  default_features  the two-tower default config (`features=all`: history of
                    50 tracks, artist/album/genre, tags, title/lyrics text,
                    audio); reported as `ours_default_features`.

Both use the same synthetic catalogue and split, `embedding_dim` and
`batch_size` as the reference. Ours runs as many training steps per call into
its compiled train function as its own fit does (`fit_loop.use_steps_per_execution`:
32 on the default preset); the reference runs one, as the tutorial does
(`--ref-steps-per-execution 32` gives it the same).

The models train side by side, epoch 1 of each, then epoch 2 of each, and so
on (`interleave`), so a drift in the machine's speed reaches all of them.
Reported per model: training examples per second (median, min, max over
epochs 2..E; the first epoch, which traces the graphs, apart; validation is
not timed), validation HR@10 after every epoch (our full-ranking protocol,
the same for all: training tracks excluded, every track ranked), and the
training seconds each needs to reach the lower of the models' best
validation HR@10.

`--ref-max-steps N` bounds every reference epoch to its first N batches
(after the shuffle buffer fills, as in a full epoch): its examples per second
are then those N steps' (epoch 1, which traces, apart as ever), and its
validation HR@10 is measured after each bounded epoch, so its HR and seconds
to the target HR describe N x epochs steps of training, not full epochs.
The suite's `training_throughput_tutorial` uses it: the tutorial model with
`FactorizedTopK` in its training steps runs at ~2k examples/s, 2.5 min a
full epoch on the default preset.

Targets (issue 23), against the reference without metrics in training steps:
ours (ids, no history) >= 1.0x its examples per second, ours with the default
features >= 0.6x. Issue 10's target (ours with ids and the 50-track history
>= 2x) is retired.

  python -m benchmarks.training_throughput --preset default --epochs 4
  python -m benchmarks.training_throughput --preset tiny --epochs 2   # quick
"""

import argparse
import dataclasses
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from benchmarks import _stats
from tfrec_music import fit_loop
from tfrec_music import training
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.pipeline.dataset import make_dataset
from tfrec_music.pipeline.dataset import without_autotuning


class TutorialRetrievalModel(tfrs.Model):
  """The TFRS retrieval tutorial's model: id lookup + embedding towers, FactorizedTopK.

  Args:
    user_ids: User vocabulary (strings).
    item_ids: Track vocabulary (strings); also the metric's candidates.
    embedding_dim: Tower output size.
    train_metrics: Compute `FactorizedTopK` in training steps (the tutorial
      does) or only in evaluation.
  """

  def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray, embedding_dim: int,
               train_metrics: bool):
    super().__init__()
    self.train_metrics = train_metrics
    self.user_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=list(user_ids), mask_token=None),
        tf.keras.layers.Embedding(len(user_ids) + 1, embedding_dim)])
    self.item_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=list(item_ids), mask_token=None),
        tf.keras.layers.Embedding(len(item_ids) + 1, embedding_dim)])
    candidates = tf.data.Dataset.from_tensor_slices(np.asarray(item_ids, dtype=object))
    self.task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(
        candidates=candidates.batch(128).map(self.item_model)))

  def compute_loss(self, features, training=False):
    """In-batch softmax; `FactorizedTopK` per the `train_metrics` setting."""
    users = self.user_model(features["user_id"])
    items = self.item_model(features["item_id"])
    return self.task(users, items, compute_metrics=self.train_metrics or not training)


def _rates_summary(epoch_seconds: List[float], n_examples: int) -> Dict[str, Any]:
  rates = [n_examples / s for s in epoch_seconds]
  steady = rates[1:] or rates
  return {"examples_per_s": _stats.summarize(steady), "first_epoch_examples_per_s": rates[0],
          "epoch_seconds": epoch_seconds}


# `--ours` settings: result name and two-tower overrides (on top of the preset and `--set`).
OURS = {"ids_no_history": ("ours", {"features": "ids", "history_length": 0,
                                    "user_id_dropout": 0.0}),
        "default_features": ("ours_default_features", {"features": "all"})}
# Goals of issue 23: setting -> least examples/s ratio to the reference (train metrics off).
GOALS = {"ids_no_history": 1.0, "default_features": 0.6}
GOAL_REFERENCE = "reference_train_metrics_off"


class EpochRunner:
  """One model trained epoch by epoch: each `epoch()` times one `fit` epoch, then validates.

  Args:
    fit_epoch: Trains one epoch.
    validate: Validation HR@10 of the current weights (not timed).
    n_examples: Training examples per epoch.
  """

  def __init__(self, fit_epoch: Callable[[], None], validate: Callable[[], float],
               n_examples: int):
    self.fit_epoch, self.validate, self.n_examples = fit_epoch, validate, n_examples
    self.seconds: List[float] = []
    self.hrs: List[float] = []

  def epoch(self) -> None:
    """Trains and times one epoch, then validates it."""
    start = time.perf_counter()
    self.fit_epoch()
    self.seconds.append(time.perf_counter() - start)
    self.hrs.append(self.validate())

  def result(self) -> Dict[str, Any]:
    """Examples/s (epochs 2.., epoch 1 apart), epoch seconds and validation HR@10 by epoch."""
    return {**_rates_summary(self.seconds, self.n_examples), "valid_hr@10": self.hrs,
            "examples_per_epoch": self.n_examples}


def interleave(runners: Dict[str, EpochRunner], epochs: int) -> Dict[str, Dict[str, Any]]:
  """Runs epoch e of every model before epoch e + 1 of any; returns each one's `result()`.

  A drift in the machine's speed (a shared 2-core host drifted by 20-30% over
  minutes) then reaches every model alike instead of whichever ran last.
  """
  for _ in range(epochs):
    for runner in runners.values():
      runner.epoch()
  return {name: runner.result() for name, runner in runners.items()}


def ours_runner(family, batch_size: int, seed: int, prepared) -> EpochRunner:
  """Our two-tower, trained as its own fit trains it (pipeline, steps per call)."""
  dataset = make_dataset(family.training_features(), batch_size, shuffle=True, seed=seed)
  # As the family's own fit runs (epoch checkpoints): several steps per train-function call.
  fit_loop.use_steps_per_execution(family.model, dataset)

  def validate() -> float:
    family._item_embeddings = None  # pylint: disable=protected-access  # Weights changed.
    return float(evaluate_scorer(family.scorer, prepared, splits=("valid",), ks=(10,),
                                 cold_users=False)["valid/all/hr@10"])

  return EpochRunner(lambda: family.model.fit(dataset, epochs=1, verbose=0), validate,
                     len(prepared.train))


def reference_runner(prepared, batch_size: int, embedding_dim: int, train_metrics: bool,
                     seed: int, max_steps: int = 0, steps_per_execution: int = 1) -> EpochRunner:
  """The tutorial model, with the same timing and validation as `ours_runner`.

  `max_steps` > 0: each epoch is its first `max_steps` batches (`--ref-max-steps`).
  `steps_per_execution` > 1 runs that many steps per train-function call (the
  tutorial runs one; `--ref-steps-per-execution`).
  """
  tf.keras.utils.set_random_seed(seed)
  vocabs = prepared.vocabularies
  model = TutorialRetrievalModel(np.asarray(vocabs["user_id"]), np.asarray(vocabs["item_id"]),
                                 embedding_dim, train_metrics)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1),
                steps_per_execution=steps_per_execution)
  train = prepared.train
  dataset = tf.data.Dataset.from_tensor_slices(
      {"user_id": train["user_id"].astype(str).to_numpy().astype(object),
       "item_id": train["item_id"].astype(str).to_numpy().astype(object)})
  dataset = dataset.shuffle(len(train), seed=seed,
                            reshuffle_each_iteration=True).batch(batch_size)
  # The one change to the tutorial's pipeline: tf.data autotuning off, as in ours. With it
  # on, deleting an epoch's iterator stalls at random (epochs of exactly 5.12 s instead of
  # ~3 s on the default preset), which would time tf.data, not the model.
  dataset = without_autotuning(dataset)
  n_examples = len(train)
  if max_steps > 0 and max_steps * batch_size < len(train):
    dataset, n_examples = dataset.take(max_steps), max_steps * batch_size
  catalogue = tf.constant(np.asarray(prepared.item_ids).astype(str).astype(object))

  def scorer(split):
    del split  # The tutorial's user tower has no history: same vectors for every split.
    items = model.item_model(catalogue).numpy()
    return lambda users: model.user_model(
        tf.constant(np.asarray(users).astype(str).astype(object))).numpy() @ items.T

  def validate() -> float:
    return float(evaluate_scorer(scorer, prepared, splits=("valid",), ks=(10,),
                                 cold_users=False)["valid/all/hr@10"])

  return EpochRunner(lambda: model.fit(dataset, epochs=1, verbose=0), validate, n_examples)


def time_to_hr(result: Dict[str, Any], target: float) -> Optional[float]:
  """Training seconds (cumulative, validation excluded) until valid HR@10 >= target."""
  total = 0.0
  for seconds, hr in zip(result["epoch_seconds"], result["valid_hr@10"]):
    total += seconds
    if hr >= target:
      return total
  return None


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  """Parses flags, trains our settings and the reference(s) on one split, emits the report."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny", help="Synthetic catalogue preset.")
  parser.add_argument("--epochs", type=int, default=4,
                      help="Epochs per model (>= 4 gives 3 timed steady epochs).")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="Default: the two-tower preset's.")
  parser.add_argument("--embedding-dim", type=int, default=None,
                      help="Default: the two-tower preset's.")
  parser.add_argument("--ref-train-metrics", nargs="+", default=["on", "off"],
                      choices=["on", "off"])
  parser.add_argument("--ref-max-steps", type=int, default=0,
                      help="Bound each reference epoch to this many batches (0: full epochs).")
  parser.add_argument("--ref-steps-per-execution", type=int, default=1,
                      help="Steps per train-function call for the reference (the tutorial: 1; "
                           "ours runs as many as its fit does).")
  parser.add_argument("--ours", nargs="+", default=list(OURS), choices=list(OURS),
                      help="Our settings to train (see the module docstring).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="Two-tower override for ours (JSON values), e.g. layer_sizes=[].")
  parser.add_argument("--json", default=None, help="Also write the report to this file.")
  args = parser.parse_args(argv)

  common: Dict[str, Any] = _stats.parse_sets(args.set)
  if args.batch_size:
    common["batch_size"] = args.batch_size
  if args.embedding_dim:
    common["embedding_dim"] = args.embedding_dim
  runners: Dict[str, EpochRunner] = {}
  configs: Dict[str, Any] = {}
  steps_per_call: Dict[str, int] = {}
  for setting in args.ours:
    name, overrides = OURS[setting]
    family, config, prepared = _build_ours(args, {**overrides, **common})
    configs[name] = dataclasses.asdict(config)
    print(f"{name} ({setting}): preset {args.preset}, {len(prepared.train):,d} training rows, "
          f"{prepared.n_items:,d} tracks, {len(prepared.vocabularies['user_id']):,d} users; "
          f"embedding_dim {config.embedding_dim}, batch_size {config.batch_size}, "
          f"features {config.features}, history_length {config.history_length}", flush=True)
    runners[name] = ours_runner(family, config.batch_size, args.seed, prepared)
    steps_per_call[name] = int(family.model.steps_per_execution)
  for setting in args.ref_train_metrics:
    runners[f"reference_train_metrics_{setting}"] = reference_runner(
        prepared, config.batch_size, config.embedding_dim, setting == "on", args.seed,
        args.ref_max_steps, args.ref_steps_per_execution)
  results: Dict[str, Any] = interleave(runners, args.epochs)
  target = min(max(r["valid_hr@10"]) for r in results.values())
  for name, result in results.items():
    result["seconds_to_target_hr"] = time_to_hr(result, target)
    print(f"  {name:32s} {_stats.fmt(result['examples_per_s'])} examples/s "
          f"(first epoch {result['first_epoch_examples_per_s']:.4g}); valid HR@10 by epoch "
          + " ".join(f"{h:.4f}" for h in result["valid_hr@10"])
          + f"; seconds to HR@10 {target:.4f}: {result['seconds_to_target_hr']}", flush=True)
  references = [n for n in results if n.startswith("reference")]
  speedups = {ours: {ref: results[ours]["examples_per_s"]["median"]
                     / results[ref]["examples_per_s"]["median"] for ref in references}
              for ours, _ in (OURS[s] for s in args.ours)}
  for ours, ratios in speedups.items():
    for ref, ratio in ratios.items():
      print(f"  {ours} / {ref}: {ratio:.2f}x examples per second")
  goals = {f"{OURS[s][0]} / {GOAL_REFERENCE} >= {goal}":
           speedups[OURS[s][0]][GOAL_REFERENCE] >= goal
           for s, goal in GOALS.items() if s in args.ours and GOAL_REFERENCE in results}
  report = {"preset": args.preset, "train_rows": len(prepared.train),
            "n_items": prepared.n_items, "embedding_dim": config.embedding_dim,
            "batch_size": config.batch_size, "epochs": args.epochs,
            "ref_max_steps": args.ref_max_steps,
            "ref_steps_per_execution": args.ref_steps_per_execution,
            "ours_steps_per_execution": steps_per_call,
            "config": configs, "results": results, "target_valid_hr@10": target,
            "speedup": speedups.get("ours", {}),
            "speedup_default_features": speedups.get("ours_default_features", {}),
            "targets": goals,
            "target": "ours (ids, no history) >= 1.0x and ours (default features) >= 0.6x "
                      "the reference's examples per second (train metrics off)"}
  _stats.emit("training_throughput", report, args.json)
  return report


def _build_ours(args: argparse.Namespace, hparams: Dict[str, Any]):
  """Our two-tower family for one setting, on the preset's split (the same for every setting)."""
  with tempfile.TemporaryDirectory() as job_dir:
    run_config = training.RunConfig(model="two_tower", preset=args.preset, seed=args.seed,
                                    job_dir=job_dir, hparams=hparams, export=False)
    family_cls, config, _, prepared, _, _ = training.load_and_prepare(run_config)
  return family_cls(config, prepared), config, prepared


if __name__ == "__main__":
  main()
