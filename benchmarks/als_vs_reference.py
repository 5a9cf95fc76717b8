"""ALS in TensorFlow vs the tools users reach for first: `implicit` (CPU) and Spark MLlib.

Same data, rank, lambda and iterations for every contender:

- Implicit feedback (play counts of the synthetic catalogue, the temporal
  leave-one-out split of `--model als`): our solver (exact Cholesky and
  3-step conjugate gradient) vs `implicit.cpu.als.AlternatingLeastSquares`
  (its default conjugate gradient, and its exact Cholesky solver). Both
  minimize the same objective: `implicit` treats the matrix values as the
  confidences c, so it is given c = 1 + alpha * log1p(plays) (its own
  `alpha` = 1). Reported: seconds per iteration and test HR@10 (the user's
  training and validation tracks excluded, every track ranked).
- Explicit feedback (ratings, the 80/10/10 ratio split of `--feedback
  explicit`): our solver with lambda scaled by each row's count and no
  centering (the ALS-WR objective Spark minimizes) vs `pyspark.ml.recommendation.ALS`
  in local mode. Reported: seconds per iteration and test RMSE (test rows of
  users and tracks seen in training; predictions not clipped).

Seconds per iteration: for our solver and `implicit`, the median of the
per-iteration times of one fit (ours after a warm-up fit that traces the
graphs); for Spark, the marginal cost (t(N) - t(1)) / (N - 1) over fits of N
and 1 iterations after a warm-up fit (JVM and job start-up are not counted;
they are reported apart as `setup_s`).

Targets of issue 6: within 2x of `implicit`'s time per iteration, at least
5x faster than Spark local, RMSE within 1% of Spark's.

Benchmark-only dependencies (not runtime ones): `pip install implicit pyspark`
(Spark needs a Java 17+ runtime).

  python -m benchmarks.als_vs_reference --preset default --rank 32 --iterations 10
"""

import argparse
import json
import logging
import os
import time
from typing import Any, Callable, Dict

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music import training
from tfrec_music.evaluation.protocol import evaluation_rows
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.models.als import ALSParams
from tfrec_music.models.als import ALSSolver
from tfrec_music.models.als import confidence


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


def _per_iteration(times) -> Dict[str, float]:
  """Median (robust on a shared machine) and mean of per-iteration seconds."""
  times = np.asarray(times, np.float64)
  return {"seconds_per_iteration": float(np.median(times)),
          "mean_seconds_per_iteration": float(times.mean()), "iterations_timed": len(times)}


def _prepared(preset: str, feedback: str, seed: int):
  config = training.RunConfig(model="als", preset=preset, seed=seed, job_dir="/tmp/als_bench",
                              hparams={"feedback": feedback})
  _, _, _, prepared, _, _ = training.load_and_prepare(config)
  return prepared


def _hr10(prepared, user_index: pd.Index, user_factors: np.ndarray,
          item_factors: np.ndarray) -> float:
  users, targets, exclude, _ = evaluation_rows(prepared, "test")
  rows = user_index.get_indexer(users)

  def score(batch):
    return user_factors[rows[np.searchsorted(users_order, batch)]] @ item_factors.T
  # Score by position: queries are row numbers into `users`.
  users_order = np.arange(len(users))
  result = evaluate_retrieval(score, users_order, targets, n_items=prepared.n_items,
                              exclude=exclude, ks=(10,))
  return float(result["all/hr@10"])


def _timed_solver(users, items, values, n_users, n_items, params: ALSParams):
  """Fits our solver, timing each iteration (after a traced warm-up pass).

  Each timed iteration includes the loss evaluation `ALSSolver.step` does
  (`implicit` is timed without its optional loss).
  """
  warm = ALSSolver(users, items, values, n_users, n_items, params)
  warm.run(1)  # traces the tf.functions of every block shape
  solver = ALSSolver(users, items, values, n_users, n_items, params)
  times, last = [], [time.perf_counter()]

  def tick(iteration, loss):
    del iteration, loss
    now = time.perf_counter()
    times.append(now - last[0])
    last[0] = now
  solver.run(callback=tick)
  return solver, times


def implicit_benchmark(preset: str, rank: int, reg: float, alpha: float, iterations: int,
                       seed: int) -> Dict[str, Any]:
  """Our implicit ALS vs the `implicit` library on the same confidence matrix."""
  prepared = _prepared(preset, "implicit", seed)
  train = prepared.train
  user_index = pd.Index(np.asarray(prepared.vocabularies["user_id"]).astype(str))
  users = user_index.get_indexer(train["user_id"].astype(str))
  items = prepared.item_index(train["item_id"])
  plays = train["weight"].to_numpy(np.float64) if "weight" in train else np.ones(len(train))
  out: Dict[str, Any] = {"data": {"users": len(user_index), "items": prepared.n_items,
                                  "train_rows": len(train), "test_rows": len(prepared.test)},
                         "rank": rank, "reg": reg, "alpha": alpha, "iterations": iterations}
  for solver in ("cholesky", "cg"):
    params = ALSParams(rank=rank, reg=reg, feedback="implicit", alpha=alpha, weight="log1p",
                       iterations=iterations, solver=solver, cg_steps=3, seed=seed)
    s, times = _timed_solver(users, items, plays, len(user_index), prepared.n_items, params)
    out[f"tfrec_als_{solver}"] = {**_per_iteration(times), "final_loss": s.losses[-1],
                                  "test_hr@10": _hr10(prepared, user_index,
                                                      s.user_factors.numpy(),
                                                      s.item_factors.numpy())}
    logging.info("tfrec ALS (%s): %s", solver, out[f"tfrec_als_{solver}"])
  try:
    import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
    from implicit.cpu.als import AlternatingLeastSquares  # pylint: disable=g-import-not-at-top
  except ImportError:
    out["implicit"] = "not installed: pip install implicit"
    return out
  import implicit  # pylint: disable=g-import-not-at-top
  out["implicit_version"] = implicit.__version__
  conf = confidence(plays, alpha, "log1p").astype(np.float32)
  matrix = sp.csr_matrix((conf, (users, items)), shape=(len(user_index), prepared.n_items))
  for use_cg in (True, False):
    times = []
    model = AlternatingLeastSquares(factors=rank, regularization=reg, alpha=1.0,
                                    iterations=iterations, use_cg=use_cg, use_native=True,
                                    calculate_training_loss=False, random_state=seed)
    model.fit(matrix, show_progress=False, callback=lambda i, elapsed, loss: times.append(elapsed))
    name = "implicit_cg" if use_cg else "implicit_cholesky"
    out[name] = {**_per_iteration(times), "test_hr@10": _hr10(prepared, user_index,
                                                             np.asarray(model.user_factors),
                                                             np.asarray(model.item_factors))}
    logging.info("%s: %s", name, out[name])
  return out


