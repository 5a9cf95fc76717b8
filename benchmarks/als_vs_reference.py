"""ALS in TensorFlow vs the tools users reach for first: `implicit` (CPU) and Spark MLlib.

Same data, rank, lambda and iterations for every contender:

- Implicit feedback (play counts of the synthetic catalogue, the temporal
  leave-one-out split of `--model als`): our solver (3-step conjugate
  gradient and exact Cholesky) vs `implicit.cpu.als.AlternatingLeastSquares`
  (its default conjugate gradient, and its exact Cholesky solver). Both
  minimize the same objective: `implicit` treats the matrix values as the
  confidences c, so it is given c = 1 + alpha * log1p(plays) (its own
  `alpha` = 1). Reported: seconds per iteration and test HR@10 (the user's
  training and validation tracks excluded, every track ranked).
- Explicit feedback (ratings, the 80/10/10 ratio split of `--feedback
  explicit`): our solver (6 CG steps, the family's default, and exact
  Cholesky) with lambda scaled by each row's count and no centering (the
  ALS-WR objective Spark minimizes) vs `pyspark.ml.recommendation.ALS`
  in local mode. Reported: seconds per iteration and test RMSE (test rows of
  users and tracks seen in training; predictions not clipped).

Timing, on a machine others share: every contender is fitted `--repeats`
times, the fits interleaved (ours, then the reference, then ours again...),
and the median is reported, in wall seconds and in CPU seconds of the
process (all its threads; with `--threads 1` the least load-sensitive
comparison). Seconds per iteration: for our solver and
`implicit`, the median over the repeats of the per-iteration times of a fit
(ours after a warm-up fit that compiles the block programs: that first
iteration is reported apart as `first_iteration_s`; ours includes the loss
it computes every iteration, `implicit` is timed without its optional loss);
for Spark, the marginal cost (t(N) - t(1)) / (N - 1) over fits of N and 1
iterations after a warm-up fit (JVM and job start-up are not counted; they
are reported apart as `setup_s`). `implicit` runs in its own process (no
TensorFlow thread pools beside it) with BLAS on one thread, as it
recommends.

Targets of issue 23: ours / `implicit` CG time per iteration <= 1 on the
default preset and with 10x its users (`--users-scale 10`), test HR@10
within 0.005, at least 5x faster than Spark local, RMSE within 1% of
Spark's.

Benchmark-only dependencies (not runtime ones): `pip install -e '.[bench]'`
(`implicit`, `pyspark`; Spark needs a Java 17+ runtime).

  python -m benchmarks.als_vs_reference --preset default --rank 32 --iterations 10
  python -m benchmarks.als_vs_reference --users-scale 10 --skip explicit --solvers cg

`--solvers cg` times the conjugate-gradient solvers only (ours and
`implicit`'s), the faster ones: the suite's 10x-users entry skips the exact
Cholesky fits (5-6x slower per iteration there, and most of its time).
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music import training
from tfrec_music.data import synthetic
from tfrec_music.evaluation.protocol import evaluation_rows
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.models.als import ALSFamily
from tfrec_music.models.als import ALSParams
from tfrec_music.models.als import ALSSolver
from tfrec_music.models.als import confidence
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare

# One `implicit` fit, in a process of its own: reads the confidence matrix,
# writes the per-iteration seconds and the factors.
_IMPLICIT_FIT = """
import json, sys, time, numpy as np, scipy.sparse as sp
from threadpoolctl import threadpool_limits
import implicit
from implicit.cpu.als import AlternatingLeastSquares
data = np.load(sys.argv[1])
args = json.loads(sys.argv[2])
matrix = sp.csr_matrix((data["conf"], (data["users"], data["items"])),
                       shape=(int(data["n_users"]), int(data["n_items"])))
times, cpu = [], [time.process_time()]
with threadpool_limits(1, "blas"):
  model = AlternatingLeastSquares(factors=args["rank"], regularization=args["reg"], alpha=1.0,
                                  iterations=args["iterations"], use_cg=args["use_cg"],
                                  use_native=True, calculate_training_loss=False,
                                  num_threads=args["threads"], random_state=args["seed"])
  def tick(iteration, elapsed, loss):
    times.append(elapsed)
    cpu.append(time.process_time())
  model.fit(matrix, show_progress=False, callback=tick)
