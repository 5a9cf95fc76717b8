"""DCN rating quality and retrieve-then-rank gain on the synthetic catalogue, over seeds.

For each seed (split, initialization, shuffling; the catalogue is generated
with `--data-seed`):

- `dcn`: DCN test RMSE beside the global mean, the biased baseline
  (alpha + beta_u + beta_i) and biased MF, on the same 80/10/10 rating split;
  `ratio/dcn_vs_biased` < 0.97 is the issue's "at least 3% lower".
- `cascade` (with `--cascade`): the two_tower_dcn cascade's test HR@10 beside
  the two-tower retrieval alone on the same users; `ratio/cascade_vs_retrieval`
  >= 1.05 is the issue's "at least 5% above". Also the validation HR@10 of
  each blend weight (the blend is chosen on it) and the validation ratio.
  `--cascade-set k=v` overrides the cascade's config (e.g.
  `history_features=[]` for the re-ranker without history features).

  python -m benchmarks.dcn_quality --seeds 0 1 2 [--preset default] [--cascade] [--set k=v]
"""

import argparse
import os
import time
from typing import Dict, List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from benchmarks._stats import parse_sets
from benchmarks._stats import print_seed_table
from tfrec_music.data import synthetic
from tfrec_music.evaluation.protocol import evaluate_scorer
from tfrec_music.evaluation.protocol import fixed_scorer
from tfrec_music.models.cascade import CascadeFamily
from tfrec_music.models.dcn import DCNFamily
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.family import EvalContext
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


# Where the fits' job folders go (dcn-<seed>, cascade-<seed>) unless `--job-dir` says.
JOB_DIR = "/tmp/dcn_quality"


def dcn_row(catalogue, preset: str, seed: int, overrides: Dict[str, object],
            job_dir: str = JOB_DIR) -> Dict[str, float]:
  """Test RMSE of the DCN and the three baselines for one seed."""
  prepared = prepare(catalogue.tables, PrepareConfig(**{**DCNFamily.prepare_overrides,
                                                      "seed": seed}))
  family = DCNFamily(DCNFamily.make_config(preset, {**overrides, "seed": seed}), prepared)
  start = time.perf_counter()
  family.fit(os.path.join(job_dir, f"dcn-{seed}"))
  row = {"dcn/fit_seconds": time.perf_counter() - start,
         "dcn/examples_per_second": family.fit_summary["examples_per_second"]}
  metrics = family.evaluate(EvalContext())
  for name, values in metrics.items():
    row[f"{name}/test/all/rmse"] = values["test/all/rmse"]
    row[f"{name}/valid/all/rmse"] = values["valid/all/rmse"]
  row["ratio/dcn_vs_biased"] = row["model/test/all/rmse"] / row["biased/test/all/rmse"]
  row["ratio/dcn_vs_biased_mf"] = row["model/test/all/rmse"] / row["biased_mf/test/all/rmse"]
  return row


