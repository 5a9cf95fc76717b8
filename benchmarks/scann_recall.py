"""Approximate (ScaNN) vs exact top-k retrieval, as our retrieval exports build them.

Retrieval recommends the k tracks whose vectors have the largest dot product
with the user's query vector. The exact index scores every track (a matmul and
`top_k`); ScaNN partitions the tracks into leaves, searches a few leaves with
quantized scores and re-scores the best candidates exactly. This script
measures what that trade buys on the serving path our exports use:
`tfrec_music.export.retrieval.RetrievalServingModule` with `index_kind="exact"`
and `"scann"` (ScaNN settings from `default_scann_options`, the index built by
`make_scann_index` with `k + max_exclusions` results, exclusions filtered
after), called in-process through its `recommend` signature.

For each catalogue size and vector kind (`random`: i.i.d. Gaussian, the hard
case; `clustered`: a Gaussian mixture, closer to trained embeddings) it
reports:

- `recall@k`: mean share of the exact top-k that the ScaNN top-k holds;
- queries per second of each index at batch 1 and at batch 256, each the
  median (with min and max) of `--runs` runs, after one warm-up call.

Target of issue 10 at 1M candidates: recall@10 >= 0.95 at >= 10x the exact
index's queries per second (batch 1).

  python -m benchmarks.scann_recall --sizes 100000 1000000
  python -m benchmarks.scann_recall --sizes 20000 --kinds random --runs 1  # quick
"""

import argparse
import time
from typing import Any, Dict, List, Optional

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from benchmarks import _stats
from tfrec_music.export import retrieval


def make_vectors(kind: str, n_items: int, n_queries: int, dim: int,
                 seed: int) -> Dict[str, np.ndarray]:
  """Seeded candidate and query vectors.

  Args:
    kind: `random` (i.i.d. standard normal) or `clustered` (items and queries
      drawn around the same 256 centres, noise 0.5 of the centre scale).
    n_items: Candidates M.
    n_queries: Queries Q.
    dim: Vector width d.
    seed: Random seed.

  Returns:
    `{"items": [M, d], "queries": [Q, d]}` float32.
  """
  rng = np.random.default_rng(seed)
  if kind == "random":
    return {"items": rng.standard_normal((n_items, dim), dtype=np.float32),
            "queries": rng.standard_normal((n_queries, dim), dtype=np.float32)}
  if kind == "clustered":
    centres = rng.standard_normal((256, dim), dtype=np.float32)

    def draw(n):
      picks = rng.integers(0, len(centres), n)
      return centres[picks] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)

    return {"items": draw(n_items), "queries": draw(n_queries)}
  raise ValueError(f"`kind` should be 'random' or 'clustered'. Received: `kind` = {kind!r}.")


def build_module(items: np.ndarray, index_kind: str, k: int,
                 max_exclusions: int) -> retrieval.RetrievalServingModule:
  """The export's serving module over `items`, with the query vector as the only feature.

  The query model is the identity on a `query` feature, so what is timed is
  the index (plus the module's id lookups and exclusion filtering), not a tower.
  Every request carries a one-item `history` of a catalogue track, so no row
  takes the popularity fallback (`top_ids` checks it: a fallback row would
  make both indexes agree trivially).
  """
  dim = items.shape[1]
  ids = np.array([f"t{i}" for i in range(len(items))], dtype=object)
  signature = {"query": tf.TensorSpec([None, dim], tf.float32, name="query"),
               "history": tf.TensorSpec([None, None], tf.string, name="history")}
  return retrieval.RetrievalServingModule(
      lambda features: features["query"], signature, items, ids, index_kind,
      known_users=np.array(["u0"], dtype=object),
      stored_features={"query": np.zeros((1, dim), np.float32),
                       "history": np.array([["t0"]], dtype=object)},
      fallback_ids=ids[:k], fallback_scores=np.zeros(k, np.float32), k=k,
      max_exclusions=max_exclusions)


def _request(queries: np.ndarray) -> Dict[str, tf.Tensor]:
  n = len(queries)
  return {"user_id": tf.fill([n], "new"), "query": tf.constant(queries),
          "history": tf.fill([n, 1], "t0"), "exclude": tf.fill([n, 1], "")}


