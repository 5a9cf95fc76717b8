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

Vector kinds:
- `trained` (what users serve): a two-tower (`default` preset, content
  features on) trained once on the synthetic catalogue; its track tower
  places the trained catalogue plus new tracks of the same artists and albums
  up to the size asked (see `benchmarks._trained_vectors`), and the queries
  are its user tower's vectors of the real users. Half of the users (seeded)
  tune (`--sweep`), the other half are the reported test queries.
- `random` (the worst case): i.i.d. Gaussian tracks and queries.
- `clustered` (optimistic, for smoke runs): tracks and queries around 256
  tight centres.

For each size and kind it reports `recall@k` (mean share of the exact top-k
that the ScaNN top-k holds) and queries per second of each index at batch 1
and 256: the median (with min and max) of `--runs` runs, the exact and ScaNN
runs interleaved so both see the same load, with the process CPU time per
query and the load average beside them (the machine may be shared).
`--sweep` also scores a grid of ScaNN settings on the tuning queries
(recall and CPU time per batch-1 query); the export defaults were chosen on it.

Target (issue 24), at 1M trained vectors: recall@10 >= 0.95 at >= 10x the
exact index's queries per second, batch 1.

  python -m benchmarks.scann_recall --sizes 100000 1000000 --cache-dir /tmp/scann_recall
  python -m benchmarks.scann_recall --sizes 1000000 --kinds trained --sweep
  python -m benchmarks.scann_recall --sizes 5000 --kinds clustered --runs 1  # quick
