"""The benchmark targets: every target beside its value, status, date and configuration.

`target_rows` gives one row per target the benchmark issues set, also when
the entry that measures it did not run ("not measured"). A row carries the
date of the record that measured it and that entry's flags; a record taken
before a change of the defaults it depends on (`CHANGES`) is marked stale: its
value describes the older configuration until the entry is rerun
(`python -m benchmarks.run_all --only NAME --update benchmarks.json`).
Whoever changes a default that a benchmark measures adds a `ConfigChange`
(or reruns the entry in the same commit).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks import _stats


@dataclasses.dataclass(frozen=True)
class ConfigChange:
  """A change of defaults after which earlier records of some entries are stale.

  Attributes:
    date: When it took effect, in the report's date format
      (`YYYY-MM-DD HH:MM UTC`, so dates compare as strings).
    entries: Suite entries whose figures it changes.
    what: The change, for the report.
  """

  date: str
  entries: Tuple[str, ...]
  what: str


CHANGES: Tuple[ConfigChange, ...] = (
    ConfigChange("2026-11-26 07:59 UTC",
                 ("training_throughput", "training_throughput_tutorial", "two_tower_quality",
                  "dcn_quality"),
                 "two-tower defaults history_length 20 -> 50 and item_id_min_count 0 -> 20 "
                 "(commit ddc2b85)"),
    ConfigChange("2026-12-03 08:33 UTC",
                 ("training_throughput", "training_throughput_tutorial", "two_tower_quality",
                  "dcn_quality", "playlist_quality", "als_vs_reference"),
                 "preparation keeps every item as a candidate (k-core on users only; default "
                 "preset: catalogue 6,637 -> 10,000 tracks, playlist catalogue 1,848 -> 10,000, "
                 "implicit training rows 270,128 -> 275,552, rating training rows 234,572 -> "
                 "239,072) and dedup is causal (commit 34f6720)"),
    ConfigChange("2026-12-03 09:35 UTC",
                 ("training_throughput", "two_tower_quality", "dcn_quality",
                  "similarity_quality"),
                 "two-tower defaults temperature 0.05 -> 0.1, user_id_dropout 0.2 -> 0.5, "
                 "history_dropout 0 -> 0.3, history_window auto (data without timestamps: a "
                 "training row's history is the user's other tracks)"),
    ConfigChange("2026-12-03 10:40 UTC", ("similarity_quality",),
                 "user similarity default: cosine of LSA tf-idf + ALS + track-centroid parts "
                 "(was the track centroid's 1/distance); commits 7e9b71b, 8e20ee0"),
    ConfigChange("2026-12-03 11:06 UTC", ("scann_recall",),
                 "ScaNN export defaults: 5% of the leaves searched (was 10%), 2 dimensions per "
                 "block; the benchmark measures trained two-tower vectors (commit ffae29d)"),
    ConfigChange("2026-12-03 11:10 UTC", ("als_vs_reference", "two_tower_quality"),
                 "ALS family presets solve with 6-step conjugate gradient on the new blocked "
                 "XLA solver (commits a2e70bb, 919bc5b)"),
    ConfigChange("2026-12-04 04:20 UTC", ("dcn_quality",),
                 "cascade defaults chosen by validation HR@10 per minute of fit: one re-ranker "
                 "(was 3), 6 hard + 2 uniform negatives per positive (was 12 + 4)"),
    ConfigChange("2026-12-04 04:43 UTC", ("training_throughput", "training_throughput_tutorial"),
                 "issue 23: `ours` is the two-tower with features=ids and history off (1 track; "
                 "was the 50-track history), `ours_default_features` the default features; "
                 "fused Adam and an index-gathering input pipeline (same results)"),
    ConfigChange("2026-12-04 06:33 UTC", ("training_throughput_tutorial",),
                 "issue 23 (suite time): the tutorial reference's epochs are bounded to 80 "
                 "batches (`--ref-max-steps 80`, of ~270): its examples/s are those steps', its "
                 "valid HR@10 is after them"),
    ConfigChange("2026-12-04 06:33 UTC", ("als_vs_reference_10x_users",),
                 "the 10x-users entry times the CG solvers only (`--solvers cg`; was CG and "
                 "Cholesky, ours and implicit's)"),
    ConfigChange("2026-12-04 12:50 UTC", ("playlist_quality",),
                 "playlist_mf defaults chosen on validation NDCG: tracks also carry their tags "
                 "and genre (item_features), fold_in_l2 1.0 -> 2.0"),
    ConfigChange("2026-12-04 19:00 UTC",
                 ("training_throughput", "training_throughput_tutorial", "two_tower_quality",
                  "dcn_quality", "similarity_quality", "real_quality"),
                 "two-tower default play_weight=log1p: a training row counts log(1 + plays) "
                 "in the loss, mean 1 (was every row alike)"),
    ConfigChange("2026-12-04 21:34 UTC",
                 ("training_throughput", "training_throughput_tutorial", "two_tower_quality",
                  "dcn_quality", "similarity_quality", "real_quality", "two_tower_streaming"),
                 "two-tower validates, keeps and exports a moving average of its weights "
                 "(the last ninth of the steps so far, at most one epoch of them: "
                 "average_epochs=1; was the last step's); epochs 12 -> 20 and "
                 "early_stopping_patience 2 -> 4"),
    ConfigChange("2026-12-04 23:35 UTC", ("playlist_quality",),
                 "playlist_mf scores add the seeds' co-occurrence in the training playlists "
                 "(mean cosine of each track with the seeds, 200 neighbours a track), its weight "
                 "chosen on validation NDCG among 0, 1, 2, 4, 8 (was the logits alone)"),
)


def record_date(record: Dict[str, Any], report: Dict[str, Any]) -> str:
  """When `record` was measured: its own date, its `--update` rerun, or the report's run."""
  return record.get("date") or record.get("rerun") or report["date"]


