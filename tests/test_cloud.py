"""Cloud conventions: Vertex AI variables, cluster specs, the chief rule, non-local paths."""

import json

import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from tfrec_music import distribute
from tfrec_music.training import RunConfig
from tfrec_music.training import run

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow


def test_vertex_variables_are_the_defaults(monkeypatch):
  monkeypatch.setenv("AIP_MODEL_DIR", "gs://bucket/model")
  monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://bucket/checkpoints")
  monkeypatch.setenv("AIP_TRAINING_DATA_URI", "gs://bucket/data")
  from trainer import task  # pylint: disable=g-import-not-at-top
  from tfrec_music.training import default_job_dir  # pylint: disable=g-import-not-at-top
  args = task.build_parser("two_tower").parse_args([])
  assert args.export_dir == "gs://bucket/model" and args.data_dir == "gs://bucket/data"
  assert default_job_dir("two_tower") == "gs://bucket/checkpoints"
  assert args.distribution == "auto"


def test_cluster_spec_and_the_chief_rule(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  monkeypatch.delenv("CLUSTER_SPEC", raising=False)
  assert distribute.cluster_config() is None and distribute.is_chief()
  spec = {"cluster": {"workerpool0": ["a:1"], "workerpool1": ["b:1", "c:1"]},
          "task": {"type": "workerpool1", "index": 1}}
  monkeypatch.setenv("CLUSTER_SPEC", json.dumps(spec))
  config = distribute.cluster_config()
  assert config["cluster"] == {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
  assert config["task"] == {"type": "worker", "index": 1}
  assert not distribute.is_chief() and distribute.task_label() == "worker_1"
  assert distribute.scratch_dir("gs://b/job") == "gs://b/job_scratch/worker_1"
  # Worker 0 is the chief only when the cluster has no chief task.
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]},
                                              "task": {"type": "worker", "index": 0}}))
  assert distribute.is_chief() and distribute.scratch_dir("jobs/x") == "jobs/x"
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(ValueError, match="TF_CONFIG"):
    distribute.cluster_config()


def test_multi_worker_without_a_cluster_is_a_clear_error(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  monkeypatch.delenv("CLUSTER_SPEC", raising=False)
  with pytest.raises(ValueError, match="needs a cluster"):
    distribute.make_strategy("multi_worker")
  with pytest.raises(ValueError, match="should be one of"):
    distribute.make_strategy("gpu_farm")


def test_whole_run_on_a_non_local_file_system():
  """Job dir, checkpoints and export on `ram://` (as on `gs://`: no directory rename)."""
  result = run(RunConfig(model="two_tower", preset="tiny", job_dir="ram://cloud/job",
                         export_dir="ram://cloud/export", hparams={"epochs": 1},
                         checkpoint_every=3))
  assert result.export_path == "ram://cloud/export/two_tower/1"
  assert tf.io.gfile.listdir("ram://cloud/export/two_tower") == ["1"]  # no temporary left
  assert {"metrics.json", "config.json", "data_report.json"} <= set(
      tf.io.gfile.listdir("ram://cloud/job"))
  loaded = tf.saved_model.load(result.export_path)
  out = loaded.signatures["serving_default"](user_id=tf.constant(["u00001"]))
  assert out["item_ids"].shape[0] == 1 and out["item_ids"].shape[1] > 0