np.savez(sys.argv[3], user_factors=np.asarray(model.user_factors),
         item_factors=np.asarray(model.item_factors))
print(json.dumps({"times": times, "cpu": np.diff(cpu).tolist(), "version": implicit.__version__}))
"""


def _marginal(fit: Callable[[int], Any], iterations: int) -> Dict[str, float]:
  """Spark: after a warm-up fit, times fits of 1 and N iterations.

  Returns per-iteration seconds (t(N) - t(1)) / (N - 1), setup seconds and
  the N-iteration fit under `result`.
  """
  fit(1)  # warm-up: JVM, JIT, caches
  start = time.perf_counter()
  fit(1)
  one = time.perf_counter() - start
  start = time.perf_counter()
  result = fit(iterations)
  total = time.perf_counter() - start
  per_iteration = (total - one) / max(iterations - 1, 1)
  return {"seconds_per_iteration": per_iteration, "setup_s": max(one - per_iteration, 0.0),
          "total_s": total, "result": result}


def _per_iteration(runs: List[List[float]], cpu: List[List[float]]) -> Dict[str, Any]:
  """Median over repeated fits of each fit's median wall (and CPU) seconds per iteration."""
  medians = [float(np.median(times)) for times in runs]
  return {"seconds_per_iteration": float(np.median(medians)),
          "per_repeat": medians, "iterations_timed": len(runs[0]) if runs else 0,
          "cpu_seconds_per_iteration": float(np.median([np.median(c) for c in cpu]))}


def _prepared(preset: str, feedback: str, seed: int, users_scale: int = 1):
  """The prepared data `--model als` trains on; `users_scale` multiplies the users."""
  if users_scale == 1:
    config = training.RunConfig(model="als", preset=preset, seed=seed,
                                job_dir="/tmp/als_bench", hparams={"feedback": feedback})
    return training.load_and_prepare(config)[3]
  n_users = synthetic.resolve_config(preset).n_users * users_scale
  catalogue = synthetic.generate(preset, seed=seed, n_users=n_users)
  overrides = ALSFamily.prepare_overrides_for(ALSFamily.make_config(preset,
                                                                    {"feedback": feedback}))
  return prepare(catalogue.tables, PrepareConfig(seed=seed, **dict(overrides)))


def _hr10(prepared, user_index: pd.Index, user_factors: np.ndarray,
          item_factors: np.ndarray) -> float:
  users, targets, exclude, _ = evaluation_rows(prepared, "test")
  rows = user_index.get_indexer(users)

  def score(batch):
    return user_factors[rows[batch]] @ item_factors.T
  # Score by position: queries are row numbers into `users`.
  result = evaluate_retrieval(score, np.arange(len(users)), targets, n_items=prepared.n_items,
                              exclude=exclude, ks=(10,))
  return float(result["all/hr@10"])


def _timed_fit(users, items, values, n_users, n_items, params: ALSParams):
  """Fits our solver; returns (solver, wall and CPU seconds of each iteration, loss included)."""
  solver = ALSSolver(users, items, values, n_users, n_items, params)
  times, cpu, last = [], [], [time.perf_counter(), time.process_time()]

  def tick(iteration, loss):
    del iteration, loss
    now = time.perf_counter(), time.process_time()
    times.append(now[0] - last[0])
    cpu.append(now[1] - last[1])
    last[:] = now
  solver.run(callback=tick)
  return solver, times, cpu


def _warm_up(users, items, values, n_users, n_items, params: ALSParams) -> float:
  """Seconds of a first iteration (tracing and compiling the block programs)."""
  start = time.perf_counter()
  ALSSolver(users, items, values, n_users, n_items, params).run(1)
  return time.perf_counter() - start


def _implicit_fit(matrix_path: str, rank: int, reg: float, iterations: int, use_cg: bool,
                  seed: int, out_dir: str, threads: int) -> Dict[str, Any]:
  """One `implicit` fit in a fresh process: times, factors and version."""
  factors = os.path.join(out_dir, "factors.npz")
  args = json.dumps({"rank": rank, "reg": reg, "iterations": iterations, "use_cg": use_cg,
                     "seed": seed, "threads": threads})
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
  done = subprocess.run([sys.executable, "-c", _IMPLICIT_FIT, matrix_path, args, factors],
                        capture_output=True, text=True, env=env, check=True)
  out = json.loads(done.stdout.strip().splitlines()[-1])
  with np.load(factors) as f:
    out["user_factors"], out["item_factors"] = f["user_factors"], f["item_factors"]
  return out


