"""Keras Tuner search: CLI, resume, HParams logs, distributed chief/workers, hypertune."""

import glob
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tfrec_music.models.two_tower import TwoTowerFamily

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow

TUNE = [sys.executable, "-m", "tuning.tune", "--model", "two_tower", "--preset", "tiny",
        "--verbosity", "WARNING"]


def _run(args, env=None, timeout=300):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def _trial_results(project_dir):
  out = {}
  for path in glob.glob(os.path.join(project_dir, "trial_*", "result.json")):
    with open(path) as f:
      result = json.load(f)
    out[result["trial_id"]] = (result, os.path.getmtime(path))
  return out


def test_random_search_writes_best_and_resumes(tmp_path):
  job = str(tmp_path / "tune")
  first = _run(TUNE + ["--max-trials", "2", "--job-dir", job, "--set", "epochs=2"])
  assert first.returncode == 0, first.stderr[-3000:]
  project = os.path.join(job, "two_tower_random")
  results = _trial_results(project)
  assert sorted(results) == ["0", "1"]
  best_path = os.path.join(job, "best_hparams.json")
  with open(best_path) as f:
    best = json.load(f)
  assert best["model"] == "two_tower"
  assert best["objective"]["metric"] == "valid/all/hr@10"
  assert best["objective"]["value"] == max(r["validation"]["valid/all/hr@10"]
                                           for r, _ in results.values())
  assert best["hparams"]["epochs"] == 2  # fixed flags stay in every trial
  # Trial 0 is the default preset's configuration; trial 1 is searched.
  defaults = TwoTowerFamily.make_config("default", {})
  first_trial = results["0"][0]["hparams"]
  for name in ("embedding_dim", "learning_rate", "temperature", "batch_size", "optimizer",
               "mixed_negatives", "history_length", "history_pooling", "item_id_min_count",
               "user_id_dropout", "item_id_dropout"):
    assert first_trial[name] == getattr(defaults, name), name
  assert first_trial["layer_sizes"] == list(defaults.layer_sizes)
  assert results["1"][0]["hparams"] != first_trial
  assert {"embedding_dim", "learning_rate", "temperature", "mixed_negatives",
          "optimizer", "layer_sizes"} <= set(best["hparams"])
  # Every trial is a run in TensorBoard's HParams dashboard.
  for trial_id in results:
    assert glob.glob(os.path.join(project, "logs", trial_id, "events.out.tfevents.*"))

  # The same command with a larger budget resumes: finished trials are not redone.
  second = _run(TUNE + ["--max-trials", "3", "--job-dir", job, "--set", "epochs=2"])
  assert second.returncode == 0, second.stderr[-3000:]
  resumed = _trial_results(project)
  assert sorted(resumed) == ["0", "1", "2"]
  for trial_id in ("0", "1"):
    assert resumed[trial_id][1] == results[trial_id][1]

  # The trainer reads the best hyperparameters (the resumed search may have found a better
  # trial and rewritten the file).
  with open(best_path) as f:
    best = json.load(f)
  assert best["objective"]["value"] == max(r["validation"]["valid/all/hr@10"]
                                           for r, _ in resumed.values())
  from trainer import task  # pylint: disable=g-import-not-at-top
  args = task.build_parser("two_tower").parse_args(["--hparams", best_path, "--epochs", "1"])
  hparams = task.resolve_hparams(args)
  assert hparams["embedding_dim"] == best["hparams"]["embedding_dim"]
  assert hparams["epochs"] == 1  # explicit flags override the file


@pytest.mark.parametrize("tuner", ["bayesian", "hyperband"])
def test_other_tuners(tmp_path, tuner):
  job = str(tmp_path / tuner)
  result = _run(TUNE + ["--tuner", tuner, "--max-trials", "2", "--max-epochs", "2",
                        "--job-dir", job, "--set", "epochs=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(job, "best_hparams.json")) as f:
    best = json.load(f)
  assert 0.0 <= best["objective"]["value"] <= 1.0
  assert best["trials_completed"] >= 2


def test_executions_per_trial_average_model_seeds(tmp_path):
  job = str(tmp_path / "exec")
  result = _run(TUNE + ["--max-trials", "1", "--executions-per-trial", "2", "--seed", "3",
                        "--job-dir", job, "--set", "epochs=1"])
  assert result.returncode == 0, result.stderr[-3000:]
  project = os.path.join(job, "two_tower_random")
  (trial, _), = _trial_results(project).values()
  runs = trial["executions"]
  assert [r["seed"] for r in runs] == [3, 4]  # model seeds; the split is --seed's
  values = [r["validation"]["valid/all/hr@10"] for r in runs]
  assert trial["validation"]["valid/all/hr@10"] == pytest.approx(sum(values) / 2)
  # Each execution fitted in its own folder (no checkpoint shared between seeds).
  for e in range(2):
    assert os.path.isdir(os.path.join(project, "trial_0", f"execution_{e}"))
  with open(os.path.join(job, "best_hparams.json")) as f:
    best = json.load(f)
  assert best["objective"]["value"] == pytest.approx(sum(values) / 2)


def test_model_without_search_space_is_refused(tmp_path):
  result = _run([sys.executable, "-m", "tuning.tune", "--model", "popularity", "--preset",
                 "tiny", "--job-dir", str(tmp_path)])
  assert result.returncode == 2
  assert "no tuning search space" in result.stderr
  assert "two_tower" in result.stderr


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_chief_and_two_workers(tmp_path):
  job = str(tmp_path / "dist")
  base = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}
  args = TUNE + ["--max-trials", "4", "--job-dir", job, "--set", "epochs=2"]
  env = {**os.environ, **base}
  chief = subprocess.Popen(args, cwd=REPO, env={**env, "KERASTUNER_TUNER_ID": "chief"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  workers = [subprocess.Popen(args, cwd=REPO, env={**env, "KERASTUNER_TUNER_ID": f"tuner{i}"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  try:
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    chief_out = chief.communicate(timeout=120)[0]
  finally:
    for p in [chief] + workers:
      if p.poll() is None:
        p.kill()
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  assert chief.returncode == 0, chief_out[-3000:]
  results = _trial_results(os.path.join(job, "two_tower_random"))
  assert len(results) == 4
  by_worker = {r["tuner_id"] for r, _ in results.values()}
  assert by_worker == {"tuner0", "tuner1"}  # trials were shared out
  with open(os.path.join(job, "best_hparams.json")) as f:
    best = json.load(f)
  assert best["trials_completed"] == 4


def test_trainer_reports_objective_to_hypertune(tmp_path):
  pytest.importorskip("hypertune")
  metric_file = tmp_path / "hypertune" / "output.metrics"
  metric_file.parent.mkdir()
  result = _run([sys.executable, "-m", "trainer.task", "--model", "popularity", "--preset",
                 "tiny", "--no-export", "--job-dir", str(tmp_path / "job")],
                env={"CLOUD_ML_HP_METRIC_FILE": str(metric_file)})
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(line) for line in metric_file.read_text().splitlines()]
  with open(tmp_path / "job" / "metrics.json") as f:
    metrics = json.load(f)
  assert float(lines[-1]["valid_all_hr_10"]) == pytest.approx(
      metrics["model"]["valid/all/hr@10"])
