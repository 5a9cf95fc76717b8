"""Runs the benchmark suite and writes BENCHMARKS.md (tables) and a JSON file.

Every benchmark is a module of this package, run as `python -m
benchmarks.<module> <flags>` in its own process (so one's memory and threads
do not disturb the next), in the order below, cheapest and most central
first. Figures are collected from each run: the `RESULT_JSON` line of the
scripts that use `benchmarks._stats.emit`, the JSON file of those that write
one (`--json` / `--output` / `--out`), or else the last JSON object printed;
scripts that print only text have the text kept. The report names the machine
(cores, memory, CPU, TensorFlow and TFRS versions), each command, its exit
status and wall time.

A wall-clock budget (`--budget-min`, default 42) keeps the whole suite under
45 minutes on 2 cores: a benchmark that would start after the budget is spent
is recorded as skipped, and each has its own timeout.

  python -m benchmarks.run_all                      # the suite (`make bench`)
  python -m benchmarks.run_all --quick              # our three benchmarks, smallest sizes
  python -m benchmarks.run_all --only scann_recall eval_throughput
  python -m benchmarks.run_all --render benchmarks.json   # rewrite BENCHMARKS.md, no run

BENCHMARKS.md opens with the targets (`benchmarks.targets`: every target with
its value, met or not, and the date and flags it was measured with; stale
rows marked), which are also written into the JSON report as `targets`.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks import _stats
from benchmarks import targets


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One suite entry.

  Attributes:
    name: Entry name (unique; a module may appear twice with other flags).
    module: Module under `benchmarks`.
    args: Flags of the full suite.
    quick_args: Flags of `--quick` (None: not run in quick mode).
    json_flag: The script's flag for writing its JSON report, if any.
    timeout_s: Wall-clock limit of the full run.
    what: What it measures (one line, for the report).
    extra: Not in the default suite (not one of the benchmark issue's items);
      run with `--all` or `--only`.
  """

  name: str
  module: str
  args: Tuple[str, ...]
  quick_args: Optional[Tuple[str, ...]] = None
  json_flag: Optional[str] = None
  timeout_s: int = 900
  what: str = ""
  extra: bool = False


# An entry's flags may name this run's scratch folder (a temporary folder, removed after the run).
WORKDIR = "{workdir}"

