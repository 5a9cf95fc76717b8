"""The playlist model's "done when" numbers on the synthetic playlists.

Trains `playlist_mf` through the CLI (`python -m trainer.task --model
playlist_mf --preset default --no-export`) for each seed, reads the job's
`metrics.json` and prints, per seed and their median / min / max:

- R-precision at K = 5 and K = 10 of the model, of the best of the
  same-artist and same-album baselines and of the oracle (the generator's own
  scores, the ceiling); the model's ratio to the best baseline and that ratio
  as a share of the oracle's ratio (= model / oracle R-precision; target
  >= 0.85 at both K, the median over seeds);
- the same share on the validation slices (`valid/k<K>`: the first K
  training tracks of trained playlists as seeds, their validation track as
  the one target, so R-precision is a hit at rank 1 and noisy; NDCG beside it);
- R-precision of folded-in unseen playlists over that of playlists seen in
  training (target >= 0.8).

The ratio to the best baseline itself had a >= 2 target, retired: the
generator's own oracle reaches only about 2.0-2.1.

  python -m benchmarks.playlist_quality                    # seed 0
  python -m benchmarks.playlist_quality --seeds 0 1 2 --set fold_in_l2=0.5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from benchmarks._stats import print_seed_table

KS = (5, 10)


SHARE_TARGET = 0.85
UNSEEN_TARGET = 0.8


def summarize(metrics: Dict[str, Dict[str, float]]) -> Dict[str, float]:
  """The done-when figures of one run's `metrics.json`."""
  model = metrics["model"]
  out = {}
  for k in KS:
    key = f"test/k{k}/r_precision"
    baseline = max(metrics[b][key] for b in ("same_artist", "same_album") if b in metrics)
    out[f"k{k}_model"] = model[key]
    out[f"k{k}_best_group_baseline"] = baseline
    out[f"k{k}_ratio"] = model[key] / baseline if baseline else float("inf")
    if "oracle" not in metrics:
      continue
    oracle = metrics["oracle"]
    out[f"k{k}_oracle"] = oracle[key]
    out[f"k{k}_oracle_ratio_ceiling"] = oracle[key] / baseline if baseline else float("inf")
    # (model / baseline) / (oracle / baseline): the baseline cancels.
    out[f"k{k}_share_of_oracle"] = model[key] / oracle[key]
    for metric in ("r_precision", "ndcg"):
      valid = f"valid/k{k}/{metric}"
      if valid in model and valid in oracle:
        out[f"valid_k{k}_{metric}_share_of_oracle"] = model[valid] / oracle[valid]
  out["seen_r_precision"] = model["test/seen/r_precision"]
  out["unseen_r_precision"] = model["test/unseen/r_precision"]
  out["unseen_over_seen"] = out["unseen_r_precision"] / out["seen_r_precision"]
  return out


def verdict(median: Dict[str, float]) -> Tuple[Dict[str, str], Dict[str, bool]]:
  """The targets and whether the median figures meet them (booleans).

  The share of the oracle's ratio needs the oracle (synthetic data); without
  it only the unseen / seen target is judged.
  """
  targets = {"unseen_over_seen": f">= {UNSEEN_TARGET}"}
  met = {"unseen_over_seen": bool(median["unseen_over_seen"] >= UNSEEN_TARGET)}
  for k in KS:
    key = f"k{k}_share_of_oracle"
    if key in median:
      targets[key] = f">= {SHARE_TARGET}"
      met[key] = bool(median[key] >= SHARE_TARGET)
  return targets, met


def run_seed(seed: int, preset: str, extra: List[str], job_root: str) -> Dict[str, float]:
  """Runs the CLI once and returns `summarize` of its metrics."""
  job = os.path.join(job_root, f"seed{seed}")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "trainer.task", "--model", "playlist_mf", "--preset", preset,
         "--seed", str(seed), "--job-dir", job, "--no-export"] + extra
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  with open(os.path.join(job, "metrics.json")) as f:
    return summarize(json.load(f))


def main(argv: Optional[List[str]] = None) -> dict:
  """Runs every seed; prints per-seed rows, their median / min / max, and the targets."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--preset", default="default")
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="Passed to trainer.task --set.")
  parser.add_argument("--job-dir", default=None, help="Keep the runs here (default: temp).")
  parser.add_argument("--json", default=None, help="Also write the per-seed rows to this file.")
  args = parser.parse_args(argv)
  extra = [a for item in args.set for a in ("--set", item)]
  job_root = args.job_dir or tempfile.mkdtemp(prefix="playlist_quality_")
  runs = {seed: run_seed(seed, args.preset, extra, job_root) for seed in args.seeds}
  rows = list(runs.values())
  print_seed_table(rows, f"{len(rows)} seeds, preset {args.preset}, overrides {args.set}",
                   args.json)
  median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
  targets, met = verdict(median)
  result = {"runs": {str(s): {k: round(v, 4) for k, v in r.items()} for s, r in runs.items()},
            "median": {k: round(v, 4) for k, v in median.items()},
            "targets": targets, "met": met,
            "retired": {"k5_ratio": ">= 2", "k10_ratio": ">= 2"},
            "job_dir": job_root}
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
