"""Shared helpers of the benchmark scripts: run summaries and the machine description.

Every figure a benchmark reports is the median of several runs with their min
and max (`summarize`), and every report carries the machine it ran on
(`machine`). A script prints its report as one line prefixed with
`RESULT_JSON ` (`emit`), which `benchmarks.run_all` collects into
BENCHMARKS.md and a JSON file.
"""

import json
from importlib import metadata
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

RESULT_PREFIX = "RESULT_JSON "


def summarize(values: Sequence[float]) -> Dict[str, Any]:
  """Median, min and max of per-run values.

  Args:
    values: One figure per run (at least one).

  Returns:
    `{"median", "min", "max", "runs"}` (floats, and the run count).
  """
  values = [float(v) for v in values]
  if not values:
    raise ValueError("`values` should hold at least one run. Received: `values` = [].")
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "runs": len(values)}


def fmt(stat: Dict[str, Any], digits: int = 4) -> str:
  """`median [min, max]` of a `summarize` dict, for tables."""
  return (f"{stat['median']:.{digits}g} [{stat['min']:.{digits}g}, "
          f"{stat['max']:.{digits}g}]")


def time_runs(fn: Callable[[], Any], runs: int) -> List[float]:
  """Calls `fn` `runs` times; returns the wall seconds of each call."""
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _memory_gib() -> Optional[float]:
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  return None


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine() -> Dict[str, Any]:
  """The machine a benchmark ran on: cores, memory, CPU, Python and library versions."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  info: Dict[str, Any] = {"cores": cores, "memory_gib": _memory_gib(), "cpu": _cpu_model(),
                          "platform": platform.platform(), "python": sys.version.split()[0]}
  for name in ("tensorflow", "tf-keras", "tensorflow-recommenders", "scann", "numpy"):
    try:
      info[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      info[name] = None
  return info


def emit(name: str, report: Dict[str, Any], json_path: Optional[str] = None) -> None:
  """Prints the report as one `RESULT_JSON` line (and writes it to `json_path`).

  Args:
    name: Benchmark name (the module's short name).
    report: JSON-serializable figures.
    json_path: Optional file to write the same object to.
  """
  payload = {"benchmark": name, "machine": machine(), **report}
  text = json.dumps(payload, default=float)
  print(RESULT_PREFIX + text, flush=True)
  if json_path:
    with open(json_path, "w", encoding="utf-8") as f:
      f.write(json.dumps(payload, indent=2, default=float) + "\n")


def print_seed_table(rows: List[Dict[str, float]], title: str, json_path: Optional[str] = None,
                     width: int = 8) -> None:
  """Prints median, min and max of each figure over per-seed rows (and writes them as JSON).

  Args:
    rows: One dict of figures per seed (all with the same keys).
    title: Line printed above the table (seeds, preset, overrides).
    json_path: Also write the rows to this file.
    width: Field width of the numbers (4 decimals).
  """
  print(f"\n{title}")
  for key in sorted(rows[0]):
    values = [r[key] for r in rows]
    print(f"{key:40s} median {statistics.median(values):{width}.4f}  "
          f"min {min(values):{width}.4f}  max {max(values):{width}.4f}")
  if json_path:
    with open(json_path, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=2)


def parse_sets(items: List[str]) -> Dict[str, Any]:
  """`--set NAME=VALUE` flags as a dict; values are JSON where they parse, else strings."""
  out: Dict[str, Any] = {}
  for item in items:
    name, value = item.split("=", 1)
    try:
      out[name] = json.loads(value)
    except json.JSONDecodeError:
      out[name] = value
  return out


def rss_mb() -> float:
  """Current resident set size of this process in MiB (Linux `/proc`), NaN elsewhere."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return float("nan")

