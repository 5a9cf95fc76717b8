"""Peak memory and input throughput of streamed two-tower training, ~1M vs ~10M interactions.

The issue's targets: peak RSS training on 10M synthetic interactions is at
most 1.3x that on 1M (embedding tables aside), and the input pipeline alone
delivers at least 3x the examples per second the training step consumes.

For each size the script writes canonical Parquet shards with
`synthetic.write_large` (the `large` catalogue: 25k tracks; skipped when
`--root` already holds them), materializes them into TFRecord shards with
`two_tower.materialize.materialize` (reused when complete), and trains one epoch
with `two_tower.stream.stream_fit` in a fresh process, reporting that
process's peak RSS (`ru_maxrss`), its RSS after imports, the bytes of the
user/track id embedding tables with their Adam slots, the training
examples/s and the examples/s of the input pipeline iterated alone.

What grows (`--grow`): `per_user` (default) keeps 20k users and the catalogue
fixed and raises the interactions per user (mean 50 -> 500), so the embedding
tables are the same size at both scales and the raw ratio is the one to read;
`users` keeps 50 interactions per user and raises the users (20k -> 200k),
so the user table grows: the table-adjusted ratio subtracts the tables.

  python -m benchmarks.two_tower_streaming                     # ~1M vs ~10M
  python -m benchmarks.two_tower_streaming --targets 50000 200000 --users 1000 \
      --root /tmp/tts_quick
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from benchmarks import _stats

_N_ITEMS = 25_000

_MATERIALIZE = r"""
import json, resource, sys
from tfrec_music.models.two_tower.materialize import materialize
m = materialize(sys.argv[1], sys.argv[2], int(sys.argv[3]))
m["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
print(json.dumps(m))
"""

_TRAIN = r"""
import json, resource, sys
import tfrec_music
import tensorflow
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.models.two_tower.stream import stream_fit
from benchmarks._stats import rss_mb
after_imports = rss_mb()  # the runtime is part of the baseline, not of the data
config = TwoTowerFamily.make_config("default", json.loads(sys.argv[3]))
summary = stream_fit(sys.argv[1], config, sys.argv[2])
summary.pop("history")
summary["rss_after_imports_mb"] = round(after_imports, 1)
summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
print(json.dumps(summary, default=float))
"""


def _overrides(target: int, grow: str, users: int) -> Dict[str, object]:
  if grow == "per_user":
    mean = target / users
  else:
    users, mean = max(2, int(round(target / 50))), 50.0
  return {"n_users": int(users), "mean_interactions": float(mean),
          "max_interactions": int(min(_N_ITEMS // 2, 40 * mean)), "n_playlists": 0}


def _run(code: str, args: List[str]) -> dict:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
  proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        cwd=repo, check=False, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def write_data(folder: str, overrides: Dict[str, object]) -> Dict[str, object]:
  """Writes the canonical shards once (kept for reruns); returns how long it took."""
  from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
  stamp = os.path.join(folder, "bench_overrides.json")
  if os.path.exists(stamp):
    with open(stamp, encoding="utf-8") as f:
      if json.load(f) == overrides:
        with open(os.path.join(folder, "data_card.json"), encoding="utf-8") as g:
          return {"n_interactions": json.load(g)["n_interactions"], "write_seconds": None}
  start = time.perf_counter()
  card = synthetic.write_large(folder, preset="large", seed=0, shard_rows=1_000_000, **overrides)
  with open(stamp, "w", encoding="utf-8") as f:
    json.dump(overrides, f)
  return {"n_interactions": card["n_interactions"],
          "write_seconds": round(time.perf_counter() - start, 1)}


def main(argv: Optional[List[str]] = None) -> dict:
  """Writes, materializes and trains each size; prints and returns the summary."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--targets", nargs="+", type=int, default=[1_000_000, 10_000_000],
                      help="Interactions to generate at each size (first = baseline).")
  parser.add_argument("--grow", choices=("per_user", "users"), default="per_user")
  parser.add_argument("--users", type=int, default=20_000,
                      help="Users at every size with `--grow per_user`.")
  parser.add_argument("--root", default="/tmp/two_tower_streaming",
                      help="Where data and shards are written (kept for reruns).")
  parser.add_argument("--set", nargs="*", default=["features=ids", "batch_size=2048"],
                      metavar="KEY=VALUE", help="TwoTowerConfig overrides (JSON values).")
  parser.add_argument("--json", default=None, help="Also write the report to this file.")
  args = parser.parse_args(argv)
  overrides = {"epochs": 1, "history_length": 20, **_stats.parse_sets(args.set)}
  results = {}
  for target in args.targets:
    name = f"{target}_{args.grow}"
    base = os.path.join(args.root, name)
    data = write_data(os.path.join(base, "data"), _overrides(target, args.grow, args.users))
    start = time.perf_counter()
    mat = _run(_MATERIALIZE, [os.path.join(base, "data"), os.path.join(base, "shards"),
                              str(overrides["history_length"])])
    mat_wall = time.perf_counter() - start
    job = os.path.join(base, f"job-{int(time.time())}")
    r = _run(_TRAIN, [os.path.join(base, "shards"), job, json.dumps(overrides)])
    table_mb = r["id_table_bytes"] / 2**20
    results[name] = {
        "interactions": data["n_interactions"], "data_write_seconds": data["write_seconds"],
        "materialize_seconds": mat["seconds"], "materialize_reused": mat["reused"],
        "materialize_peak_rss_mb": mat["peak_rss_mb"],
        "materialize_wall_seconds": round(mat_wall, 1),
        "train_rows": r["rows"]["train"], "users": r["users"], "items": r["items"],
        "peak_rss_mb": r["peak_rss_mb"], "rss_after_imports_mb": r["rss_after_imports_mb"],
        "id_tables_mb": round(table_mb, 1),
        "peak_rss_minus_tables_mb": round(r["peak_rss_mb"] - table_mb, 1),
        "train_examples_per_second": r["train_examples_per_second"],
        "train_seconds": r["train_seconds"],
        "input_examples_per_second": r["input_examples_per_second"],
        "input_to_train_ratio": r["input_to_train_ratio"],
        "valid_hr@10": r.get("valid/all/hr@10"), "test_hr@10": r.get("test/all/hr@10"),
        "popularity_test_hr@10": r["popularity"].get("test/all/hr@10"),
        "eval_users": r["eval_users"]}
    x = results[name]
    written = (f"written in {x['data_write_seconds']}s" if x["data_write_seconds"] is not None
               else f"reused from {base}")
    print(f"{name}: {x['interactions']} interactions ({x['train_rows']} train rows, {x['users']} "
          f"users, {x['items']} tracks); data {written}, materialized in "
          f"{x['materialize_seconds']}s{' (reused)' if x['materialize_reused'] else ''} (peak RSS "
          f"{x['materialize_peak_rss_mb']:.0f} MB); training peak RSS {x['peak_rss_mb']:.0f} MB "
          f"(after imports "
          f"{x['rss_after_imports_mb']:.0f} MB, id tables {x['id_tables_mb']:.0f} MB); "
          f"{x['train_examples_per_second']:.0f} train ex/s, input alone "
          f"{x['input_examples_per_second']:.0f} ex/s ({x['input_to_train_ratio']:.1f}x); "
          f"valid HR@10 {x['valid_hr@10']:.4f}, test HR@10 {x['test_hr@10']:.4f} "
          f"(popularity {x['popularity_test_hr@10']:.4f})", flush=True)
  names = list(results)
  first, last = results[names[0]], results[names[-1]]
  report = {"grow": args.grow, "config_overrides": overrides, "results": results,
            "peak_rss_ratio": last["peak_rss_mb"] / first["peak_rss_mb"],
            "peak_rss_ratio_minus_tables": (last["peak_rss_minus_tables_mb"]
                                            / first["peak_rss_minus_tables_mb"]),
            "min_input_to_train_ratio": min(r["input_to_train_ratio"] for r in results.values())}
  print(f"peak RSS {names[-1]} / {names[0]}: {report['peak_rss_ratio']:.3f} raw, "
        f"{report['peak_rss_ratio_minus_tables']:.3f} without the id tables (target <= 1.3); "
        f"input / train examples/s at least {report['min_input_to_train_ratio']:.1f}x "
        "(target >= 3)", flush=True)
  _stats.emit("two_tower_streaming", report, args.json)
  return report


if __name__ == "__main__":
  main()
