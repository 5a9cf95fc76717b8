"""Two-tower quality on the synthetic catalogue, over several seeds.

Runs `--features all` and `--features ids` with the same settings for each
seed (the seed drives the data split, initialization and shuffling; the
catalogue itself is generated with `--data-seed`), evaluates popularity and the
oracle on the same split, and implicit ALS (`als`, its preset's settings) as
the matrix-factorization reference, and prints per-seed rows plus median, min
and max of HR@10 and NDCG@10 for all / cold / warm tracks and cold users (the
two-tower issue's figures and the benchmark issue's quality table):

  python -m benchmarks.two_tower_quality --seeds 0 1 2 [--preset default] [--set k=v ...]

`--cascade-job-dir DIR` also leaves each seed's `all` fit where
`benchmarks.dcn_quality --cascade --job-dir DIR` restores it as its cascade's
retrieval stage (the same two-tower model, split and seed: it is not fitted
twice; `run_all` runs the two entries so); a fit the cascade would not train
(other `--set` overrides) is not left.
"""

import argparse
import os
import time
from typing import Dict, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from benchmarks._stats import parse_sets
from benchmarks._stats import print_seed_table
from tfrec_music.data import synthetic
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.evaluation.protocol import fixed_scorer
from tfrec_music.models.als import ALSFamily
from tfrec_music.models.cascade import CascadeFamily
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare

KEYS = tuple(f"test/{group}/{metric}@10" for metric in ("hr", "ndcg")
             for group in ("all", "cold", "warm", "cold_user"))


def run_seed(catalogue, preset: str, seed: int, overrides: Dict[str, object],
             cascade_job_dir: Optional[str] = None) -> Dict[str, float]:
  """Figures of one seed: both feature settings, popularity and the oracle."""
  prepared = prepare(catalogue.tables, PrepareConfig(seed=seed))
  row: Dict[str, float] = {}
  for features in ("all", "ids"):
    config = TwoTowerFamily.make_config(preset, {**overrides, "features": features,
                                                 "seed": seed})
    family = TwoTowerFamily(config, prepared)
    start = time.perf_counter()
    family.fit(f"/tmp/two_tower_quality/{features}-{seed}")
    row[f"{features}/fit_seconds"] = time.perf_counter() - start
    metrics = evaluate_scorer(family.score_fn(), prepared, splits=("test",), ks=(10, 50))
    row.update({f"{features}/{k}": metrics[k] for k in KEYS})
    row.update(_cold_counts(features, metrics, prepared))
    if features == "all" and cascade_job_dir:
      cascade = CascadeFamily(CascadeFamily.make_config(preset, {"seed": seed}), prepared)
      row["all/left_for_cascade"] = float(cascade.leave_retrieval(
          family, os.path.join(cascade_job_dir, f"cascade-{seed}")))
  als = ALSFamily(ALSFamily.make_config(preset, {"seed": seed}), prepared)
  start = time.perf_counter()
  als.fit(f"/tmp/two_tower_quality/als-{seed}")
  row["als/fit_seconds"] = time.perf_counter() - start
  metrics = evaluate_scorer(als.score_fn(), prepared, splits=("test",), ks=(10,))
  row.update({f"als/{k}": metrics[k] for k in KEYS})
  for name, scorer in (("popularity", PopularityModel.fit(prepared).score_fn()),
                       ("oracle", catalogue.oracle.score_fn(prepared.item_ids))):
    metrics = evaluate_scorer(fixed_scorer(scorer), prepared, splits=("test",), ks=(10,))
    row.update({f"{name}/{k}": metrics[k] for k in KEYS})
  row["ratio/all_vs_popularity"] = row["all/test/all/hr@10"] / row["popularity/test/all/hr@10"]
  row["ratio/all_vs_oracle"] = row["all/test/all/hr@10"] / row["oracle/test/all/hr@10"]
  row["ratio/cold_all_vs_ids"] = row["all/test/cold/hr@10"] / max(row["ids/test/cold/hr@10"], 1e-12)
  row["ratio/cold_all_vs_ids@50"] = (row["all/test/cold/hr@50"]
                                     / max(row["ids/test/cold/hr@50"], 1e-12))
  row["ratio/cold_user_vs_popularity"] = (row["all/test/cold_user/hr@10"]
                                          / max(row["popularity/test/cold_user/hr@10"], 1e-12))
  return row


def _cold_counts(features: str, metrics: Dict[str, float], prepared) -> Dict[str, float]:
  """The cold slice's HR@50, its test rows and its hits at 10 and 50 (HR x rows)."""
  test_items = prepared.item_index(prepared.test["item_id"])
  rows = float((~prepared.warm_items[test_items]).sum())
  return {f"{features}/test/cold/hr@50": metrics["test/cold/hr@50"],
          f"{features}/test/cold/rows": rows,
          f"{features}/test/cold/hits@10": round(metrics["test/cold/hr@10"] * rows),
          f"{features}/test/cold/hits@50": round(metrics["test/cold/hr@50"] * rows)}


def main() -> None:
  """Runs the seeds and prints per-seed figures and their median / min / max."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--preset", default="default")
  parser.add_argument("--data-seed", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
  parser.add_argument("--json", default=None, help="Also write all rows to this file.")
  parser.add_argument("--cascade-job-dir", default=None,
                      help="Leave each seed's `all` fit for `dcn_quality --cascade --job-dir` "
                           "this folder (see the module docstring).")
  args = parser.parse_args()
  overrides = parse_sets(args.set)
  catalogue = synthetic.generate(args.preset, seed=args.data_seed)
  rows = []
  for seed in args.seeds:
    row = run_seed(catalogue, args.preset, seed, overrides, args.cascade_job_dir)
    rows.append(row)
    print(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()
                                      if k.startswith("ratio/") or k.endswith("hr@10")),
          flush=True)
  print_seed_table(rows, f"{len(rows)} seeds, preset {args.preset}, overrides {overrides}",
                   args.json)
  for k in (10, 50):
    hits = {f: sum(r[f"{f}/test/cold/hits@{k}"] for r in rows) for f in ("all", "ids")}
    print(f"cold-track hits@{k} summed over seeds: all {hits['all']:.0f}, ids {hits['ids']:.0f}"
          f" (ratio {hits['all'] / max(hits['ids'], 1):.2f}; "
          f"{sum(r['all/test/cold/rows'] for r in rows):.0f} cold test rows)")


if __name__ == "__main__":
  main()
