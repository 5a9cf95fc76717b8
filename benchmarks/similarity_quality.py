"""Quality of user-to-user taste similarity: each part alone and blended.

Trains one two-tower on the data (or reads a two-tower export) for the
centroid part, then evaluates user similarity under each setting through
`UserSimilarityFamily.evaluate`: friend-pair AUC (valid and test halves),
share of users with a friend in their top 10 and, on synthetic data, Spearman
correlation with the oracle's taste similarity (the oracle row, true tastes,
is the ceiling).

With `--seeds`, each seed draws its own synthetic catalogue and split and
trains its own two-tower; per-seed rows and their median / min / max are
printed. Issue 21's target is on the synthetic default preset: the default's
test friend AUC >= 0.80 on every seed (`--settings default`, the suite's
entry; the oracle row beside it is the generator's ceiling).

  python -m benchmarks.similarity_quality                   # synthetic, default preset
  python -m benchmarks.similarity_quality --seeds 0 1 2 --settings default
  python -m benchmarks.similarity_quality --preset tiny
  python -m benchmarks.similarity_quality --data lastfm-hetrec --data-dir data_real/hetrec
"""

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from benchmarks._stats import print_seed_table

KEYS = ("valid/all/friend_auc", "test/all/friend_auc", "test/all/friend_in_top10",
        "test/all/oracle_spearman")

# (label, config overrides); centroid rows read the two-tower vectors trained once.
SETTINGS = (
    ("centroid, recent half, euclidean (before)", {"parts": ("centroid",),
                                                   "metric": "euclidean"}),
    ("lsa", {"parts": ("lsa",)}),
    ("als", {"parts": ("als",)}),
    ("lsa + als", {"parts": ("lsa", "als")}),
    ("lsa + als + centroid (default)", {}),
    ("lsa + als + centroid over every track", {"recent_share": 1.0}),
)


DEFAULT_LABEL = "lsa + als + centroid (default)"
ORACLE_LABEL = "oracle (true tastes)"
FRIEND_AUC_TARGET = 0.80


def run_seed(args: argparse.Namespace, seed: int) -> Dict[str, Dict[str, float]]:
  """Every chosen setting (and the oracle, on synthetic data) for one seed: label -> metrics."""
  from tfrec_music.export.retrieval import save_candidates  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.family import EvalContext  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.track_vectors import track_vectors  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.user_similarity import UserSimilarityFamily  # pylint: disable=g-import-not-at-top
  from tfrec_music.training import RunConfig  # pylint: disable=g-import-not-at-top
  from tfrec_music.training import load_and_prepare  # pylint: disable=g-import-not-at-top
  work = tempfile.mkdtemp(prefix=f"similarity_quality_seed{seed}_")
  _, _, loaded, prepared, _, _ = load_and_prepare(RunConfig(
      model="user_similarity", data=args.data, data_dir=args.data_dir, preset=args.preset,
      seed=seed, job_dir=os.path.join(work, "job"), export=False))
  export = args.two_tower_export
  timings = {}
  if not export:
    start = time.perf_counter()
    vectors = track_vectors(prepared, "two_tower", job_dir=work,
                            two_tower_preset="tiny" if args.preset == "tiny" else "default",
                            seed=seed)
    timings["two_tower_fit_seconds"] = time.perf_counter() - start
    export = os.path.join(work, "two_tower")
    save_candidates(os.path.join(export, "candidates"), vectors.item_ids, vectors.vectors)
  results: Dict[str, Dict[str, float]] = {}
  context = EvalContext(oracle=loaded.oracle, loaded=loaded)
  settings = SETTINGS if args.settings == "all" else [(DEFAULT_LABEL, {})]
  for label, overrides in settings:
    config = UserSimilarityFamily.make_config(args.preset, {
        **overrides, "two_tower_export": export, "heatmap_size": 0, "seed": seed})
    family = UserSimilarityFamily(config, prepared)
    start = time.perf_counter()
    family.fit(os.path.join(work, "job"))
    timings[f"{label} fit_seconds"] = time.perf_counter() - start
    metrics = family.evaluate(context)
    results[label] = {k: metrics["model"][k] for k in KEYS if k in metrics["model"]}
    if "oracle" in metrics:
      results.setdefault(ORACLE_LABEL,
                         {k: metrics["oracle"][k] for k in KEYS if k in metrics["oracle"]})
  width = max(len(k) for k in results) + 2
  print(f"\nseed {seed}")
  print("setting".ljust(width) + "".join(f"{k.replace('/all/', ' '):>28}" for k in KEYS))
  for label, values in results.items():
    print(label.ljust(width) + "".join(f"{values.get(k, float('nan')):>28.4f}" for k in KEYS))
  print(json.dumps({"data": args.data, "preset": args.preset, "seed": seed,
                    "timings": timings}))
  return results


def main(argv: Optional[List[str]] = None) -> List[Dict[str, float]]:
  """Runs every seed; prints its table, then median / min / max over seeds; returns the rows.

  A row is one seed's figures, `<setting label>/<metric>` -> value (`default/...`
  for the default setting, `oracle/...` for the true tastes), plus `seed`.
  """
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default="synthetic")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--preset", default="default")
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--settings", choices=("all", "default"), default="all",
                 help="Every part and blend (all) or the default setting alone.")
  p.add_argument("--two-tower-export", default="",
                 help="Read two-tower track vectors from this version folder (no training).")
  p.add_argument("--out", default=None, help="Also write the per-seed rows as JSON here.")
  args = p.parse_args(argv)
  short = {DEFAULT_LABEL: "default", ORACLE_LABEL: "oracle"}
  rows = []
  for seed in args.seeds:
    results = run_seed(args, seed)
    rows.append({f"{short.get(label, label)}/{k}": v for label, values in results.items()
                 for k, v in values.items()})
  print_seed_table(rows, f"{len(rows)} seeds, {args.data}, preset {args.preset}", None, width=8)
  worst = min(r.get("default/test/all/friend_auc", float("nan")) for r in rows)
  print(f"default test friend AUC, worst seed: {worst:.4f} (target >= {FRIEND_AUC_TARGET} on "
        "every seed, synthetic default preset)")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump([{"seed": seed, **row} for seed, row in zip(args.seeds, rows)], f, indent=2)
  return rows


if __name__ == "__main__":
  main()
