"""Parameter-server training: a chief, two workers and a ps task on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.conftest import run_python
from tests.conftest import wait_for
from tests.test_fault_tolerance import _free_ports
from tfrec_music import distribute
from tfrec_music.models.registry import get_family
from tfrec_music.training import RunConfig
from tfrec_music.training import run

# Enough epochs that a replacement worker is back before training ends; the best
# epoch on validation is kept, as on one device.
TWO_TOWER = [sys.executable, "-m", "trainer.task", "--model", "two_tower", "--preset", "tiny",
             "--epochs", "12", "--set", "early_stopping_patience=100", "--verbosity", "INFO"]
DCN = [sys.executable, "-m", "trainer.task", "--model", "dcn", "--preset", "tiny",
       "--verbosity", "INFO"]
# These addresses serve nothing: what is refused is refused before any connection.
NOWHERE = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]}


def _tf_config(cluster, kind, index=0):
  return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def test_a_parameter_server_cluster_needs_chief_workers_and_ps(monkeypatch):
  monkeypatch.delenv("CLUSTER_SPEC", raising=False)
  no_ps = {k: v for k, v in NOWHERE.items() if k != "ps"}
  monkeypatch.setenv("TF_CONFIG", _tf_config(no_ps, "chief"))
  with pytest.raises(ValueError, match=r"missing: \['ps'\]"):
    distribute.make_strategy("parameter_server")
  monkeypatch.setenv("TF_CONFIG", _tf_config(NOWHERE, "chief"))
  assert distribute.resolve("auto") == "parameter_server"
  assert not distribute.serve_parameter_server_task("auto")  # the chief coordinates
  monkeypatch.setenv("TF_CONFIG", _tf_config(NOWHERE, "evaluator"))
  with pytest.raises(ValueError, match="task type 'evaluator'"):
    distribute.serve_parameter_server_task("auto")
  monkeypatch.delenv("TF_CONFIG")
  assert not distribute.serve_parameter_server_task("auto")


@pytest.mark.parametrize("model", ["als", "user_similarity", "popularity"])
def test_families_that_cannot_train_with_a_coordinator_refuse(monkeypatch, tmp_path, model):
  monkeypatch.setenv("TF_CONFIG", _tf_config(NOWHERE, "chief"))
  with pytest.raises(ValueError, match=f"`--model {model}` cannot train with `--distribution "
                                       "parameter_server`: its family does not declare"):
    run(RunConfig(model=model, preset="tiny", job_dir=str(tmp_path),
                  distribution="parameter_server"))


def test_streaming_refuses_a_coordinator(monkeypatch, tmp_path):
  monkeypatch.setenv("TF_CONFIG", _tf_config(NOWHERE, "chief"))
  with pytest.raises(ValueError, match="`--stream` cannot train with `--distribution "
                                       "parameter_server`"):
    run(RunConfig(model="two_tower", data="parquet", stream=True, job_dir=str(tmp_path),
                  distribution="parameter_server"))


class _Cluster:
  """`ps` and `worker` tasks serving through `python -m trainer.task`, as a cloud job runs them."""

  def __init__(self, folder):
    ports = _free_ports(4)
    self.folder = folder
    self.cluster = {"chief": [f"127.0.0.1:{ports[0]}"],
                    "worker": [f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"],
                    "ps": [f"127.0.0.1:{ports[3]}"]}
    self.procs = {}
    for kind, index in (("ps", 0), ("worker", 0), ("worker", 1)):
      self.start(kind, index)

  def start(self, kind, index):
    log = open(os.path.join(self.folder, f"{kind}{index}.log"), "a")
    self.procs[(kind, index)] = subprocess.Popen(
        [sys.executable, "-m", "trainer.task", "--distribution", "parameter_server"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CONFIG": _tf_config(self.cluster, kind, index)})

  def kill(self, kind, index):
    proc = self.procs[(kind, index)]
    proc.kill()
    proc.wait(timeout=30)

  def chief(self, args, log_path):
    env = {**os.environ, "TF_CONFIG": _tf_config(self.cluster, "chief")}
    return subprocess.Popen(args, cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env=env)

  def stop(self):
    for proc in self.procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  servers = _Cluster(str(tmp_path_factory.mktemp("servers")))
  yield servers
  servers.stop()


def _finish(proc, log_path, timeout):
  try:
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  with open(log_path) as f:
    log = f.read()
  assert proc.returncode == 0, log[-4000:]
  return log


def _served_hr(exports):
  """Test HR@10 of each export's `serving_default`, loaded in a fresh process."""
  out = run_python(f"""
import json, numpy as np, tfrec_music, tensorflow as tf
from tfrec_music import training
from tfrec_music.evaluation.protocol import evaluation_rows
config = training.RunConfig(model="two_tower", preset="tiny", seed=0, job_dir={exports[0]!r} + "_eval")
prepared = training.load_and_prepare(config)[3]
users, targets, _, _ = evaluation_rows(prepared, "test")
hrs = []
for export in {exports!r}:
  serve = tf.saved_model.load(export).signatures["serving_default"]
  top = serve(user_id=tf.constant(users))["item_ids"].numpy().astype(str)[:, :10]
  hrs.append(float(np.mean([prepared.item_ids[t] in set(r) for t, r in zip(targets, top)])))
print(json.dumps(hrs))
""")
  return json.loads(out.strip().splitlines()[-1])