def implicit_benchmark(preset: str, rank: int, reg: float, alpha: float, iterations: int,
                       seed: int, repeats: int, users_scale: int = 1,
                       threads: int = 0, solvers: Tuple[str, ...] = ("cg", "cholesky")
                       ) -> Dict[str, Any]:
  """Our implicit ALS vs the `implicit` library on the same confidence matrix (each with
  `solvers`)."""
  prepared = _prepared(preset, "implicit", seed, users_scale)
  train = prepared.train
  user_index = pd.Index(np.asarray(prepared.vocabularies["user_id"]).astype(str))
  users = user_index.get_indexer(train["user_id"].astype(str))
  items = prepared.item_index(train["item_id"])
  plays = train["weight"].to_numpy(np.float64) if "weight" in train else np.ones(len(train))
  n_users, n_items = len(user_index), prepared.n_items
  out: Dict[str, Any] = {"data": {"users": n_users, "items": n_items, "users_scale": users_scale,
                                  "train_rows": len(train), "test_rows": len(prepared.test)},
                         "rank": rank, "reg": reg, "alpha": alpha, "iterations": iterations,
                         "repeats": repeats}
  params = {s: ALSParams(rank=rank, reg=reg, feedback="implicit", alpha=alpha, weight="log1p",
                         iterations=iterations, solver=s, cg_steps=3, seed=seed)
            for s in solvers}
  first = {s: _warm_up(users, items, plays, n_users, n_items, p) for s, p in params.items()}
  try:
    import implicit  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    have_implicit = True
  except ImportError:
    out["implicit"] = "not installed: pip install implicit"
    have_implicit = False
  runs: Dict[str, List[List[float]]] = {}
  cpu: Dict[str, List[List[float]]] = {}
  fitted: Dict[str, Any] = {}
  with tempfile.TemporaryDirectory() as tmp:
    matrix_path = os.path.join(tmp, "matrix.npz")
    np.savez(matrix_path, users=users, items=items, n_users=n_users, n_items=n_items,
             conf=confidence(plays, alpha, "log1p").astype(np.float32))
    for repeat in range(repeats):
      for solver, p in params.items():
        s, times, cpu_times = _timed_fit(users, items, plays, n_users, n_items, p)
        runs.setdefault(f"tfrec_als_{solver}", []).append(times)
        cpu.setdefault(f"tfrec_als_{solver}", []).append(cpu_times)
        fitted[f"tfrec_als_{solver}"] = (s.user_factors.numpy(), s.item_factors.numpy(),
                                         s.losses[-1])
      if have_implicit:
        for use_cg in [s == "cg" for s in solvers]:
          name = "implicit_cg" if use_cg else "implicit_cholesky"
          result = _implicit_fit(matrix_path, rank, reg, iterations, use_cg, seed, tmp, threads)
          runs.setdefault(name, []).append(result["times"])
          cpu.setdefault(name, []).append(result["cpu"])
          fitted[name] = (result["user_factors"], result["item_factors"], None)
          out["implicit_version"] = result["version"]
      logging.info("repeat %d: %s", repeat + 1,
                   {k: round(float(np.median(v[-1])), 4) for k, v in runs.items()})
  for name, timed in runs.items():
    user_factors, item_factors, loss = fitted[name]
    out[name] = {**_per_iteration(timed, cpu[name]),
                 "test_hr@10": _hr10(prepared, user_index, user_factors, item_factors)}
    if name.startswith("tfrec_als_"):
      out[name].update({"first_iteration_s": first[name[len("tfrec_als_"):]],
                        "final_loss": loss})
    logging.info("%s: %s", name, out[name])
  return out