# Full-suite flags are chosen for a < 45 min total on 2 cores (`--budget-min` 42); see each
# script's docstring for what the flags mean. Seconds of the last records (benchmarks.json) on
# the shared 2-core machine: eval_throughput 14, eval_vs_factorized_topk 127, scann_recall 221,
# training_throughput 79, mpd_streaming_rss 10, als_vs_reference 84, playlist_quality 230,
# two_tower_streaming 284 (more on a fresh machine: it first writes ~10M rows),
# two_tower_quality 566 (2026-11-26); at load 1.4-2 (2026-12-04): training_throughput_tutorial
# 101 (313 with full reference epochs), als_vs_reference_10x_users 73, dcn_quality 252 for
# seed 0 alone (its own retrieval fit 33 of it; 2317 for three seeds at load 4-6 before the
# cascade's speed-ups). Quiet total ~41 min. The budget skips whatever does not fit.
SUITE: Tuple[Benchmark, ...] = (
    Benchmark("eval_throughput", "eval_throughput", (), None, None, 300,
              "users/s of full-ranking evaluation, 10k users x 50k items x 64"),
    Benchmark("eval_vs_factorized_topk", "eval_vs_factorized_topk",
              ("--users", "5000", "--items", "50000", "--runs", "3"),
              ("--users", "300", "--items", "2000", "--runs", "1",
               "--indexes", "brute_force"), "--json", 900,
              "our full-ranking HR@K and time vs FactorizedTopK in model.evaluate (item 2)"),
    Benchmark("scann_recall", "scann_recall", ("--sizes", "100000", "1000000", "--runs", "3"),
              ("--sizes", "5000", "--kinds", "clustered", "--runs", "1",
               "--recall-queries", "200", "--batch1-queries", "50",
               "--batch256-queries", "256"), "--json", 1200,
              "recall@10 and q/s of the exports' ScaNN index vs their exact index (item 3)"),
    Benchmark("training_throughput", "training_throughput",
              ("--preset", "default", "--epochs", "4", "--ref-train-metrics", "off"),
              ("--preset", "tiny", "--epochs", "2", "--ref-train-metrics", "on",
               "--ours", "ids_no_history"),
              "--json", 1200,
              "two-tower examples/s (ids without history; default features) and time to the "
              "same valid HR@10 vs the TFRS-tutorial reference (items 1, 23)"),
    # The tutorial model runs at ~2k examples/s (2.3 min a full epoch): its epochs are bounded
    # to 80 of their ~270 batches (examples/s of those steps; its HR is after them).
    Benchmark("training_throughput_tutorial", "training_throughput",
              ("--preset", "default", "--epochs", "2", "--ref-train-metrics", "on",
               "--ours", "ids_no_history", "--ref-max-steps", "80"),
              None, "--json", 1200,
              "the same against the tutorial exactly (FactorizedTopK in training steps; "
              "80 reference steps an epoch)"),
    Benchmark("mpd_streaming_rss", "mpd_streaming_rss", (), None, None, 600,
              "peak RSS of the MPD loader, 10 vs 100 slices (item 5)"),
    Benchmark("similar_users_throughput", "similar_users_throughput", (), None, None, 600,
              "similar-user queries/s from a user_similarity export", extra=True),
    Benchmark("als_vs_reference", "als_vs_reference", ("--preset", "default"), None,
              "--output", 900, "ALS vs implicit and Spark local (item 4)"),
    # CG solvers only: at 10x users Cholesky is 5-6x slower (ours and implicit's) and took
    # most of the entry's 380 s (load 6).
    Benchmark("als_vs_reference_10x_users", "als_vs_reference",
              ("--users-scale", "10", "--skip", "explicit", "--solvers", "cg"), None,
              "--output", 900,
              "ALS (CG) vs implicit (CG) at 10x the default preset's users (item 4)"),
    Benchmark("playlist_quality", "playlist_quality", ("--seeds", "0", "1", "2"), None, "--json",
              900, "playlist MF R-precision vs same-artist / same-album (item 6)"),
    # two_tower_quality leaves each seed's default two-tower fit (features=all) for
    # dcn_quality's cascade, whose retrieval stage is that same model: it is fitted once.
    Benchmark("two_tower_quality", "two_tower_quality",
              ("--seeds", "0", "1", "2", "--preset", "default",
               "--cascade-job-dir", f"{WORKDIR}/dcn_quality"), None, "--json", 1500,
              "two-tower ids / all features, popularity, oracle: HR@10, NDCG@10 (item 6)"),
    # The cascade trains one re-ranker per seed (6 + 2 negatives per positive).
    Benchmark("dcn_quality", "dcn_quality",
              ("--seeds", "0", "1", "2", "--cascade", "--job-dir", f"{WORKDIR}/dcn_quality"),
              None, "--json", 5400, "DCN RMSE and the cascade's HR@10 (item 6)"),
    Benchmark("two_tower_streaming", "two_tower_streaming", ("--targets", "1000000", "10000000"),
              ("--targets", "50000", "200000", "--users", "1000"), "--json", 1800,
              "peak RSS of streamed two-tower training, ~1M vs ~10M interactions, and "
              "input-pipeline vs training examples/s (item 5, the scale issue)"),
    # Skipped (with its message) unless $TFREC_HETREC_DIR names the HetRec Last.fm-2k release;
    # ~25 min for four families x 3 seeds on the shared 2-core machine.
    Benchmark("real_quality", "real_quality", ("--seeds", "0", "1", "2"), None, "--json", 3600,
              "every retrieval family and baseline on HetRec Last.fm-2k (literature protocol)"),
    # Issue 21's synthetic floor: the default's test friend AUC on every seed (each seed
    # trains its own two-tower for the centroid part; 156 s for the three on 2 cores).
    Benchmark("similarity_quality", "similarity_quality",
              ("--preset", "default", "--seeds", "0", "1", "2", "--settings", "default"),
              ("--preset", "tiny", "--seeds", "0", "1", "--settings", "default"),
              "--out", 900, "user-similarity friend AUC over seeds, synthetic (item 6)"),
    Benchmark("dcn_streaming_rss", "dcn_streaming_rss", ("--presets", "default", "large"),
              None, "--json", 1200,
              "peak RSS of streaming DCN training, default vs large ratings (the DCN issue)",
              extra=True),
)


