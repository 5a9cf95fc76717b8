"""Throughput of batched similar-user queries from a `user_similarity` export.

Builds a real export on the synthetic catalogue grown to `--users` listeners
(default 10,000; text track vectors, so no two-tower training is needed: the
index cost depends on users x dimensions, not on where vectors came from),
then, in a fresh process, loads the exact-index SavedModel (what stock TF
Serving runs) and asks `serving_default` for the top-k similar users of every
indexed user, in batches, after one warm-up batch. Prints users per second
for the exact and the ScaNN variant:

  python -m benchmarks.similar_users_throughput             # 10k x 10k
  python -m benchmarks.similar_users_throughput --users 2000 --batch 500
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

_TIMER = """
import json, sys, time
import numpy as np, tensorflow as tf
from scann.scann_ops.py import scann_ops  # ScaNN ops for the scann/ variant
path, batch, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = np.array(open(path + "/vectors/users/ids.txt").read().split("\\n")[:-1], dtype=object)
out = {"users": len(ids)}
for kind, folder in (("exact", path), ("scann", path + "/scann")):
  serve = tf.saved_model.load(folder).signatures["serving_default"]
  serve(user_id=tf.constant(ids[:batch]))  # warm-up (tracing, first allocation)
  rates = []
  for _ in range(runs):
    start = time.perf_counter()
    for lo in range(0, len(ids), batch):
      result = serve(user_id=tf.constant(ids[lo:lo + batch]))
      result["user_ids"].numpy()
    rates.append(len(ids) / (time.perf_counter() - start))
  out[kind] = {"users_per_second": rates, "best": max(rates), "median": float(np.median(rates)),
               "k": int(result["user_ids"].shape[1]), "known": bool(result["known"].numpy().all())}
print(json.dumps(out))
"""


def build_export(n_users: int, export_dir: str, word_dim: int, seed: int) -> str:
  """Generates the catalogue, fits user similarity on text vectors, exports; returns the path."""
  from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
  from tfrec_music.export.saved_model import export_versioned  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.user_similarity import UserSimilarityFamily  # pylint: disable=g-import-not-at-top
  from tfrec_music.prepare import PrepareConfig  # pylint: disable=g-import-not-at-top
  from tfrec_music.prepare import prepare  # pylint: disable=g-import-not-at-top
  catalogue = synthetic.generate("default", seed=seed, n_users=n_users)
  prepared = prepare(catalogue.tables, PrepareConfig(**UserSimilarityFamily.prepare_overrides))
  config = UserSimilarityFamily.make_config("default", {
      "track_vectors": "text", "word_dim": word_dim, "heatmap_size": 0, "seed": seed})
  family = UserSimilarityFamily(config, prepared)
  family.fit(os.path.join(export_dir, "job"))
  return export_versioned(family.save, export_dir, family.name)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
  """Runs the benchmark and prints (and returns) the measurements."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--users", type=int, default=10_000)
  p.add_argument("--batch", type=int, default=1000)
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--word-dim", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--export-dir", default=None, help="Keep the export here (default: temp).")
  args = p.parse_args(argv)
  folder = args.export_dir or tempfile.mkdtemp(prefix="similar_users_")
  path = build_export(args.users, folder, args.word_dim, args.seed)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", _TIMER, path, str(args.batch), str(args.runs)],
                        capture_output=True, text=True, env=env, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"Timing process failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result.update({"export": path, "batch": args.batch, "dim": args.word_dim,
                 "cpu_count": os.cpu_count()})
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