def stale_changes(record: Dict[str, Any], report: Dict[str, Any],
                  changes: Sequence[ConfigChange] = CHANGES) -> List[int]:
  """Numbers (1-based, in `changes`) of the changes made after `record` was measured."""
  date = record_date(record, report)
  return [i for i, c in enumerate(changes, 1) if record["name"] in c.entries and date < c.date]


def stale_reason(record: Dict[str, Any], report: Dict[str, Any],
                 changes: Sequence[ConfigChange] = CHANGES) -> Optional[str]:
  """Why `record` no longer describes the current defaults (None: it does)."""
  later = [changes[i - 1] for i in stale_changes(record, report, changes)]
  if not later:
    return None
  return "; ".join(f"measured before {c.date}: {c.what}" for c in later)


def stale_mark(numbers: Sequence[int]) -> str:
  """`**stale** (changes 1, 2)` for the report's tables, or "" (no change)."""
  if not numbers:
    return ""
  return f"**stale** (change{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))})"


def _first(value: Any, *keys: Any) -> Any:
  for key in keys:
    if isinstance(value, dict) and key in value:
      value = value[key]
    elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
      value = value[key]
    else:
      return None
  return value


def _median_of(value: Any) -> Optional[float]:
  if isinstance(value, dict) and "median" in value:
    return float(value["median"])
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value)


def _over_seeds(rows: Any, value: Callable[[Dict[str, Any]], Optional[float]]
                ) -> Optional[Dict[str, Any]]:
  """Median / min / max of `value(row)` over per-seed rows (None when no row has it)."""
  if not isinstance(rows, list):
    return None
  values = [_safe(value, row) for row in rows if isinstance(row, dict)]
  values = [v for v in values if v is not None]
  return _stats.summarize(values) if values else None


def _safe(measure: Callable[[Any], Optional[float]], fig: Any) -> Optional[float]:
  """`measure(fig)`, or None when the figures lack what it reads (another report shape)."""
  try:
    return measure(fig)
  except (KeyError, TypeError, ValueError, ZeroDivisionError):
    return None


def _als_ratio(fig: Any) -> Optional[float]:
  """Seconds per iteration, our faster solver / implicit's CG."""
  timed = _als_fastest(fig)
  theirs = _first(fig, "implicit_feedback", "implicit_cg", "seconds_per_iteration")
  return timed[0] / theirs if timed and theirs else None


def _als_fastest(fig: Any) -> Optional[Tuple[float, Optional[float]]]:
  """(seconds per iteration, test HR@10) of our faster implicit solver."""
  runs = [_first(fig, "implicit_feedback", f"tfrec_als_{s}") for s in ("cholesky", "cg")]
  runs = [r for r in runs if isinstance(r, dict) and "seconds_per_iteration" in r]
  if not runs:
    return None
  best = min(runs, key=lambda r: r["seconds_per_iteration"])
  return best["seconds_per_iteration"], best.get("test_hr@10")