def explicit_benchmark(preset: str, rank: int, reg: float, iterations: int,
                       seed: int) -> Dict[str, Any]:
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
                         "rank": rank, "reg": reg, "iterations": iterations}
  params = ALSParams(rank=rank, reg=reg, reg_scaled=True, feedback="explicit",
                     iterations=iterations, seed=seed)

  s, times = _timed_solver(users, items, ratings, len(user_index), len(item_index), params)
  timed = _per_iteration(times)
  pred = s.predict(tu[known], ti[known])
  out["tfrec_als"] = {**timed, "test_rmse": float(np.sqrt(np.mean((pred - truth) ** 2)))}
  logging.info("tfrec ALS explicit: %s", out["tfrec_als"])
  try:
    from pyspark.ml.recommendation import ALS  # pylint: disable=g-import-not-at-top
    from pyspark.sql import SparkSession  # pylint: disable=g-import-not-at-top
  except ImportError:
    out["spark"] = "not installed: pip install pyspark (and a Java 17+ runtime)"
    return out
  import pyspark  # pylint: disable=g-import-not-at-top
  spark = (SparkSession.builder.master("local[*]").appName("als_benchmark")
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
  timed = _marginal(spark_fit, iterations)
  model = timed.pop("result")
  scored = model.transform(test_frame).toPandas()
  out["spark"] = {**timed, "test_rmse": float(np.sqrt(np.mean(
      (scored["prediction"].to_numpy(np.float64) - scored["r"].to_numpy(np.float64)) ** 2))),
                  "rows_scored": int(len(scored))}
  logging.info("Spark ALS explicit: %s", out["spark"])
  spark.stop()
  return out


def targets(implicit_result: Dict[str, Any], explicit_result: Dict[str, Any]) -> Dict[str, Any]:
  """The issue's three targets, as ratios and pass/fail."""
  out: Dict[str, Any] = {}
  if isinstance(implicit_result.get("implicit_cg"), dict):
    ours = min(implicit_result["tfrec_als_cholesky"]["seconds_per_iteration"],
               implicit_result["tfrec_als_cg"]["seconds_per_iteration"])
    theirs = implicit_result["implicit_cg"]["seconds_per_iteration"]
    out["time_vs_implicit"] = ours / theirs
    out["within_2x_of_implicit"] = ours <= 2 * theirs
  if isinstance(explicit_result.get("spark"), dict):
    ours = explicit_result["tfrec_als"]["seconds_per_iteration"]
    spark = explicit_result["spark"]["seconds_per_iteration"]
    out["speedup_vs_spark"] = spark / ours
    out["at_least_5x_faster_than_spark"] = spark >= 5 * ours
    rmse, spark_rmse = explicit_result["tfrec_als"]["test_rmse"], explicit_result["spark"]["test_rmse"]
    out["rmse_relative_to_spark"] = rmse / spark_rmse - 1.0
    out["rmse_within_1pct_of_spark"] = abs(rmse / spark_rmse - 1.0) <= 0.01
  return out


def main() -> None:
  """Runs both benchmarks and prints (and optionally writes) one JSON report."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="default", help="Synthetic preset (tiny, default).")
  parser.add_argument("--rank", type=int, default=32)
  parser.add_argument("--iterations", type=int, default=10)
  parser.add_argument("--implicit-reg", type=float, default=10.0)
  parser.add_argument("--alpha", type=float, default=3.0)
  parser.add_argument("--explicit-reg", type=float, default=0.1,
                      help="Spark's regParam (scaled by each row's count, ALS-WR).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip", choices=("implicit", "explicit"), action="append", default=[])
  parser.add_argument("--output", default=None, help="Write the JSON report here too.")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  report: Dict[str, Any] = {"cpu_count": os.cpu_count(), "preset": args.preset}
  report["implicit_feedback"] = ({} if "implicit" in args.skip else implicit_benchmark(
      args.preset, args.rank, args.implicit_reg, args.alpha, args.iterations, args.seed))
  report["explicit_feedback"] = ({} if "explicit" in args.skip else explicit_benchmark(
      args.preset, args.rank, args.explicit_reg, args.iterations, args.seed))
  report["targets"] = targets(report["implicit_feedback"], report["explicit_feedback"])
  text = json.dumps(report, indent=2, default=float)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
