"""Every retrieval family and baseline on real listening data (HetRec 2011 Last.fm-2k).

The protocol of the recommender-systems literature: users with at least 5
artists (`--kcore 5`; no item filter, so every artist stays a candidate),
seeded random leave-one-out (the data has no timestamps: the seed draws the
validation and test artist of each user), full ranking over every artist
minus the user's own history, no held-out cold users. Each family trains on
the same split per seed; its validation figures (what defaults are chosen on)
and test figures (what is reported) are printed as median [min, max] over
the seeds, with the Targets of the real-data work.

The data is not shipped: fetch the public `hetrec2011-lastfm-2k` release
(non-commercial research use) and give its folder or zip. Without it the
benchmark reports itself skipped:

  python -m benchmarks.real_quality --data-dir PATH/hetrec2011-lastfm-2k [--seeds 0 1 2]
"""

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from benchmarks._stats import emit
from benchmarks._stats import fmt
from benchmarks._stats import parse_sets
from benchmarks._stats import summarize
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.models.registry import FAMILIES
from tfrec_music.models.registry import get_family
from tfrec_music.training import RunConfig
from tfrec_music.training import load_and_prepare

ENV_DIR = "TFREC_HETREC_DIR"
RETRIEVAL = ("popularity", "itemknn", "ease", "als", "two_tower")
BASELINES = ("als", "ease", "itemknn")
KEYS = ("valid/all/hr@10", "test/all/hr@10", "test/all/ndcg@10", "test/all/recall@50",
        "test/cold/hr@10", "test/new/hr@10")
SIMILARITY_KEYS = ("valid/all/friend_auc", "test/all/friend_auc")


def run_family(model: str, seed: int, data_dir: str, overrides: Dict[str, Any],
               job_root: str) -> Dict[str, float]:
  """Trains one family on one seed's split; returns its validation and test figures."""
  fields = {f.name for f in dataclasses.fields(get_family(model).config_class)}
  seeded = {"seed": seed} if "seed" in fields else {}
  config = RunConfig(model=model, data="lastfm-hetrec", data_dir=data_dir, seed=seed, kcore=5,
                     cold_user_share=0.0, hparams={**overrides, **seeded},
                     job_dir=os.path.join(job_root, f"{model}-{seed}"), export=False)
  family_cls, model_config, loaded, prepared, _, _ = load_and_prepare(config)
  family = family_cls(model_config, prepared)
  start = time.perf_counter()
  family.fit(config.job_dir)
  row = {"fit_seconds": time.perf_counter() - start}
  if model == "user_similarity":
    from tfrec_music.models.family import EvalContext  # pylint: disable=g-import-not-at-top
    metrics = family.evaluate(EvalContext(loaded=loaded))["model"]
    row.update({k: metrics[k] for k in SIMILARITY_KEYS if k in metrics})
    return row
  metrics = evaluate_scorer(family.score_fn(), prepared, cold_users=False, lists=False)
  row.update({k: metrics[k] for k in KEYS if k in metrics})
  return row


def targets(stats: Dict[str, Dict[str, Dict[str, float]]]) -> List[Dict[str, Any]]:
  """The real-data targets, each with its measured median and whether it is met."""
  out = []
  tt = stats.get("two_tower", {})
  best = max((b for b in BASELINES if b in stats),
             key=lambda b: stats[b]["test/all/hr@10"]["median"], default=None)
  if tt and best:
    hr, base = tt["test/all/hr@10"]["median"], stats[best]["test/all/hr@10"]["median"]
    out.append({"target": f"two_tower test HR@10 >= 1.05 x best baseline ({best})",
                "value": hr / base, "met": hr >= 1.05 * base})
    out.append({"target": "two_tower test HR@10 >= 0.24", "value": hr, "met": hr >= 0.24})
    ndcg = tt["test/all/ndcg@10"]["median"]
    best_ndcg = max(stats[b]["test/all/ndcg@10"]["median"] for b in BASELINES if b in stats)
    out.append({"target": "two_tower test NDCG@10 >= best baseline's", "value": ndcg,
                "met": ndcg >= best_ndcg})
  us = stats.get("user_similarity", {})
  if "test/all/friend_auc" in us:
    auc = us["test/all/friend_auc"]["median"]
    out.append({"target": "user_similarity friend AUC >= 0.85", "value": auc, "met": auc >= 0.85})
  return out