def _als_hr_gap(fig: Any) -> Optional[float]:
  timed = _als_fastest(fig)
  theirs = _first(fig, "implicit_feedback", "implicit_cg", "test_hr@10")
  return timed[1] - theirs if timed and timed[1] is not None and theirs is not None else None


def _als_spark(fig: Any) -> Optional[float]:
  ours = _first(fig, "explicit_feedback", "tfrec_als", "seconds_per_iteration")
  spark = _first(fig, "explicit_feedback", "spark", "seconds_per_iteration")
  return spark / ours if ours and spark else None


def _als_rmse(fig: Any) -> Optional[float]:
  ours = _first(fig, "explicit_feedback", "tfrec_als", "test_rmse")
  spark = _first(fig, "explicit_feedback", "spark", "test_rmse")
  return ours / spark - 1.0 if ours and spark else None


def _eval_speedup(index: str) -> Callable[[Any], Optional[float]]:
  def measure(fig: Any) -> Optional[float]:
    values = [_median_of(r.get("speedup")) for r in _first(fig, "rows") or []
              if r.get("tfrs_index") == index]
    values = [v for v in values if v is not None]
    return min(values) if values else None
  return measure


def _eval_agreement(fig: Any) -> Optional[float]:
  """Largest |HR@K ours - FactorizedTopK's| over the rows matched by id."""
  gaps = [abs(r["hr_tfrs"][k] - r["hr_ours"][k]) for r in _first(fig, "rows") or []
          if r.get("match") == "ids" for k in r.get("hr_ours", {})]
  return max(gaps) if gaps else None


def _scann(kind: str, key: str) -> Callable[[Any], Optional[float]]:
  def measure(fig: Any) -> Optional[float]:
    for r in _first(fig, "rows") or []:
      if r.get("n_items") == 1_000_000 and r.get("kind") == kind:
        return _median_of(r.get(key.format(k=r.get("k", 10))))
    return None
  return measure


def _playlist_to_oracle(k: int) -> Callable[[Dict[str, Any]], Optional[float]]:
  """Per seed: (model / best group baseline) / (oracle / best group baseline)."""
  return lambda r: r[f"k{k}_ratio"] / r[f"k{k}_oracle_ratio_ceiling"]


@dataclasses.dataclass(frozen=True)
class Target:
  """One target of the benchmark issues.

  Attributes:
    target: What is measured and the goal, as the report reads it.
    entry: The suite entry (record name) that measures it.
    goal: The threshold.
    higher: True: met at or above `goal`; False: at or below.
    measure: figures -> value (None: the figures do not hold it).
    per_seed: `measure` reads one per-seed row; the value is the median over seeds.
    worst_seed: With `per_seed`: the value is the worst seed's (the min when
      higher is better), for targets that must hold on every seed.
    strict: Met only strictly beyond `goal` ("less than").
    absolute: Compare |value| with `goal` (a "within" target).
    retired: Kept for the record; replaced by another target.
    note: Shown beside the row.
    met: Whether it is met, as the entry itself decided (goal None: the goal is
      in `target`'s text).
  """

  target: str
  entry: str
  goal: Optional[float]
  higher: bool
  measure: Callable[[Any], Optional[float]]
  per_seed: bool = False
  worst_seed: bool = False
  strict: bool = False
  absolute: bool = False
  retired: str = ""
  note: str = ""
  met: Optional[bool] = None


_PLAYLIST_RETIRED = "retired: issue 21 measures the ratio as a share of the oracle's"


def _fixed(key: str) -> Callable[[Any], Optional[float]]:
  return lambda fig: _median_of(_first(fig, *key.split("/")))


def _first_speedup(fig: Any) -> Optional[float]:
  speedups = _first(fig, "speedup") or {}
  return _median_of(next(iter(speedups.values()), None)) if speedups else None


def _speedup_of(key: str) -> Callable[[Any], Optional[float]]:
  return lambda fig: _median_of((_first(fig, key) or {}).get("reference_train_metrics_off"))