def _last_json(text: str) -> Optional[Any]:
  """The last JSON object printed: a `RESULT_JSON` line, else a `{`-led block."""
  lines = text.splitlines()
  for line in reversed(lines):
    if line.startswith(_stats.RESULT_PREFIX):
      try:
        return json.loads(line[len(_stats.RESULT_PREFIX):])
      except json.JSONDecodeError:
        break
  for start in range(len(lines) - 1, -1, -1):
    if lines[start].startswith(("{", "[")):
      try:
        return json.loads("\n".join(lines[start:]))
      except json.JSONDecodeError:
        continue
  return None


def run_benchmark(bench: Benchmark, quick: bool, python: str, workdir: str) -> Dict[str, Any]:
  """Runs one entry in a subprocess; returns its record (command, status, seconds, figures).

  `{workdir}` in an entry's flags is this run's scratch folder, shared by its entries
  (the record's command keeps the placeholder).
  """
  shown = list(bench.quick_args if quick else bench.args)
  args = [a.replace(WORKDIR, workdir) for a in shown]
  json_path = None
  if bench.json_flag:
    json_path = os.path.join(workdir, f"{bench.name}.json")
    args += [bench.json_flag, json_path]
  command = [python, "-m", f"benchmarks.{bench.module}"] + args
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  start = time.perf_counter()
  record: Dict[str, Any] = {"name": bench.name, "what": bench.what, "date": _now(),
                            "command": "python -m benchmarks." + " ".join([bench.module] + shown)}
  print(f"[run_all] {record['command']}", flush=True)
  try:
    proc = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=bench.timeout_s, check=False)
    stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    stderr, rc = f"timed out after {bench.timeout_s} s", None
  record["seconds"] = time.perf_counter() - start
  record["returncode"] = rc
  figures = None
  if json_path and os.path.exists(json_path):
    with open(json_path, encoding="utf-8") as f:
      figures = json.load(f)
  if figures is None:
    figures = _last_json(stdout)
  record["figures"] = figures
  record["stdout_tail"] = "\n".join(
      l for l in stdout.splitlines() if not l.startswith(_stats.RESULT_PREFIX))[-4000:]
  if rc != 0:
    record["stderr_tail"] = stderr[-3000:]
  print(f"[run_all] {bench.name}: rc={rc} in {record['seconds']:.1f}s", flush=True)
  return record


# ------------------------------------------------------------------- tables
def _now() -> str:
  return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _num(value: Any, digits: int = 4) -> str:
  if value is None:
    return "—"
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, dict) and "median" in value:
    return _stats.fmt(value, digits)
  if isinstance(value, float):
    return f"{value:.{digits}g}"
  return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]
  return out


def _scann_table(fig: Dict[str, Any]) -> List[str]:
  rows = []
  for r in fig["rows"]:
    k = r["k"]
    rows.append([r["kind"], f"{r['n_items']:,}", r[f"recall@{k}"],
                 r["qps/exact/batch1"], r["qps/scann/batch1"], r["speedup/batch1"],
                 r["qps/exact/batch256"], r["qps/scann/batch256"], r["speedup/batch256"]])
  return _table(["vectors", "candidates", "recall@10", "exact q/s b1", "ScaNN q/s b1",
                 "speed-up b1", "exact q/s b256", "ScaNN q/s b256", "speed-up b256"], rows)


def _eval_table(fig: Dict[str, Any]) -> List[str]:
  rows = []
  for r in fig["rows"]:
    rows.append([f"FactorizedTopK ({r['tfrs_index']}, by {r['match']})",
                 r["tfrs_seconds"], r["ours_seconds"], r.get("ours_with_lists_seconds"),
                 " / ".join(f"{v:.4f}" for v in r["hr_tfrs"].values()),
                 " / ".join(f"{v:.4f}" for v in r["hr_ours"].values()), r["speedup"],
                 r.get("speedup_with_lists")])
  ks = "/".join(f"@{k}" for k in fig["ks"])
  return [f"{fig['users']:,} users x {fig['items']:,} items x {fig['dim']}; ours s = rank "
          "metrics as FactorizedTopK; with lists = also the top-K lists (coverage)", ""] + _table(
      ["reference", "reference s", "ours s", "ours s with lists", f"HR{ks} reference",
       f"HR{ks} ours", "speed-up", "speed-up with lists"], rows)


