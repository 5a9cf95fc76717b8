"""Peak memory of the MPD loader on 10 vs 100 synthetic slices (does it stream?).

Writes `max(--slices)` synthetic MPD-format slices with the tests' generator
(`tfrec_music.data.mpd_format`), then loads the first n of them in a fresh
process for each n and reports that process's peak RSS (`ru_maxrss`), its
RSS after imports, and the growth of the peak from the smallest to the
largest n. The issue's target: peak RSS grows by less than 2x from 10 to 100
slices.

  python -m benchmarks.mpd_streaming_rss                      # 10 vs 100 slices
  python -m benchmarks.mpd_streaming_rss --playlists-per-slice 1000 --slices 2 20
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

_CHILD = r"""
import json, resource, sys, time
from tfrec_music.data.loaders.mpd import load_mpd
from tfrec_music.data.report import DataReport
from benchmarks._stats import rss_mb
after_imports = rss_mb()
start = time.perf_counter()
report = DataReport()
tables = load_mpd(sys.argv[1], max_slices=int(sys.argv[2]), report=report)
seconds = time.perf_counter() - start
print(json.dumps({"slices": int(sys.argv[2]), "rows": len(tables.interactions),
                  "playlists": len(tables.users), "tracks": len(tables.items),
                  "seconds": round(seconds, 2), "rss_after_imports_mb": round(after_imports, 1),
                  "rss_after_load_mb": round(rss_mb(), 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}))
"""


def measure(data_dir: str, n_slices: int) -> dict:
  """Loads the first `n_slices` of `data_dir` in a fresh process; returns its numbers."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _CHILD, data_dir, str(n_slices)],
                        capture_output=True, text=True, cwd=repo, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"loading {n_slices} slices failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> dict:
  """Writes the slices, measures each size, prints and returns the summary."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--slices", type=int, nargs="+", default=[10, 100],
                      help="Slice counts to load (the first n of the written ones).")
  parser.add_argument("--playlists-per-slice", type=int, default=100,
                      help="Playlists per synthetic slice (the MPD has 1,000).")
  parser.add_argument("--data-dir", default=None,
                      help="Where to write the slices (default: a temporary folder, removed).")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  from tfrec_music.data.mpd_format import MPDFormatConfig  # pylint: disable=g-import-not-at-top
  from tfrec_music.data.mpd_format import write_slices  # pylint: disable=g-import-not-at-top
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="mpd_rss_")
  try:
    start = time.perf_counter()
    config = MPDFormatConfig(playlists_per_slice=args.playlists_per_slice, seed=args.seed)
    paths = write_slices(data_dir, max(args.slices), config)
    size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"wrote {len(paths)} slices ({size_mb:.0f} MiB of JSON) in "
          f"{time.perf_counter() - start:.0f}s", file=sys.stderr)
    runs = [measure(data_dir, n) for n in sorted(args.slices)]
  finally:
    if args.data_dir is None:
      shutil.rmtree(data_dir, ignore_errors=True)
  small, large = runs[0], runs[-1]
  summary = {"runs": runs, "json_mib_written": round(size_mb, 1),
             "peak_growth": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
             "rows_growth": round(large["rows"] / max(small["rows"], 1), 2),
             "target": "peak_growth < 2.0"}
  summary["met"] = summary["peak_growth"] < 2.0
  print(json.dumps(summary, indent=2))
  return summary


if __name__ == "__main__":
  main()
