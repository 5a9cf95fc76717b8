"""Peak memory of streaming DCN training on the `default` vs `large` synthetic ratings.

Writes each preset's catalogue to canonical Parquet shards
(`synthetic.write_large`, skipped when the folder already has them), then
trains the rating DCN from the shards with `tfrec_music.models.dcn.stream_train`
in a fresh process per preset and reports that process's peak RSS
(`ru_maxrss`), its RSS after imports, training examples per second, rows
and the validation / test RMSE. The issue's target: the `large` peak RSS is
within 1.3x of the `default` one.

  python -m benchmarks.dcn_streaming_rss                       # default vs large
  python -m benchmarks.dcn_streaming_rss --presets tiny default --epochs 1
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import List, Optional

_CHILD = r"""
import json, resource, sys
import tfrec_music
from tfrec_music.models.dcn import DCNFamily, stream_train
from benchmarks._stats import rss_mb
import tensorflow  # the runtime is part of the baseline, not of the data
after_imports = rss_mb()
config = DCNFamily.make_config("default", {"epochs": int(sys.argv[2])})
summary = stream_train(sys.argv[1], config)
summary.pop("history")
summary.update({"rss_after_imports_mb": round(after_imports, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)})
print(json.dumps(summary))
"""


def write_shards(root: str, preset: str) -> str:
  """The preset's shard folder under `root` (written once)."""
  from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, preset)
  if not os.path.exists(os.path.join(folder, "data_card.json")):
    start = time.perf_counter()
    synthetic.write_large(folder, preset=preset)
    print(f"wrote {preset} shards to {folder} in {time.perf_counter() - start:.0f}s",
          flush=True)
  return folder


def measure(folder: str, epochs: int) -> dict:
  """Trains from `folder` in a fresh process; returns its numbers."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
  proc = subprocess.run([sys.executable, "-c", _CHILD, folder, str(epochs)],
                        capture_output=True, text=True, cwd=repo, check=False, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"training on {folder} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> dict:
  """Writes the shards, measures each preset, prints and returns the summary."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", nargs="+", default=["default", "large"])
  parser.add_argument("--root", default="/tmp/dcn_streaming_rss",
                      help="Where the shards are written (kept for reruns).")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--json", default=None, help="Also write the summary to this file.")
  args = parser.parse_args(argv)
  results = {}
  for preset in args.presets:
    results[preset] = measure(write_shards(args.root, preset), args.epochs)
    r = results[preset]
    print(f"{preset}: {r['rows']['train']} train rows, {r['users']} users, {r['items']} items; "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['rss_after_imports_mb']:.0f} MB); "
          f"{r['examples_per_second']:.0f} examples/s; valid RMSE {r['valid/all/rmse']:.4f}, "
          f"test RMSE {r['test/all/rmse']:.4f}", flush=True)
  first, last = args.presets[0], args.presets[-1]
  summary = {"results": results,
             "peak_rss_ratio": results[last]["peak_rss_mb"] / results[first]["peak_rss_mb"]}
  print(f"peak RSS {last} / {first}: {summary['peak_rss_ratio']:.2f} (target <= 1.3)")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  return summary


if __name__ == "__main__":
  main()