TARGETS: Tuple[Target, ...] = (
    Target("1. training examples/s, ours (features=ids, history off) / reference (>= 1)",
           "training_throughput", 1.0, True, _speedup_of("speedup"),
           note="reference without metrics in training steps; same batch and embedding size; "
                "history off (history_length 0, no user-id dropout)"),
    Target("1. training examples/s, ours (default features: history, text, tags, audio) / "
           "reference (>= 0.6)", "training_throughput", 0.6, True,
           _speedup_of("speedup_default_features"),
           note="reference without metrics in training steps"),
    Target("1. training examples/s, ours / reference (>= 2)", "training_throughput", 2.0, True,
           _first_speedup, note="reference without metrics in training steps",
           retired="retired: issue 23 sets >= 1 (ids, history off) and >= 0.6 (default "
                   "features)"),
    Target("1. the same vs the tutorial as written (FactorizedTopK in training) (>= 2)",
           "training_throughput_tutorial", 2.0, True, _first_speedup),
    Target("2. full-ranking evaluation speed-up, streaming (>= 10)", "eval_vs_factorized_topk",
           10.0, True, _eval_speedup("streaming"),
           note="vs the tutorial's FactorizedTopK (Streaming top-k); the smaller over score / "
                "id matching"),
    Target("2. full-ranking evaluation speed-up, brute_force (>= 10)", "eval_vs_factorized_topk",
           10.0, True, _eval_speedup("brute_force"),
           note="vs FactorizedTopK over a BruteForce layer; the smaller over score / id matching"),
    Target("2. same HR@K as FactorizedTopK matched by id (largest difference <= 1e-6)",
           "eval_vs_factorized_topk", 1e-6, False, _eval_agreement, note="float32 rounding"),
    Target("3. ScaNN recall@10 at 1M (trained two-tower vectors) (>= 0.95)", "scann_recall",
           0.95, True, _scann("trained", "recall@{k}")),
    Target("3. ScaNN q/s / exact q/s at batch 1, 1M (trained) (>= 10)", "scann_recall", 10.0,
           True, _scann("trained", "speedup/batch1")),
    Target("3. ScaNN recall@10 at 1M (random vectors, the worst case) (>= 0.95)", "scann_recall",
           0.95, True,
           _scann("random", "recall@{k}")),
    Target("3. ScaNN q/s / exact q/s at batch 1, 1M (random) (>= 10)", "scann_recall", 10.0, True,
           _scann("random", "speedup/batch1")),
    Target("3. ScaNN recall@10 at 1M (clustered vectors) (>= 0.95)", "scann_recall", 0.95, True,
           _scann("clustered", "recall@{k}")),
    Target("3. ScaNN q/s / exact q/s at batch 1, 1M (clustered) (>= 10)", "scann_recall", 10.0,
           True, _scann("clustered", "speedup/batch1")),
    Target("4. ALS s/iteration, ours / implicit CG, default preset (<= 1)", "als_vs_reference",
           1.0, False, _als_ratio, note="ours: the faster of our Cholesky and CG solvers"),
    Target("4. the same at 10x the default preset's users (<= 1)", "als_vs_reference_10x_users",
           1.0, False, _als_ratio,
           note="CG solvers (ours and implicit's; our Cholesky was 5.5x slower than our CG there)"),
    Target("4. ALS test HR@10, ours - implicit CG (within 0.005)", "als_vs_reference", 0.005,
           False, _als_hr_gap, absolute=True, note="ours: the solver timed above"),
    Target("4. ALS s/iteration, Spark local / ours, explicit (>= 5)", "als_vs_reference", 5.0,
           True, _als_spark),
    Target("4. ALS explicit test RMSE, ours / Spark - 1 (within 0.01)", "als_vs_reference", 0.01,
           False, _als_rmse, absolute=True, note="issue 6's target, still held"),
    Target("4. ALS s/iteration, ours / implicit CG (<= 2)", "als_vs_reference", 2.0, False,
           _als_ratio, retired="retired: issue 23 sets <= 1"),
    Target("5. peak RSS ratio, larger / smaller data (two_tower_streaming) (<= 1.3)",
           "two_tower_streaming", 1.3, False, _fixed("peak_rss_ratio"), note="1M vs 10M"),
    Target("5. input pipeline / training examples/s, streamed two-tower (>= 3)",
           "two_tower_streaming", 3.0, True, _fixed("min_input_to_train_ratio"),
           note="the smaller of the two sizes"),
    Target("5. MPD loader peak RSS, 100 / 10 slices (< 2)", "mpd_streaming_rss", 2.0, False,
           _fixed("peak_growth"), strict=True),
    Target("5. peak RSS ratio, larger / smaller data (dcn_streaming_rss) (<= 1.3)",
           "dcn_streaming_rss", 1.3, False, _fixed("peak_rss_ratio"),
           note="default vs large ratings; an extra entry (`--all`)"),
    Target("6. cascade test HR@10 / two-tower retrieval alone (>= 1.05)", "dcn_quality", 1.05,
           True, lambda r: r["ratio/cascade_vs_retrieval"], per_seed=True),
    Target("6. two-tower test HR@10, default features (>= 0.231: 95% of 0.243)",
           "two_tower_quality", 0.231, True, lambda r: r["all/test/all/hr@10"], per_seed=True,
           note="synthetic default preset"),
    Target("6. cold-track test HR@10, all features / ids, worst seed (>= 2)",
           "two_tower_quality", 2.0, True, lambda r: r["ratio/cold_all_vs_ids"], per_seed=True,
           worst_seed=True,
           note="the bottom 80% of tracks by plays: ~880 test rows, 5-20 hits per model and "
                "seed, so one seed's ratio is a ratio of small counts; the entry also prints "
                "the hits summed over seeds, at 10 and 50"),
    Target("6. DCN test RMSE / biased baseline (< 0.97)", "dcn_quality", 0.97, False,
           lambda r: r["ratio/dcn_vs_biased"], per_seed=True, strict=True),
    Target("6. playlist MF R-precision ratio to the best group baseline, as a share of the "
           "oracle's ratio, K=5 (>= 0.85)", "playlist_quality", 0.85, True,
           _playlist_to_oracle(5), per_seed=True, note="synthetic playlists"),
    Target("6. the same, K=10 (>= 0.85)", "playlist_quality", 0.85, True, _playlist_to_oracle(10),
           per_seed=True, note="synthetic playlists"),
    Target("6. playlist MF R-precision / best group baseline, K=5 (>= 2)", "playlist_quality", 2.0,
           True, lambda r: r["k5_ratio"], per_seed=True, retired=_PLAYLIST_RETIRED),
    Target("6. the same, K=10 (>= 2)", "playlist_quality", 2.0, True, lambda r: r["k10_ratio"],
           per_seed=True, retired=_PLAYLIST_RETIRED),
    Target("6. unseen / seen playlist R-precision (>= 0.8)", "playlist_quality", 0.8, True,
           lambda r: r["unseen_over_seen"], per_seed=True),
    Target("6. user-similarity test friend AUC, synthetic, worst seed (>= 0.80)",
           "similarity_quality", 0.80, True, lambda r: r["default/test/all/friend_auc"],
           per_seed=True, worst_seed=True,
           note="synthetic default preset; the generator's own tastes (`oracle/...` in the "
                "entry's figures) bound it"),
)