def print_report(stats: Dict[str, Dict[str, Dict[str, float]]], seeds: List[int],
                 rows: List[Dict[str, Any]]) -> None:
  """Prints the table (median [min, max] over seeds) and the targets."""
  keys = KEYS + SIMILARITY_KEYS + ("fit_seconds",)
  print(f"\nHetRec Last.fm-2k, seeds {seeds}: median [min, max]")
  print("| family | " + " | ".join(keys) + " |")
  print("|---" * (len(keys) + 1) + "|")
  for model, figures in stats.items():
    cells = [fmt(figures[k]) if k in figures else "" for k in keys]
    print(f"| {model} | " + " | ".join(cells) + " |")
  print("\nTargets:")
  for row in rows:
    print(f"- {row['target']}: {row['value']:.4f} ({'met' if row['met'] else 'NOT met'})")


def main(argv: Optional[List[str]] = None) -> None:
  """Runs every family on every seed and emits the table and targets."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data-dir", default=os.environ.get(ENV_DIR),
                      help=f"The hetrec2011-lastfm-2k folder or zip (or ${ENV_DIR}).")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--models", nargs="+", default=list(RETRIEVAL) + ["user_similarity"])
  parser.add_argument("--set", action="append", default=[], metavar="MODEL:NAME=VALUE",
                      help="Override one family's hyperparameter, e.g. two_tower:temperature=0.1.")
  parser.add_argument("--json", default=None, help="Also write the report to this file.")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  if not args.data_dir or not os.path.exists(args.data_dir):
    message = (f"skipped: no HetRec data (give --data-dir or set ${ENV_DIR} to the public "
               "hetrec2011-lastfm-2k folder or zip)")
    print(message)
    emit("real_quality", {"skipped": message}, args.json)
    return
  overrides: Dict[str, Dict[str, Any]] = {}
  for item in args.set:
    model, _, setting = item.partition(":")
    overrides.setdefault(model, {}).update(parse_sets([setting]))
  models = [m for m in args.models if m in FAMILIES]
  missing = sorted(set(args.models) - set(models))
  if missing:
    print(f"not registered (skipped): {missing}")
  per_seed: Dict[str, List[Dict[str, float]]] = {m: [] for m in models}
  failures: Dict[str, List[str]] = {}
  with tempfile.TemporaryDirectory() as job_root:
    for seed in args.seeds:
      for model in models:
        try:
          row = run_family(model, seed, args.data_dir, overrides.get(model, {}), job_root)
        except Exception as error:  # pylint: disable=broad-except
          # One family failing must not lose the others' figures; it is reported as failed.
          logging.exception("%s failed on seed %d", model, seed)
          failures.setdefault(model, []).append(f"seed {seed}: {error!r}"[:300])
          continue
        per_seed[model].append(row)
        print(f"seed {seed} {model}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()),
              flush=True)
  stats = {m: {k: summarize([r[k] for r in rows]) for k in rows[0]}
           for m, rows in per_seed.items() if rows}
  rows = targets(stats)
  print_report(stats, args.seeds, rows)
  for model, errors in failures.items():
    print(f"FAILED {model}: {errors}")
  emit("real_quality", {"seeds": args.seeds, "protocol": "users >= 5 artists, no item filter, "
                        "seeded random leave-one-out, full ranking", "overrides": overrides,
                        "per_seed": per_seed, "stats": stats, "targets": rows,
                        "failures": failures}, args.json)


if __name__ == "__main__":
  main()