def _training_table(fig: Dict[str, Any]) -> List[str]:
  rows = []
  for name, r in fig["results"].items():
    ratios = [f"{ours} {fig[key][name]:.2f}x"
              for key, ours in (("speedup", "ours"),
                                ("speedup_default_features", "ours_default_features"))
              if fig.get(key, {}).get(name)]
    rows.append([name, r["examples_per_s"], r["first_epoch_examples_per_s"],
                 " ".join(f"{h:.4f}" for h in r["valid_hr@10"]), r["seconds_to_target_hr"],
                 ", ".join(ratios)])
  return [f"preset {fig['preset']}: {fig['train_rows']:,} training rows, {fig['n_items']:,} "
          f"tracks, embedding_dim {fig['embedding_dim']}, batch_size {fig['batch_size']}; "
          f"target valid HR@10 {fig['target_valid_hr@10']:.4f}", ""] + _table(
              ["model", "examples/s (epochs 2..E)", "examples/s epoch 1", "valid HR@10 by epoch",
               "train s to target HR", "ratio"], rows)


def _flat(value: Any, prefix: str = "") -> List[Tuple[str, Any]]:
  if isinstance(value, dict) and not ("median" in value and "min" in value):
    out = []
    for key, sub in value.items():
      if key != "machine":
        out += _flat(sub, f"{prefix}{key}/")
    return out
  if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
    out = []
    for i, sub in enumerate(value):
      out += _flat(sub, f"{prefix}{i}/")
    return out
  if isinstance(value, (int, float, dict)):  # bool included: the scripts' "met" flags
    return [(prefix.rstrip("/"), value)]
  return []


def _generic_table(fig: Any, limit: int = 60) -> List[str]:
  pairs = _flat(fig)
  lines = _table(["figure", "value"], [[k, v] for k, v in pairs[:limit]])
  if len(pairs) > limit:
    lines.append(f"\n({len(pairs) - limit} more figures in the JSON file)")
  return lines


RENDERERS = {"scann_recall": _scann_table, "eval_vs_factorized_topk": _eval_table,
             "training_throughput": _training_table}


def _seed_stat(rows: Any, key: str) -> Optional[Dict[str, Any]]:
  """Median / min / max of `key` over per-seed rows (None when absent)."""
  if not isinstance(rows, list):
    return None
  values = [r[key] for r in rows if isinstance(r, dict) and key in r]
  return _stats.summarize(values) if values else None


def _when(report: Dict[str, Any], name: str) -> str:
  """`, measured <date>` of entry `name`, and its stale mark (for the quality tables' titles)."""
  record = next((r for r in report["records"] if r["name"] == name), None)
  if record is None:
    return ""
  mark = targets.stale_mark(targets.stale_changes(record, report))
  return f", measured {targets.record_date(record, report)}" + (
      f"; {mark} under Targets" if mark else "")