def cascade_row(catalogue, preset: str, seed: int,
                overrides: Optional[Dict[str, object]] = None,
                job_dir: str = JOB_DIR) -> Dict[str, float]:
  """Test HR@10 of the cascade and of retrieval alone (same users) for one seed."""
  prepared = prepare(catalogue.tables, PrepareConfig(**{**CascadeFamily.prepare_overrides,
                                                      "seed": seed}))
  family = CascadeFamily(CascadeFamily.make_config(preset, {**(overrides or {}), "seed": seed}),
                         prepared)
  start = time.perf_counter()
  family.fit(os.path.join(job_dir, f"cascade-{seed}"))
  row = {"cascade/fit_seconds": time.perf_counter() - start, "cascade/blend": family.blend}
  # The four scorers this row reports, on the same protocol as `family.evaluate` (which also
  # fits the ItemKNN and EASE baselines and scores cold users and top-K lists: unused here).
  scorers = {"model": family.score_fn(), "two_tower": family.retrieval.score_fn(),
             "popularity": fixed_scorer(PopularityModel.fit(prepared).score_fn()),
             "oracle": fixed_scorer(catalogue.oracle.score_fn(prepared.item_ids))}
  for name, scorer in scorers.items():
    metrics = evaluate_scorer(scorer, prepared, ks=(10,), cold_users=False, lists=False)
    for key in ("test/all/hr@10", "valid/all/hr@10"):
      row[f"{name}/{key}"] = metrics[key]
  row["ratio/cascade_vs_retrieval"] = (row["model/test/all/hr@10"]
                                       / max(row["two_tower/test/all/hr@10"], 1e-12))
  # The validation figures the blend was chosen on (the cascade's is its chosen blend's).
  row["ratio/valid_cascade_vs_retrieval"] = (row["model/valid/all/hr@10"]
                                             / max(row["two_tower/valid/all/hr@10"], 1e-12))
  for weight, hr in family.fit_summary.get("valid_hr@10_by_blend", {}).items():
    row[f"cascade/valid_hr@10_blend_{weight}"] = hr
  # What each re-ranker bought (validation) and what it cost (fit seconds).
  for n, hr in family.fit_summary.get("valid_hr@10_by_rankers", {}).items():
    row[f"cascade/valid_hr@10_rankers_{n}"] = hr
  for stage, seconds in family.fit_summary.get("stage_seconds", {}).items():
    row[f"cascade/seconds_{stage}"] = seconds
  row.update(_prefix_test_rows(family, row["cascade/blend"]))
  return row


def _prefix_test_rows(family: CascadeFamily, blend: float) -> Dict[str, float]:
  """Test HR@10 of the cascade with only its first n re-rankers, n = 1 .. rankers - 1.

  Each prefix gets its own blend, chosen on validation as a fit with n
  re-rankers would; the family is left as it was fitted.
  """
  rankers, row = list(family.rankers), {}
  for n in range(1, len(rankers)):
    family.rankers = rankers[:n]
    family._choose_blend()  # pylint: disable=protected-access
    metrics = evaluate_scorer(family.score_fn(), family.prepared, splits=("test",),
                              cold_users=False, lists=False)
    row[f"cascade/test_hr@10_rankers_{n}"] = metrics["test/all/hr@10"]
    row[f"cascade/blend_rankers_{n}"] = family.blend
  family.rankers, family.blend = rankers, blend
  return row


def main() -> None:
  """Runs the seeds and prints per-seed figures and their median / min / max."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--preset", default="default")
  parser.add_argument("--data-seed", type=int, default=0)
  parser.add_argument("--cascade", action="store_true", help="Also run the cascade.")
  parser.add_argument("--no-dcn", action="store_true", help="Skip the rating DCN.")
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="DCN config override (rating DCN only).")
  parser.add_argument("--cascade-set", action="append", default=[], metavar="NAME=VALUE",
                      help="Cascade config override.")
  parser.add_argument("--json", default=None, help="Also write all rows to this file.")
  parser.add_argument("--job-dir", default=JOB_DIR,
                      help="The fits' job folders go here (dcn-<seed>, cascade-<seed>); give "
                           "runs side by side their own.")
  args = parser.parse_args()
  overrides = parse_sets(args.set)
  catalogue = synthetic.generate(args.preset, seed=args.data_seed)
  rows = []
  for seed in args.seeds:
    row = {} if args.no_dcn else dcn_row(catalogue, args.preset, seed, overrides, args.job_dir)
    if args.cascade:
      row.update(cascade_row(catalogue, args.preset, seed, parse_sets(args.cascade_set),
                             args.job_dir))
    rows.append(row)
    print(f"seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()), flush=True)
  print_seed_table(rows, f"{len(rows)} seeds, preset {args.preset}, overrides {overrides}",
                   args.json, width=9)


if __name__ == "__main__":
  main()
