"""Our full-ranking evaluation vs `tfrs.metrics.FactorizedTopK` through `model.evaluate`.

Retrieval quality is the share of users whose held-out track ranks in the top
K of the whole catalogue (HR@K). TFRS computes it with the `FactorizedTopK`
metric of a `tfrs.tasks.Retrieval` task during `model.evaluate`, the way its
retrieval tutorial does (candidate vectors as a `tf.data` dataset, batched by
128, which TFRS indexes with a `Streaming` top-k layer; optionally a
`BruteForce` layer). Ours is `tfrec_music.evaluation.evaluate_embeddings`
(chunked float32 matmuls and rank counting in numpy), timed for the rank
metrics FactorizedTopK computes (`lists=False`, the speed-up) and with the
top-K lists behind coverage as well (`speedup_with_lists`).

Both see the same users, query vectors, catalogue vectors and targets (no
exclusions: `FactorizedTopK` has none). Query vectors are a noisy copy of the
target's vector (`--signal`), so HR@K is far from chance and a disagreement
would show. By default `FactorizedTopK` matches by score: the true
candidate's own copy among the retrieved scores, computed by a different
float reduction, can score a hair above it and push it down one place, so
score-matched HR@K can sit slightly below ours; `--matches ids` passes the
target ids and must agree exactly (up to exact float ties). The script prints both HR@K (they must agree up to float ties)
and the speed ratio; times are the median (min, max) of `--runs` runs, each
after one warm-up call.

Target of issue 10: >= 10x faster with the same HR@K.

  python -m benchmarks.eval_vs_factorized_topk                      # 10k users x 50k items
  python -m benchmarks.eval_vs_factorized_topk --users 500 --items 2000 --runs 1  # quick
"""

import argparse
import time
from typing import Any, Dict, List, Optional

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from benchmarks import _stats
from tfrec_music.evaluation import evaluate_embeddings


def make_data(n_users: int, n_items: int, dim: int, signal: float,
              seed: int) -> Dict[str, np.ndarray]:
  """Seeded catalogue vectors, targets and queries = signal * target vector + noise.

  Returns:
    `{"items": [M, d], "targets": [N], "queries": [N, d]}`.
  """
  rng = np.random.default_rng(seed)
  items = rng.standard_normal((n_items, dim), dtype=np.float32)
  targets = rng.integers(0, n_items, n_users)
  queries = (signal * items[targets]
             + rng.standard_normal((n_users, dim), dtype=np.float32)).astype(np.float32)
  return {"items": items, "targets": targets, "queries": queries}


class VectorRetrievalModel(tfrs.Model):
  """A retrieval model whose towers are the given vectors (identity towers).

  So `model.evaluate` times exactly what `FactorizedTopK` does: score every
  candidate for each query and compare against the true candidate's score.

  Args:
    candidates: [M, d] catalogue vectors.
    ks: The K of `FactorizedTopK`.
    index: `streaming` (the tutorial's `candidates=dataset`) or `brute_force`.
    candidate_batch: Batch size of the candidate dataset (tutorial: 128).
    match: `scores` (the tutorial: the true candidate's score is compared
      with the retrieved scores) or `ids` (retrieved catalogue indices are
      compared with the target's).
  """

  def __init__(self, candidates: np.ndarray, ks, index: str, candidate_batch: int,
               match: str = "scores"):
    super().__init__()
    self.match = match
    ids = tf.range(len(candidates), dtype=tf.int64)
    if index == "streaming":
      source = tf.data.Dataset.from_tensor_slices(candidates)
      if match == "ids":
        source = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(ids), source))
      source = source.batch(candidate_batch)
    elif index == "brute_force":
      source = tfrs.layers.factorized_top_k.BruteForce(k=max(ks))
      source.index(tf.constant(candidates), ids if match == "ids" else None)
    else:
      raise ValueError("`index` should be 'streaming' or 'brute_force'. "
                       f"Received: `index` = {index!r}.")
    self.task = tfrs.tasks.Retrieval(
        metrics=tfrs.metrics.FactorizedTopK(candidates=source, ks=tuple(ks)))

  def compute_loss(self, features, training=False):
    """In-batch softmax loss; the metric updates when not training."""
    ids = features["target"] if self.match == "ids" else None
    return self.task(features["query"], features["item"], candidate_ids=ids,
                     compute_metrics=not training)


def run_tfrs(data: Dict[str, np.ndarray], ks, index: str, candidate_batch: int,
             eval_batch: int, runs: int, match: str) -> Dict[str, Any]:
  """`model.evaluate` with `FactorizedTopK`: HR@K per K and seconds per run."""
  model = VectorRetrievalModel(data["items"], ks, index, candidate_batch, match)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  dataset = tf.data.Dataset.from_tensor_slices(
      {"query": data["queries"], "item": data["items"][data["targets"]],
       "target": data["targets"].astype(np.int64)}).batch(eval_batch)
  model.evaluate(dataset.take(1), verbose=0)  # Warm-up (tracing, index build).
  times, result = [], {}
  for _ in range(runs):
    start = time.perf_counter()
    result = model.evaluate(dataset, return_dict=True, verbose=0)
    times.append(time.perf_counter() - start)
  hr = {k: float(result[f"factorized_top_k/top_{k}_categorical_accuracy"]) for k in ks}
  return {"hr": hr, "seconds": times}