def _quality_section(report: Dict[str, Any]) -> List[str]:
  """Item 6: one quality table per task, from the quality benchmarks' per-seed rows."""
  figures = {r["name"]: r.get("figures") for r in report["records"] if r.get("figures")}
  lines = ["## Quality on the default synthetic preset (item 6)", "",
           "Median [min, max] over the seeds of each benchmark (split, initialization and "
           "shuffling vary with the seed; the catalogue is the same). Retrieval: test split, "
           "full ranking over the catalogue; cold = the bottom 80% of tracks by training "
           "plays, cold_user = users held out of training, served from their history."]
  tt = figures.get("two_tower_quality")
  if tt:
    groups = ("all", "cold", "warm", "cold_user")
    rows = []
    for name, label in (("oracle", "oracle (generator's scores)"), ("popularity", "popularity"),
                        ("als", "ALS (implicit)"), ("ids", "two-tower, ids only"),
                        ("all", "two-tower, all features")):
      rows.append([label] + [_seed_stat(tt, f"{name}/test/{g}/hr@10") for g in groups]
                  + [_seed_stat(tt, f"{name}/test/{g}/ndcg@10") for g in groups[:3]])
    lines += ["", f"Retrieval ({len(tt)} seeds, `two_tower_quality`"
              f"{_when(report, 'two_tower_quality')}):", ""] + _table(
        ["model"] + [f"HR@10 {g}" for g in groups] + [f"NDCG@10 {g}" for g in groups[:3]], rows)
  dq = figures.get("dcn_quality")
  if dq:
    if _seed_stat(dq, "model/test/all/hr@10"):
      rows = [[label, _seed_stat(dq, f"{name}/test/all/hr@10"),
               _seed_stat(dq, f"{name}/valid/all/hr@10")]
              for name, label in (("oracle", "oracle"), ("popularity", "popularity"),
                                  ("two_tower", "two-tower retrieval alone"),
                                  ("model", "cascade: two-tower top-100 re-ranked by DCN"))]
      if _seed_stat(dq, "ratio/cascade_vs_retrieval"):
        rows.append(["cascade / retrieval alone (same users; target >= 1.05)",
                     _seed_stat(dq, "ratio/cascade_vs_retrieval"),
                     _seed_stat(dq, "ratio/valid_cascade_vs_retrieval")])
      lines += ["", f"Retrieve then rank ({len(dq)} seeds, `dcn_quality --cascade`, the "
                f"cascade's own split{_when(report, 'dcn_quality')}):", ""]
      lines += _table(["model", "test HR@10", "valid HR@10"], rows)
    names = sorted({k.split("/")[0] for r in dq for k in r if k.endswith("/test/all/rmse")})
    if names:
      rows = [[n if n != "model" else "DCN", _seed_stat(dq, f"{n}/test/all/rmse"),
               _seed_stat(dq, f"{n}/valid/all/rmse")] for n in names]
      lines += ["", f"Ratings ({len(dq)} seeds, `dcn_quality`{_when(report, 'dcn_quality')}):",
                ""] + _table(["model", "test RMSE", "valid RMSE"], rows)
  pq = figures.get("playlist_quality")
  if pq:
    rows = [[label] + [_seed_stat(pq, f"k{k}_{key}") for k in (5, 10)]
            for key, label in (("oracle", "oracle"), ("model", "playlist MF"),
                               ("best_group_baseline", "best of same artist / same album"))]
    lines += ["", f"Playlist continuation ({len(pq)} seeds, `playlist_quality`, synthetic "
              f"playlists{_when(report, 'playlist_quality')}):", ""]
    lines += _table(["model", "R-precision K=5", "R-precision K=10"], rows)
  if len(lines) == 3:
    lines += ["", "No quality benchmark ran."]
  return lines + [""]


def render_markdown(report: Dict[str, Any]) -> str:
  """BENCHMARKS.md text: machine, then one section (command, status, table) per entry."""
  m = report["machine"]
  lines = ["# Benchmarks", "",
           f"Written by `python -m benchmarks.run_all{' --quick' if report['quick'] else ''}` "
           f"on {report['date']} in {report['total_seconds'] / 60:.1f} min. "
           "Figures are median [min, max] over the runs each script states."]
  for rerun in report.get("reruns", []):
    lines.append(f"Rerun on {rerun['date']} ({rerun['seconds'] / 60:.1f} min, `--update`): "
                 + ", ".join(rerun["names"]) + "; their sections below are from that rerun.")
  lines += ["",
           "## Machine", ""]
  lines += _table(["", ""], [[k, v] for k, v in m.items()])
  lines += [""] + targets.targets_section(targets.target_rows(report))
  lines += _quality_section(report)
  for record in report["records"]:
    lines += ["", f"## {record['name']}", "", record.get("what", ""), "",
              f"`{record['command']}`"]
    if record.get("skipped"):
      lines += ["", f"Not run: {record['skipped']}."]
      continue
    rerun = f" (rerun on {record['rerun']})" if record.get("rerun") else ""
    stale = targets.stale_mark(targets.stale_changes(record, report))
    stale = f" {stale} under Targets." if stale else ""
    lines += ["", f"Exit status {record['returncode']}, {record['seconds']:.1f} s{rerun}.{stale}",
              ""]
    fig = record.get("figures")
    module = (fig or {}).get("benchmark") if isinstance(fig, dict) else None
    try:
      if module in RENDERERS:
        lines += RENDERERS[module](fig)
      elif fig is not None:
        lines += _generic_table(fig)
      else:
        lines += ["```", record.get("stdout_tail", "")[-2000:], "```"]
    except (KeyError, TypeError, ValueError) as e:  # A changed report shape: keep the text.
      lines += [f"(table not rendered: {e!r})", "```", record.get("stdout_tail", "")[-2000:],
                "```"]
    if record["returncode"] != 0 and record.get("stderr_tail"):
      lines += ["", "```", record["stderr_tail"][-1500:], "```"]
  return "\n".join(lines) + "\n"


