"""benchmarks.training_throughput: both settings of ours against the reference, its targets."""

import pytest

from benchmarks import run_all
from benchmarks import targets
from benchmarks import training_throughput


def _rows(fig):
  report = {"date": "2999-01-01 00:00 UTC", "records": [
      {"name": "training_throughput", "returncode": 0, "command": "c", "figures": fig}]}
  return {r["target"]: r for r in targets.target_rows(report)
          if r["entry"] == "training_throughput"}


def test_targets_read_each_setting_against_the_reference_without_train_metrics():
  rows = _rows({"speedup": {"reference_train_metrics_off": 1.2},
                "speedup_default_features": {"reference_train_metrics_off": 0.5}})
  ids, default, retired = rows.values()
  assert "history off" in ids["target"] and ids["goal"] == 1.0
  assert ids["measured"] == pytest.approx(1.2) and ids["status"] == "met"
  assert default["goal"] == 0.6 and default["measured"] == pytest.approx(0.5)
  assert default["status"] == "not met"
  assert "(>= 2)" in retired["target"] and retired["status"] == "retired"


def test_quick_run_reports_both_settings_and_the_targets(capsys):
  report = training_throughput.main(["--preset", "tiny", "--epochs", "1",
                                     "--ref-train-metrics", "off"])
  capsys.readouterr()
  assert set(report["results"]) == {"ours", "ours_default_features",
                                    "reference_train_metrics_off"}
  assert report["config"]["ours"]["features"] == "ids"
  assert report["config"]["ours"]["history_length"] == 0
  assert report["config"]["ours_default_features"]["features"] == "all"
  for key in ("speedup", "speedup_default_features"):
    assert report[key]["reference_train_metrics_off"] > 0
  assert set(report["targets"]) == {"ours / reference_train_metrics_off >= 1.0",
                                    "ours_default_features / reference_train_metrics_off >= 0.6"}
  table = "\n".join(run_all.RENDERERS["training_throughput"](report))
  assert "ours 0." in table or "ours 1." in table
  assert "ours_default_features" in table