def _metrics(job_dir):
  with open(os.path.join(job_dir, "metrics.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_two_tower_on_a_parameter_server_cluster_survives_a_killed_worker(cluster, tmp_path):
  one_log = str(tmp_path / "one_device.log")
  one_device = subprocess.Popen(
      TWO_TOWER + ["--distribution", "one_device", "--job-dir", str(tmp_path / "one_job"),
                   "--export-dir", str(tmp_path / "one_export")],
      cwd=REPO, stdout=open(one_log, "w"), stderr=subprocess.STDOUT)
  try:
    job, chief_log = tmp_path / "ps_job", str(tmp_path / "chief.log")
    start = time.time()
    chief = cluster.chief(TWO_TOWER + ["--job-dir", str(job), "--export-dir",
                                       str(tmp_path / "ps_export")], chief_log)
    validated = job / "backup" / "two_tower_validation" / "validation_state.json"
    if not wait_for(validated.exists, chief, 240):
      _finish(chief, chief_log, 30)  # shows the chief's error
    cluster.kill("worker", 1)  # mid-training: the first epoch is validated
    killed_at = time.time() - start
    cluster.start("worker", 1)  # the replacement, at the same address
    log = _finish(chief, chief_log, 300)
    _finish(one_device, one_log, 300)
    seconds = time.time() - start
  finally:
    if one_device.poll() is None:
      one_device.kill()
  assert "Distribution: parameter_server" in log and "training rows written to" in log
  # The coordinator lost worker 1, put its step back, and got the replacement back
  # before the last epoch ended.
  failed = log.index("Worker /job:worker/replica:0/task:1 failed")
  recovered = log.index("Worker /job:worker/replica:0/task:1 has been recovered")
  assert failed < recovered < log.index("epoch 12:"), log[-4000:]
  assert "Putting back a closure after it failed" in log
  export = tmp_path / "ps_export" / "two_tower" / "1"
  assert (export / "saved_model.pb").exists() and not (job / "backup").exists()
  ps, one = _metrics(job), _metrics(tmp_path / "one_job")
  served_ps, served_one = _served_hr([str(export),
                                      str(tmp_path / "one_export" / "two_tower" / "1")])
  hr_ps, hr_one = ps["model"]["test/all/hr@10"], one["model"]["test/all/hr@10"]
  popular = ps["popularity"]["test/all/hr@10"]
  print(f"parameter server vs one device (two_tower tiny, seed 0, 12 epochs): test HR@10 "
        f"{hr_ps:.4f} vs {hr_one:.4f}, served by the export {served_ps:.4f} vs {served_one:.4f}, "
        f"popularity {popular:.4f}; worker 1 killed {killed_at:.0f} s after the chief started, "
        f"both runs done in {seconds:.0f} s")
  # 190 test users: one standard error of HR@10 near 0.4 is about 0.036.
  assert abs(hr_ps - hr_one) <= 0.08, (hr_ps, hr_one)
  assert abs(served_ps - served_one) <= 0.08, (served_ps, served_one)
  assert hr_ps > 2 * popular and served_ps > 2 * popular


@pytest.mark.slow
def test_dcn_on_a_parameter_server_cluster(cluster, tmp_path):
  if not getattr(get_family("dcn"), "supports_parameter_server", False):
    pytest.skip("DCN does not declare `supports_parameter_server` yet (its ranking loss must "
                "be reduced per replica, `Reduction.SUM`, to train under a strategy)")
  log_path = str(tmp_path / "chief.log")
  chief = cluster.chief(DCN + ["--job-dir", str(tmp_path / "job"), "--export-dir",
                               str(tmp_path / "export")], log_path)
  log = _finish(chief, log_path, 300)
  assert "Distribution: parameter_server" in log
  metrics = _metrics(tmp_path / "job")
  rmse = metrics["model"]["test/all/rmse"]
  print(f"dcn on a parameter-server cluster (tiny, seed 0): test RMSE {rmse:.4f}, global mean "
        f"{metrics['global_mean']['test/all/rmse']:.4f}, biased "
        f"{metrics['biased']['test/all/rmse']:.4f}")
  assert rmse < metrics["global_mean"]["test/all/rmse"]
  assert (tmp_path / "export" / "dcn" / "1" / "saved_model.pb").exists()