def top_ids(module, queries: np.ndarray, batch: int) -> np.ndarray:
  """Top-k ids [Q, k] (bytes) of `queries`, asked `batch` rows at a time."""
  out = []
  for start in range(0, len(queries), batch):
    answer = module.recommend(_request(queries[start:start + batch]))
    if answer["fallback"].numpy().any():
      raise RuntimeError("A benchmark request took the popularity fallback; the recall "
                         "would compare fallback lists, not the indexes.")
    out.append(answer["item_ids"].numpy())
  return np.concatenate(out)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
  """Mean over rows of |approx row ∩ exact row| / k."""
  k = exact.shape[1]
  return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))


def qps(module, queries: np.ndarray, batch: int, runs: int) -> List[float]:
  """Queries per second of each of `runs` passes over `queries` at `batch` rows per call."""
  requests = [_request(queries[s:s + batch]) for s in range(0, len(queries), batch)]
  module.recommend(requests[0])  # Warm-up (tracing).
  rates = []
  for _ in range(runs):
    start = time.perf_counter()
    for request in requests:
      module.recommend(request)["item_ids"].numpy()
    rates.append(len(queries) / (time.perf_counter() - start))
  return rates


def run_one(kind: str, n_items: int, dim: int, k: int, args: argparse.Namespace
            ) -> Dict[str, Any]:
  """Builds both indexes over one catalogue and measures recall and queries per second."""
  data = make_vectors(kind, n_items, max(args.recall_queries, args.batch1_queries,
                                         args.batch256_queries), dim, args.seed)
  queries = data["queries"]
  start = time.perf_counter()
  exact = build_module(data["items"], "exact", k, args.max_exclusions)
  exact_build = time.perf_counter() - start
  start = time.perf_counter()
  scann = build_module(data["items"], "scann", k, args.max_exclusions)
  scann_build = time.perf_counter() - start
  recall_q = queries[:args.recall_queries]
  recall = recall_at_k(top_ids(scann, recall_q, 256), top_ids(exact, recall_q, 256))
  row: Dict[str, Any] = {
      "kind": kind, "n_items": n_items, "dim": dim, "k": k,
      "max_exclusions": args.max_exclusions,
      "scann_options": retrieval.default_scann_options(n_items, scann.fetch_k),
      f"recall@{k}": recall, "recall_queries": len(recall_q),
      "build_s": {"exact": exact_build, "scann": scann_build}}
  for batch, n_q in ((1, args.batch1_queries), (256, args.batch256_queries)):
    for name, module in (("exact", exact), ("scann", scann)):
      row[f"qps/{name}/batch{batch}"] = _stats.summarize(
          qps(module, queries[:n_q], batch, args.runs))
    row[f"speedup/batch{batch}"] = (row[f"qps/scann/batch{batch}"]["median"]
                                    / row[f"qps/exact/batch{batch}"]["median"])
  return row


def print_row(row: Dict[str, Any]) -> None:
  """One human-readable block per (kind, size)."""
  k = row["k"]
  print(f"{row['kind']:9s} {row['n_items']:>9,d} x {row['dim']}: recall@{k} = "
        f"{row[f'recall@{k}']:.4f}  (build exact {row['build_s']['exact']:.1f}s, "
        f"scann {row['build_s']['scann']:.1f}s, options {row['scann_options']})")
  for batch in (1, 256):
    print(f"  batch {batch:>3}: exact {_stats.fmt(row[f'qps/exact/batch{batch}'])} q/s, "
          f"scann {_stats.fmt(row[f'qps/scann/batch{batch}'])} q/s, "
          f"speed-up {row[f'speedup/batch{batch}']:.2f}x", flush=True)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  """Parses flags, runs every (kind, size) and prints and emits the report."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
  parser.add_argument("--kinds", nargs="+", default=["random", "clustered"],
                      choices=["random", "clustered"])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--max-exclusions", type=int, default=200,
                      help="As the exports (ScaNN fetches k + this many, then filters).")
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--recall-queries", type=int, default=1000)
  parser.add_argument("--batch1-queries", type=int, default=200)
  parser.add_argument("--batch256-queries", type=int, default=1024)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", default=None, help="Also write the report to this file.")
  args = parser.parse_args(argv)
  rows = []
  for n_items in args.sizes:
    for kind in args.kinds:
      row = run_one(kind, n_items, args.dim, args.k, args)
      print_row(row)
      rows.append(row)
  report = {"rows": rows, "target": "1M: recall@10 >= 0.95 and batch-1 speed-up >= 10x"}
  _stats.emit("scann_recall", report, args.json)
  return report


if __name__ == "__main__":
  main()
