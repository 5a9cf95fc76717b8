"""Tiny end-to-end runs of `python -m trainer.task`."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _task(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "trainer.task", *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO, env=env)


def test_help_lists_the_flags():
  proc = _task("--help")
  assert proc.returncode == 0
  for flag in ("--model", "--data", "--data-dir", "--preset", "--epochs", "--seed", "--job-dir",
               "--export-dir", "--hparams", "--columns", "--unknown-items"):
    assert flag in proc.stdout
  # Without --model, the default model's (two_tower's) own flags are listed too.
  assert "two_tower hyperparameters" in proc.stdout and "--temperature" in proc.stdout


def test_two_tower_flags_are_the_familys_own():
  from trainer import task  # pylint: disable=g-import-not-at-top
  argv = ["--temperature", "0.2", "--mixed-negatives", "256", "--cross-replica-negatives",
          "--layer-sizes", "256,128", "--optimizer", "sgd", "--features", "ids",
          "--embedding-dim", "32", "--epochs", "2"]
  hparams = task.resolve_hparams(task.build_parser("two_tower").parse_args(argv))
  assert hparams == {"temperature": 0.2, "mixed_negatives": 256, "cross_replica_negatives": True,
                     "layer_sizes": [256, 128], "optimizer": "sgd", "features": "ids",
                     "embedding_dim": 32, "epochs": 2}
  for model in (None, "dcn"):
    _, unknown = task.build_parser(model).parse_known_args(["--temperature", "0.2"])
    assert unknown == ["--temperature", "0.2"]


def test_another_models_flag_is_a_clear_error(capsys):
  from trainer import task  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    task.main(["--model", "dcn", "--temperature", "0.2", "--no-export"])
  assert e.value.code == 2
  assert ("--model dcn does not take --temperature (a flag of --model two_tower)"
          in capsys.readouterr().err)


@pytest.mark.slow
def test_popularity_end_to_end_with_oracle(tmp_path):
  job, export = tmp_path / "job", tmp_path / "export"
  proc = _task("--model", "popularity", "--preset", "tiny", "--job-dir", str(job),
               "--export-dir", str(export), "--cloud-flag=ignored")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0].split()[0] == "scorer" and any(l.startswith("oracle") for l in lines)
  assert any(l.startswith("model (popularity)") for l in lines)
  metrics = json.loads((job / "metrics.json").read_text())
  assert set(metrics) == {"model", "itemknn", "ease", "oracle"}
  assert metrics["oracle"]["test/all/hr@10"] > metrics["model"]["test/all/hr@10"]
  for key in ("test/all/hr@10", "test/cold/ndcg@10", "test/warm/recall@50", "valid/all/mrr",
              "test/cold_user/hr@10"):
    assert key in metrics["model"], key
  report = json.loads((job / "data_report.json").read_text())
  for step in ("load", "dedup", "kcore", "split", "catalogue"):
    assert step in report, step
  assert (job / "config.json").exists() and (job / "data_card.json").exists()
  version = export / "popularity" / "1"
  assert (version / "saved_model.pb").exists()
  assert json.loads((version / "metrics.json").read_text()) == metrics
  card = json.loads((version / "model_card.json").read_text())
  assert card["data"]["fingerprint"] and card["config"]["run"]["model"] == "popularity"
  assert f"Exported: {version}" in proc.stdout


@pytest.mark.slow
def test_same_seed_same_split_and_metrics(tmp_path):
  outputs = []
  for run in ("a", "b"):
    proc = _task("--model", "popularity", "--preset", "tiny", "--seed", "7", "--no-export",
                 "--job-dir", str(tmp_path / run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs.append(json.loads((tmp_path / run / "metrics.json").read_text()))
  assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_two_tower_end_to_end(tmp_path):
  proc = _task("--model", "two_tower", "--preset", "tiny", "--epochs", "2",
               "--job-dir", str(tmp_path / "job"), "--export-dir", str(tmp_path / "export"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
  assert set(metrics) == {"model", "popularity", "itemknn", "ease", "oracle"}
  assert (tmp_path / "export" / "two_tower" / "1" / "scann" / "saved_model.pb").exists()


def test_bad_data_dir_is_a_clear_error(tmp_path):
  (tmp_path / "interactions.csv").write_text("user_id,item_id,rating\nu1,t1,4\nu2,t2,lots\n")
  proc = _task("--model", "popularity", "--data", "csv", "--data-dir", str(tmp_path),
               "--job-dir", str(tmp_path / "job"), "--no-export")
  assert proc.returncode == 2
  assert "interactions.csv" in proc.stderr and "row 2" in proc.stderr and "`rating`" in proc.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
  proc = _task("--model", "nope", "--job-dir", str(tmp_path))
  assert proc.returncode == 2 and "`--model` should be one of" in proc.stderr


@pytest.mark.slow
def test_diverged_training_stops_with_advice_and_exports_nothing(tmp_path):
  # Temperature 1e-38 turns every cosine into +-inf logits: the loss is NaN in epoch 1.
  proc = _task("--model", "two_tower", "--preset", "tiny", "--temperature", "1e-38",
               "--job-dir", str(tmp_path / "job"), "--export-dir", str(tmp_path / "export"))
  assert proc.returncode == 3
  assert "Training loss became nan at epoch 1" in proc.stderr and "temperature" in proc.stderr
  assert not (tmp_path / "export").exists()