def explicit_benchmark(preset: str, rank: int, reg: float, iterations: int,
                       seed: int, repeats: int, threads: int = 0) -> Dict[str, Any]:
  """Our explicit ALS-WR vs Spark MLlib's ALS in local mode."""
  prepared = _prepared(preset, "explicit", seed)
  train, test = prepared.train, prepared.test
  user_index = pd.Index(pd.unique(train["user_id"].astype(str)))
  item_index = pd.Index(pd.unique(train["item_id"].astype(str)))
  users = user_index.get_indexer(train["user_id"].astype(str))
  items = item_index.get_indexer(train["item_id"].astype(str))
  ratings = train["rating"].to_numpy(np.float64)
  tu = user_index.get_indexer(test["user_id"].astype(str))
  ti = item_index.get_indexer(test["item_id"].astype(str))
  known = (tu >= 0) & (ti >= 0)
  truth = test["rating"].to_numpy(np.float64)[known]
  out: Dict[str, Any] = {"data": {"users": len(user_index), "items": len(item_index),
                                  "train_rows": len(train), "test_rows_scored": int(known.sum()),
                                  "test_rows_unseen": int((~known).sum())},
                         "rank": rank, "reg": reg, "iterations": iterations, "repeats": repeats}
  # `tfrec_als`: the family's default solver (6 CG steps); `tfrec_als_cholesky`: exact.
  params = {name: ALSParams(rank=rank, reg=reg, reg_scaled=True, feedback="explicit",
                            iterations=iterations, seed=seed, **solver)
            for name, solver in (("tfrec_als", {"solver": "cg", "cg_steps": 6}),
                                 ("tfrec_als_cholesky", {"solver": "cholesky"}))}
  first = {name: _warm_up(users, items, ratings, len(user_index), len(item_index), p)
           for name, p in params.items()}
  try:
    from pyspark.ml.recommendation import ALS  # pylint: disable=g-import-not-at-top
    from pyspark.sql import SparkSession  # pylint: disable=g-import-not-at-top
  except ImportError:
    ALS = None  # pylint: disable=invalid-name
    out["spark"] = "not installed: pip install pyspark (and a Java 17+ runtime)"
  if ALS is not None:
    import pyspark  # pylint: disable=g-import-not-at-top
    spark = (SparkSession.builder.master(f"local[{threads or '*'}]").appName("als_benchmark")
             .config("spark.driver.memory", "4g").config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    out["spark_version"] = pyspark.__version__
    frame = spark.createDataFrame(pd.DataFrame({"u": users.astype(np.int32),
                                                "i": items.astype(np.int32),
                                                "r": ratings.astype(np.float32)})).cache()
    frame.count()
    test_frame = spark.createDataFrame(pd.DataFrame({"u": tu[known].astype(np.int32),
                                                     "i": ti[known].astype(np.int32),
                                                     "r": truth.astype(np.float32)})).cache()
    test_frame.count()

    def spark_fit(n):
      als = ALS(rank=rank, maxIter=n, regParam=reg, userCol="u", itemCol="i", ratingCol="r",
                implicitPrefs=False, seed=seed, coldStartStrategy="drop")
      model = als.fit(frame)
      model.userFactors.count()  # fitting is lazy in parts: force the factors
      model.itemFactors.count()
      return model
  ours: Dict[str, Any] = {name: ([], []) for name in params}
  spark_runs = []
  for repeat in range(repeats):
    for name, p in params.items():
      solver, times, cpu_times = _timed_fit(users, items, ratings, len(user_index),
                                            len(item_index), p)
      ours[name][0].append(times)
      ours[name][1].append(cpu_times)
      pred = solver.predict(tu[known], ti[known])
      out[name] = {"test_rmse": float(np.sqrt(np.mean((pred - truth) ** 2)))}
    if ALS is not None:
      spark_runs.append(_marginal(spark_fit, iterations))
    logging.info("repeat %d: ours %s s/iteration, Spark %s", repeat + 1,
                 {name: round(float(np.median(t[0][-1])), 4) for name, t in ours.items()},
                 spark_runs[-1]["seconds_per_iteration"] if spark_runs else None)
  for name, (times, cpu_times) in ours.items():
    out[name].update({**_per_iteration(times, cpu_times), "first_iteration_s": first[name]})
  if spark_runs:
    scored = spark_runs[-1]["result"].transform(test_frame).toPandas()
    out["spark"] = {
        **{key: float(np.median([r[key] for r in spark_runs]))
           for key in ("seconds_per_iteration", "setup_s", "total_s")},
        "per_repeat": [r["seconds_per_iteration"] for r in spark_runs],
        "test_rmse": float(np.sqrt(np.mean((scored["prediction"].to_numpy(np.float64)
                                            - scored["r"].to_numpy(np.float64)) ** 2))),
        "rows_scored": int(len(scored))}
    spark.stop()
  logging.info("explicit: ours %s, Spark %s", out["tfrec_als"], out.get("spark"))
  return out


def targets(implicit_result: Dict[str, Any], explicit_result: Dict[str, Any]) -> Dict[str, Any]:
  """Issue 23's targets, as ratios and pass/fail."""
  out: Dict[str, Any] = {}
  if isinstance(implicit_result.get("implicit_cg"), dict):
    ours = min((implicit_result[f"tfrec_als_{s}"] for s in ("cg", "cholesky")
                if f"tfrec_als_{s}" in implicit_result),
               key=lambda r: r["seconds_per_iteration"])
    theirs = implicit_result["implicit_cg"]
    out["time_vs_implicit"] = ours["seconds_per_iteration"] / theirs["seconds_per_iteration"]
    out["at_most_implicit_time"] = out["time_vs_implicit"] <= 1.0
    out["hr10_minus_implicit"] = ours["test_hr@10"] - theirs["test_hr@10"]
    out["hr10_within_0.005"] = abs(out["hr10_minus_implicit"]) <= 0.005
  if isinstance(explicit_result.get("spark"), dict):
    ours = explicit_result["tfrec_als"]["seconds_per_iteration"]
    spark = explicit_result["spark"]["seconds_per_iteration"]
    out["speedup_vs_spark"] = spark / ours
    out["at_least_5x_faster_than_spark"] = spark >= 5 * ours
    rmse = explicit_result["tfrec_als"]["test_rmse"]
    spark_rmse = explicit_result["spark"]["test_rmse"]
    out["rmse_relative_to_spark"] = rmse / spark_rmse - 1.0
    out["rmse_within_1pct_of_spark"] = abs(rmse / spark_rmse - 1.0) <= 0.01
  return out


def main() -> None:
  """Runs both benchmarks and prints (and optionally writes) one JSON report."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="default", help="Synthetic preset (tiny, default).")
  parser.add_argument("--users-scale", type=int, default=1,
                      help="Multiply the preset's users (implicit feedback), e.g. 10.")
  parser.add_argument("--rank", type=int, default=32)
  parser.add_argument("--iterations", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3,
                      help="Interleaved fits per contender; medians are reported.")
  parser.add_argument("--implicit-reg", type=float, default=10.0)
  parser.add_argument("--alpha", type=float, default=3.0)
  parser.add_argument("--explicit-reg", type=float, default=0.1,
                      help="Spark's regParam (scaled by each row's count, ALS-WR).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=0,
                      help="Threads of every contender (0: each library's default, all cores).")
  parser.add_argument("--skip", choices=("implicit", "explicit"), action="append", default=[])
  parser.add_argument("--solvers", nargs="+", choices=("cg", "cholesky"),
                      default=["cg", "cholesky"],
                      help="Implicit-feedback solvers timed (ours and implicit's).")
  parser.add_argument("--output", default=None, help="Write the JSON report here too.")
  args = parser.parse_args()
  if args.users_scale < 1 or args.repeats < 1 or args.threads < 0:
    parser.error("`--users-scale` and `--repeats` should be positive integers, `--threads` "
                 "non-negative.")
  if args.threads:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  report: Dict[str, Any] = {"cpu_count": os.cpu_count(), "preset": args.preset,
                            "threads": args.threads, "load_average_start": list(os.getloadavg())}
  report["implicit_feedback"] = ({} if "implicit" in args.skip else implicit_benchmark(
      args.preset, args.rank, args.implicit_reg, args.alpha, args.iterations, args.seed,
      args.repeats, args.users_scale, args.threads, tuple(args.solvers)))
  report["explicit_feedback"] = ({} if "explicit" in args.skip else explicit_benchmark(
      args.preset, args.rank, args.explicit_reg, args.iterations, args.seed, args.repeats,
      args.threads))
  report["targets"] = targets(report["implicit_feedback"], report["explicit_feedback"])
  report["load_average_end"] = list(os.getloadavg())
  text = json.dumps(report, indent=2, default=float)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