# The real-data quality entry (`real_quality`, HetRec Last.fm) states its own
# targets: its figures carry `"targets": [{"target", "value", "met"}, ...]`
# (the goal is in the target's text); without them the table holds one
# "not measured" row for it.
REAL_QUALITY = "real_quality"


def _real_quality_targets(record: Optional[Dict[str, Any]]) -> List[Target]:
  listed = _first(record, "figures", "targets") if record else None
  if not isinstance(listed, list) or not listed:
    skipped = _first(record, "figures", "skipped") if record else None
    note = f"skipped: {skipped}" if skipped else "the `real_quality` entry's targets go here"
    return [Target("6. quality on real data (`real_quality`)", REAL_QUALITY, None, True,
                   lambda fig: None, note=note)]
  return [Target(f"6. real data: {t['target']}", REAL_QUALITY, None, True,
                 lambda fig, t=t: _median_of(t.get("value")), note=t.get("note", ""),
                 met=t.get("met")) for t in listed]


def _row(t: Target, record: Optional[Dict[str, Any]], report: Dict[str, Any]) -> Dict[str, Any]:
  """The row of target `t` from `record` (None: its entry is not in the report)."""
  row: Dict[str, Any] = {"target": t.target, "entry": t.entry, "goal": t.goal, "higher": t.higher,
                         "measured": None, "spread": None, "met": None, "status": "not measured",
                         "date": None, "config": None, "stale": None, "stale_changes": [],
                         "note": t.note}
  why = None
  if record is None:
    why = "not in this report"
  elif record.get("skipped"):
    why = f"not run: {record['skipped']}"
  elif record.get("returncode") != 0:
    why = f"failed (exit {record.get('returncode')})"
  if record is not None and not record.get("skipped"):
    row["date"] = record_date(record, report)
    row["config"] = record.get("command", "").replace("python -m benchmarks.", "")
  fig = record.get("figures") if record else None
  measured = None
  if fig is not None:
    if t.per_seed:
      measured = _over_seeds(fig, t.measure)
    else:
      value = _safe(t.measure, fig)
      measured = None if value is None else {"median": value, "runs": 1}
  row["note"] = "; ".join(filter(None, [t.note, why, t.retired]))
  if measured is None:
    row["status"] = "retired" if t.retired else "not measured"
    return row
  value = measured["median"]
  if t.worst_seed and measured.get("runs", 1) > 1:
    value = measured["min"] if t.higher else measured["max"]
  compared = abs(value) if t.absolute else value
  if t.goal is None:
    met = t.met
  elif t.higher:
    met = compared > t.goal if t.strict else compared >= t.goal
  else:
    met = compared < t.goal if t.strict else compared <= t.goal
  met = None if met is None else bool(met)
  row.update(measured=value, met=met, stale=stale_reason(record, report),
             stale_changes=stale_changes(record, report),
             status="measured" if met is None else "met" if met else "not met")
  if measured.get("runs", 1) > 1:
    row["spread"] = [measured["min"], measured["max"]]
  if t.retired:
    row["status"] = "retired"
  return row


