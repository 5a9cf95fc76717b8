"""Throughput of full-ranking evaluation (`evaluate_embeddings`).

Times 10k users x 50k items x 64 dims (seeded random data, ~50 excluded training
items per user) and prints users per second over several runs:

  python -m benchmarks.eval_throughput          # from the repository root
  python benchmarks/eval_throughput.py --users 2000 --runs 5
"""

import argparse
import statistics
import sys
import time
from typing import Dict, List, Optional

import numpy as np

import tfrec_music  # pylint: disable=unused-import  # Sets TF env first, as everywhere.
from tfrec_music.evaluation import evaluate_embeddings


def make_data(n_users: int, n_items: int, dim: int, n_excluded: int,
              seed: int) -> Dict[str, object]:
  """Seeded random embeddings, targets, exclusions and popularity.

  Args:
    n_users: Number of rows N.
    n_items: Catalogue size M.
    dim: Embedding width d.
    n_excluded: Excluded training items per user (drawn with replacement, so
      about this many distinct ones).
    seed: Random seed.

  Returns:
    Dict with `query_embeddings` [N, d], `item_embeddings` [M, d], `targets`
    [N], `exclude` (CSR pair), `item_popularity` [M] and `item_slices`.
  """
  rng = np.random.default_rng(seed)
  popularity = rng.zipf(1.5, n_items).astype(np.float64)
  warm = popularity >= np.quantile(popularity, 0.8)
  return {
      "query_embeddings": rng.standard_normal((n_users, dim), dtype=np.float32),
      "item_embeddings": rng.standard_normal((n_items, dim), dtype=np.float32),
      "targets": rng.integers(0, n_items, n_users),
      "exclude": (np.arange(n_users + 1, dtype=np.int64) * n_excluded,
                  rng.integers(0, n_items, n_users * n_excluded)),
      "item_popularity": popularity,
      "item_slices": {"cold": ~warm, "warm": warm},
  }


def run(n_users: int, n_items: int, dim: int, n_excluded: int, runs: int, chunk_size: int,
        seed: int) -> List[float]:
  """Times `evaluate_embeddings` `runs` times; returns users per second of each run."""
  data = make_data(n_users, n_items, dim, n_excluded, seed)
  rates = []
  for _ in range(runs):
    start = time.perf_counter()
    metrics = evaluate_embeddings(data["query_embeddings"], data["item_embeddings"],
                                  data["targets"], exclude=data["exclude"],
                                  item_slices=data["item_slices"], ks=(10, 50),
                                  chunk_size=chunk_size,
                                  item_popularity=data["item_popularity"])
    rates.append(n_users / (time.perf_counter() - start))
  # Random embeddings: hr@10 should sit near 10 / n_items, a sanity check.
  print(f"all/hr@10 = {metrics['all/hr@10']:.5f} (chance {10 / n_items:.5f}), "
        f"all/coverage@50 = {metrics['all/coverage@50']:.3f}")
  return rates


def main(argv: Optional[List[str]] = None) -> None:
  """Parses flags, runs the benchmark and prints median / min / max users per second."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--users", type=int, default=10_000)
  parser.add_argument("--items", type=int, default=50_000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--excluded", type=int, default=50)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--chunk-size", type=int, default=512)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  rates = run(args.users, args.items, args.dim, args.excluded, args.runs, args.chunk_size,
              args.seed)
  print(f"evaluate_embeddings: {args.users} users x {args.items} items x {args.dim} dims, "
        f"{args.excluded} excluded per user, chunk_size {args.chunk_size}, {args.runs} runs")
  print(f"users/s: median {statistics.median(rates):,.0f}  min {min(rates):,.0f}  "
        f"max {max(rates):,.0f}")


if __name__ == "__main__":
  main(sys.argv[1:])