def run_ours(data: Dict[str, np.ndarray], ks, chunk_size: int, runs: int,
             lists: bool = False) -> Dict[str, Any]:
  """`evaluate_embeddings` (no exclusions): HR@K per K and seconds per run.

  `lists=False` computes the rank metrics (HR, NDCG, MRR), what
  `FactorizedTopK` computes; `lists=True` also builds the top-K lists behind
  coverage and average popularity, as the training pipeline's test evaluation.
  """
  evaluate_embeddings(data["queries"][:chunk_size], data["items"],
                      data["targets"][:chunk_size], ks=ks, lists=lists)  # Warm-up.
  times, metrics = [], {}
  for _ in range(runs):
    start = time.perf_counter()
    metrics = evaluate_embeddings(data["queries"], data["items"], data["targets"], ks=ks,
                                  chunk_size=chunk_size, lists=lists)
    times.append(time.perf_counter() - start)
  return {"hr": {k: float(metrics[f"all/hr@{k}"]) for k in ks}, "seconds": times}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  """Parses flags, runs both evaluations, prints HR@K and the speed ratio, emits JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--users", type=int, default=10_000)
  parser.add_argument("--items", type=int, default=50_000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--ks", type=int, nargs="+", default=[10, 50])
  parser.add_argument("--signal", type=float, default=0.5,
                      help="Query = signal * target vector + N(0, 1) noise.")
  parser.add_argument("--indexes", nargs="+", default=["streaming", "brute_force"],
                      choices=["streaming", "brute_force"])
  parser.add_argument("--matches", nargs="+", default=["scores", "ids"],
                      choices=["scores", "ids"],
                      help="FactorizedTopK hit test: by score (tutorial) or by id.")
  parser.add_argument("--candidate-batch", type=int, default=128)
  parser.add_argument("--eval-batch", type=int, default=4096)
  parser.add_argument("--chunk-size", type=int, default=512)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="Also write the report to this file.")
  args = parser.parse_args(argv)
  ks = tuple(args.ks)
  data = make_data(args.users, args.items, args.dim, args.signal, args.seed)
  ours = run_ours(data, ks, args.chunk_size, args.runs)
  ours_s = _stats.summarize(ours["seconds"])
  with_lists = run_ours(data, ks, args.chunk_size, args.runs, lists=True)
  lists_s = _stats.summarize(with_lists["seconds"])
  assert with_lists["hr"] == ours["hr"], (with_lists["hr"], ours["hr"])
  print(f"{args.users:,d} users x {args.items:,d} items x {args.dim}")
  print(f"  ours (evaluate_embeddings, rank metrics): {_stats.fmt(ours_s)} s  "
        + "  ".join(f"hr@{k}={ours['hr'][k]:.5f}" for k in ks), flush=True)
  print(f"  ours with top-K lists (coverage, popularity too): {_stats.fmt(lists_s)} s",
        flush=True)
  rows = []
  for index, match in [(i, m) for i in args.indexes for m in args.matches]:
    tfrs_run = run_tfrs(data, ks, index, args.candidate_batch, args.eval_batch, args.runs,
                        match)
    tfrs_s = _stats.summarize(tfrs_run["seconds"])
    diff = max(abs(tfrs_run["hr"][k] - ours["hr"][k]) for k in ks)
    row = {"tfrs_index": index, "match": match, "tfrs_seconds": tfrs_s, "ours_seconds": ours_s,
           "hr_tfrs": tfrs_run["hr"], "hr_ours": ours["hr"], "max_hr_abs_diff": diff,
           "speedup": tfrs_s["median"] / ours_s["median"],
           "ours_with_lists_seconds": lists_s,
           "speedup_with_lists": tfrs_s["median"] / lists_s["median"]}
    rows.append(row)
    print(f"  tfrs FactorizedTopK ({index}, by {match}): {_stats.fmt(tfrs_s)} s  "
          + "  ".join(f"hr@{k}={tfrs_run['hr'][k]:.5f}" for k in ks)
          + f"  |diff| <= {diff:.2g}  speed-up {row['speedup']:.1f}x "
          f"({row['speedup_with_lists']:.1f}x with lists)", flush=True)
  report = {"users": args.users, "items": args.items, "dim": args.dim, "ks": list(ks),
            "signal": args.signal, "candidate_batch": args.candidate_batch,
            "eval_batch": args.eval_batch, "rows": rows,
            "target": ">= 10x faster, same HR@K"}
  _stats.emit("eval_vs_factorized_topk", report, args.json)
  return report


if __name__ == "__main__":
  main()