def target_rows(report: Dict[str, Any]) -> List[Dict[str, Any]]:
  """One row per target: value (median over seeds where per seed), met, date, flags, stale.

  Args:
    report: The suite report (`records` with `name`, `figures`, `command`, dates).

  Returns:
    Rows with `target`, `entry`, `goal`, `higher`, `measured` (None: not
    measured), `spread` ([min, max] over seeds), `met` (bool, None when not
    measured), `status` (`met`, `not met`, `not measured`, `retired`;
    `measured` when neither a goal nor the entry decides), `date`, `config`
    (the entry's flags), `stale` (why the value is out of date, or None),
    `stale_changes` (their numbers in `CHANGES`, from 1) and `note`.
  """
  records = {r["name"]: r for r in report.get("records", [])}
  listed = list(TARGETS) + _real_quality_targets(records.get(REAL_QUALITY))
  return [_row(t, records.get(t.entry), report) for t in listed]


def _cell(row: Dict[str, Any]) -> str:
  if row["measured"] is None:
    return "—"
  text = f"{row['measured']:.3g}"
  if row["spread"]:
    text += f" [{row['spread'][0]:.3g}, {row['spread'][1]:.3g}]"
  return text


def targets_section(rows: Sequence[Dict[str, Any]],
                    changes: Sequence[ConfigChange] = CHANGES) -> List[str]:
  """The report's Targets section: the table of `target_rows`, then the changes behind "stale"."""
  lines = ["## Targets", "",
           "One row per target of the benchmark issues. Each value is from the record of its "
           "entry, measured on the date shown with the flags shown (entries may come from "
           "different runs: see the reruns above). **Stale**: measured before a change of the "
           "defaults it depends on (listed below the table) and not rerun since; the value "
           "describes the older configuration. Median [min, max] over seeds where the entry "
           "runs several. Retired targets are kept for the record.", "",
           "| target | measured | status | measured on | configuration | note |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    status = ", ".join(filter(None, [row["status"], stale_mark(row["stale_changes"])]))
    note = row["note"]
    config = f"`{row['config']}`" if row["config"] else "—"
    lines.append(f"| {row['target']} | {_cell(row)} | {status} | {row['date'] or '—'} | "
                 f"{config} | {note} |")
  if changes:
    lines += ["", "Changes of defaults that make earlier records stale:", ""]
    lines += [f"{i}. {c.date}: {c.what}; entries: {', '.join(c.entries)}."
              for i, c in enumerate(changes, 1)]
  return lines + [""]