"""

import argparse
import itertools
import os
import resource
import time
from typing import Any, Dict, List, Optional

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from benchmarks import _stats
from benchmarks import _trained_vectors
from tfrec_music.export import retrieval

LABELS = {"trained": "trained vectors", "random": "random vectors (worst case)",
          "clustered": "clustered vectors (synthetic, optimistic)"}
TARGET_N, TARGET_RECALL, TARGET_SPEEDUP = 1_000_000, 0.95, 10.0


def make_vectors(kind: str, n_items: int, n_queries: int, dim: int, seed: int,
                 cache_dir: str = "", trained_size: int = 0) -> Dict[str, np.ndarray]:
  """Seeded candidate vectors and two disjoint query sets.

  Args:
    kind: `trained`, `random` (i.i.d. standard normal) or `clustered` (items
      and queries drawn around the same 256 centres, noise 0.5 of the
      centre scale).
    n_items: Candidates M.
    n_queries: Queries Q of each set (random and clustered; trained ones
      have half the users each).
    dim: Vector width d (random and clustered; trained ones have the model's).
    seed: Random seed (trained: the model's data, split and init seed).
    cache_dir: Root of the trained-vector cache.
    trained_size: Catalogue size the trained vectors are built for (at least
      `n_items`; smaller sizes take its first rows).

  Returns:
    `{"items": [M, d], "queries": [Q, d] (test), "tuning": [Q', d]}` float32;
    trained vectors add `model` (the two-tower's config and training summary).
  """
  rng = np.random.default_rng(seed)
  if kind == "trained":
    data = _trained_vectors.load(cache_dir, max(trained_size, n_items), seed)
    users = data["queries"][rng.permutation(len(data["queries"]))]
    half = len(users) // 2
    return {"items": data["items"][:n_items], "tuning": users[:half], "queries": users[half:],
            "model": {k: data["info"][k] for k in ("model_config", "fit", "trained_items",
                                                   "cold_user_queries")}}
  if kind == "random":
    draw = lambda n: rng.standard_normal((n, dim), dtype=np.float32)  # noqa: E731
  elif kind == "clustered":
    centres = rng.standard_normal((256, dim), dtype=np.float32)

    def draw(n):
      picks = rng.integers(0, len(centres), n)
      return centres[picks] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
  else:
    raise ValueError(f"`kind` should be one of {sorted(LABELS)}. Received: `kind` = {kind!r}.")
  return {"items": draw(n_items), "queries": draw(n_queries), "tuning": draw(n_queries)}


def build_module(items: np.ndarray, index_kind: str, k: int, max_exclusions: int
                 ) -> retrieval.RetrievalServingModule:
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
  return float(np.mean([len(set(a[:k]) & set(e)) / k for a, e in zip(approx, exact)]))


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def interleaved_qps(modules: Dict[str, Any], queries: np.ndarray, batch: int,
                    runs: int) -> Dict[str, Dict[str, List[float]]]:
  """Queries/s and process CPU ms per query of each module, runs interleaved.

  Each run passes over `queries` at `batch` rows per call, module after
  module, so a change in the machine's load hits every module alike.

  Returns:
    name -> `{"qps": [runs], "cpu_ms": [runs]}`.
  """
  requests = [_request(queries[s:s + batch]) for s in range(0, len(queries), batch)]
  for module in modules.values():
    module.recommend(requests[0])  # Warm-up (tracing).
  out = {name: {"qps": [], "cpu_ms": []} for name in modules}
  for _ in range(runs):
    for name, module in modules.items():
      cpu, start = _cpu_seconds(), time.perf_counter()
      for request in requests:
        module.recommend(request)["item_ids"].numpy()
      out[name]["qps"].append(len(queries) / (time.perf_counter() - start))
      out[name]["cpu_ms"].append(1e3 * (_cpu_seconds() - cpu) / len(queries))
  return out


def sweep(items: np.ndarray, queries: np.ndarray, fetch_k: int, k: int,
          leaves: List[int], shares: List[float], reorders: List[int]) -> List[Dict[str, Any]]:
  """Recall@k and CPU ms per batch-1 query of a grid of ScaNN settings.

  The searcher is built as `tfrs.layers.factorized_top_k.ScaNN` builds it
  (tree, asymmetric hashing with 2 dimensions per block, exact reordering);
  the leaves searched and the candidates reordered are set per query, so one
  tree serves every (share, reorder) pair. Ground truth: exact brute force.
  """
  from scann.scann_ops.py import scann_ops  # pylint: disable=g-import-not-at-top
  # The exact top-k as sets (recall ignores their order).
  exact = np.concatenate([np.argpartition(-(queries[s:s + 256] @ items.T), k, axis=1)[:, :k]
                          for s in range(0, len(queries), 256)])
  rows, db, q = [], tf.constant(items), tf.constant(queries)
  for num_leaves in leaves:
    start = time.perf_counter()
    searcher = scann_ops.builder(db, fetch_k, "dot_product").tree(
        num_leaves=num_leaves, num_leaves_to_search=1, training_iterations=12).score_ah(
            dimensions_per_block=2).reorder(max(reorders)).build()
    build_s = time.perf_counter() - start
    for share, reorder in itertools.product(shares, reorders):
      searched = max(1, int(np.ceil(share * num_leaves)))
      options = {"final_num_neighbors": fetch_k, "pre_reorder_num_neighbors": reorder,
                 "leaves_to_search": searched}
      found = searcher.search_batched(q, **options).indices.numpy()
      one = tf.function(lambda x, o=options: searcher.search_batched_parallel(x, **o).indices)
      singles = [q[i:i + 1] for i in range(min(300, len(queries)))]
      one(singles[0])
      cpu = _cpu_seconds()
      for single in singles:
        one(single).numpy()
      rows.append({"num_leaves": num_leaves, "num_leaves_to_search": searched,
                   "num_reordering_candidates": reorder,
                   f"recall@{k}": recall_at_k(found, exact),
                   "cpu_ms_per_query": 1e3 * (_cpu_seconds() - cpu) / len(singles),
                   "build_s": build_s})
      print("  sweep " + " ".join(f"{n}={v:.4g}" if isinstance(v, float) else f"{n}={v}"
                                  for n, v in rows[-1].items()), flush=True)
  return rows


def run_one(kind: str, n_items: int, k: int, args: argparse.Namespace) -> Dict[str, Any]:
  """Builds both indexes over one catalogue and measures recall and queries per second."""
  data = make_vectors(kind, n_items, max(args.recall_queries, args.batch1_queries,
                                         args.batch256_queries), args.dim, args.seed,
                      args.cache_dir, max(args.sizes))
  queries = data["queries"]
  load_start = os.getloadavg()
  start = time.perf_counter()
  exact = build_module(data["items"], "exact", k, args.max_exclusions)
  exact_build = time.perf_counter() - start
  start = time.perf_counter()
  scann = build_module(data["items"], "scann", k, args.max_exclusions)
  scann_build = time.perf_counter() - start
  recall_q = queries[:args.recall_queries]
  recall = recall_at_k(top_ids(scann, recall_q, 256), top_ids(exact, recall_q, 256))
  row: Dict[str, Any] = {
      "kind": kind, "vectors": LABELS[kind], "n_items": n_items,
      "dim": int(data["items"].shape[1]), "k": k, "max_exclusions": args.max_exclusions,
      "scann_options": retrieval.default_scann_options(n_items, scann.fetch_k),
      f"recall@{k}": recall, "recall_queries": len(recall_q),
      "build_s": {"exact": exact_build, "scann": scann_build}}
  if "model" in data:
    row["model"] = data["model"]
  modules = {"exact": exact, "scann": scann}
  for batch, n_q in ((1, args.batch1_queries), (256, args.batch256_queries)):
    measured = interleaved_qps(modules, queries[:n_q], batch, args.runs)
    for name in modules:
      row[f"qps/{name}/batch{batch}"] = _stats.summarize(measured[name]["qps"])
      row[f"cpu_ms_per_query/{name}/batch{batch}"] = _stats.summarize(measured[name]["cpu_ms"])
    row[f"speedup/batch{batch}"] = (row[f"qps/scann/batch{batch}"]["median"]
                                    / row[f"qps/exact/batch{batch}"]["median"])
  row["load_average"] = {"start": load_start[0], "end": os.getloadavg()[0]}
  row["met"] = {f"recall@{k} >= {TARGET_RECALL}": recall >= TARGET_RECALL,
                f"speedup/batch1 >= {TARGET_SPEEDUP:g}": row["speedup/batch1"] >= TARGET_SPEEDUP}
  row["met"]["both"] = all(row["met"].values())
  if args.sweep:
    row["sweep"] = sweep(data["items"], data["tuning"][:args.recall_queries], scann.fetch_k, k,
                         sorted({row["scann_options"]["num_leaves"],
                                 min(2000, 2 * row["scann_options"]["num_leaves"])}),
                         [0.02, 0.03, 0.05, 0.1], [300, 500, 1000])
  return row


def print_row(row: Dict[str, Any]) -> None:
  """One human-readable block per (kind, size)."""
  k = row["k"]
  print(f"{row['vectors']}, {row['n_items']:,d} x {row['dim']}: recall@{k} = "
        f"{row[f'recall@{k}']:.4f}  (build exact {row['build_s']['exact']:.1f}s, "
        f"scann {row['build_s']['scann']:.1f}s, options {row['scann_options']}, "
        f"load average {row['load_average']['start']:.1f} -> "
        f"{row['load_average']['end']:.1f})")
  for batch in (1, 256):
    cpu = {n: row[f"cpu_ms_per_query/{n}/batch{batch}"]["median"] for n in ("exact", "scann")}
    print(f"  batch {batch:>3}: exact {_stats.fmt(row[f'qps/exact/batch{batch}'])} q/s, "
          f"scann {_stats.fmt(row[f'qps/scann/batch{batch}'])} q/s, "
          f"speed-up {row[f'speedup/batch{batch}']:.2f}x (CPU ms/query exact "
          f"{cpu['exact']:.3g}, scann {cpu['scann']:.3g})", flush=True)
  print(f"  met: {row['met']}", flush=True)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  """Parses flags, runs every (kind, size) and prints and emits the report."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
  parser.add_argument("--kinds", nargs="+", default=["trained", "random"], choices=list(LABELS))
  parser.add_argument("--dim", type=int, default=64, help="Width of random/clustered vectors.")
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--max-exclusions", type=int, default=200,
                      help="As the exports (ScaNN fetches k + this many, then filters).")
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--recall-queries", type=int, default=1000)
  parser.add_argument("--batch1-queries", type=int, default=200)
  parser.add_argument("--batch256-queries", type=int, default=1024)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--cache-dir", default="/tmp/tfrec_music_scann_recall",
                      help="Where the trained two-tower's vectors are cached (trained once).")
  parser.add_argument("--sweep", action="store_true",
                      help="Also score a grid of ScaNN settings on the tuning queries.")
  parser.add_argument("--json", default=None, help="Also write the report to this file.")
  args = parser.parse_args(argv)
  rows = []
  for n_items in args.sizes:
    for kind in args.kinds:
      row = run_one(kind, n_items, args.k, args)
      print_row(row)
      rows.append(row)
  targets = [{"vectors": r["vectors"], "n_items": r["n_items"],
              f"recall@{r['k']}": r[f"recall@{r['k']}"], "speedup/batch1": r["speedup/batch1"],
              **r["met"]} for r in rows if r["n_items"] == TARGET_N]
  report = {"rows": rows, "targets": targets,
            "target": f"1M trained vectors: recall@10 >= {TARGET_RECALL} and batch-1 speed-up "
                      f">= {TARGET_SPEEDUP:g}x (random vectors: the worst case, no target)",
            "note": "queries/s measured on a shared machine; each row has the load average"}
  trained = [t for t in targets if t["vectors"] == LABELS["trained"]]
  if trained:
    report["met/trained vectors"] = all(t["both"] for t in trained)
  _stats.emit("scann_recall", report, args.json)
  return report


if __name__ == "__main__":
  main()