def _write(report: Dict[str, Any], json_path: str, md_path: str) -> None:
  """Writes the JSON report (with its `targets` rows, met flags included) and BENCHMARKS.md."""
  report["targets"] = targets.target_rows(report)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2, default=float)
    f.write("\n")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(render_markdown(report))


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  """Parses flags, runs the suite in order within the budget, writes the two reports."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="Only the entries with quick flags, at their smallest sizes.")
  parser.add_argument("--only", nargs="+", default=None, help="Entry names to run.")
  parser.add_argument("--skip", nargs="+", default=[], help="Entry names to leave out.")
  parser.add_argument("--all", action="store_true",
                      help="Also run the extra entries (not in the default suite).")
  parser.add_argument("--budget-min", type=float, default=42.0,
                      help="Start no benchmark after this many minutes.")
  parser.add_argument("--md", default="BENCHMARKS.md", help="Markdown report path.")
  parser.add_argument("--json", default="benchmarks.json", help="JSON report path.")
  parser.add_argument("--list", action="store_true", help="Print the entries and exit.")
  parser.add_argument("--render", default=None, metavar="JSON",
                      help="Run nothing: rewrite --md from this JSON report and the report's "
                           "`targets` (derived from its records) in place.")
  parser.add_argument("--update", default=None, metavar="JSON",
                      help="Rerun the selected entries (--only) and replace their records in "
                           "this earlier report; the report notes which were rerun and when.")
  args = parser.parse_args(argv)
  if args.render:
    with open(args.render, encoding="utf-8") as f:
      report = json.load(f)
    _write(report, args.render, args.md)
    print(f"[run_all] wrote {args.md} and the targets of {args.render} from its records",
          flush=True)
    return report
  names = {b.name for b in SUITE}
  for name in (args.only or []) + args.skip:
    if name not in names:
      raise ValueError(f"Unknown benchmark {name!r}; choose from {sorted(names)}.")
  selected = [b for b in SUITE
              if (b.name in args.only if args.only is not None else (args.all or not b.extra))
              and b.name not in args.skip and (not args.quick or b.quick_args is not None)]
  if args.list:
    for b in selected:
      print(f"{b.name:30s} benchmarks.{b.module} "
            + " ".join(b.quick_args if args.quick else b.args) + ("  [extra]" if b.extra else ""))
    return {}
  start = time.perf_counter()
  records = []
  with tempfile.TemporaryDirectory() as workdir:
    for bench in selected:
      elapsed = time.perf_counter() - start
      if elapsed > args.budget_min * 60:
        records.append({"name": bench.name, "what": bench.what,
                        "command": "python -m benchmarks." + " ".join(
                            (bench.module,) + (bench.quick_args if args.quick else bench.args)),
                        "skipped": f"the {args.budget_min:g} min budget was spent "
                                   f"({elapsed / 60:.1f} min)"})
        continue
      records.append(run_benchmark(bench, args.quick, sys.executable, workdir))
  report = {"date": _now(), "quick": args.quick,
            "total_seconds": time.perf_counter() - start, "machine": _stats.machine(),
            "records": records}
  if args.update:
    with open(args.update, encoding="utf-8") as f:
      earlier = json.load(f)
    rerun = {r["name"]: dict(r, rerun=report["date"]) for r in records}
    earlier["records"] = [rerun.pop(r["name"], r) for r in earlier["records"]] + list(
        rerun.values())
    earlier.setdefault("reruns", []).append(
        {"date": report["date"], "names": [r["name"] for r in records],
         "seconds": report["total_seconds"]})
    report = earlier
  _write(report, args.json, args.md)
  # A timed-out run has returncode None; a skipped one has no returncode.
  failed = [r["name"] for r in records if "returncode" in r and r["returncode"] != 0]
  print(f"[run_all] wrote {args.md} and {args.json} in {time.perf_counter() - start:.0f}s; "
        f"failed: {failed or 'none'}", flush=True)
  return report


if __name__ == "__main__":
  main()
