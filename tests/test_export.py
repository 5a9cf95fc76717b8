"""Versioned atomic exports, the popularity SavedModel and TF Serving's REST formats."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import run_python
from tfrec_music.export import export_versioned
from tfrec_music.export import instances_to_inputs
from tfrec_music.export import latest_version_path
from tfrec_music.export import list_versions
from tfrec_music.export.saved_model import save_module
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.prepare import prepare


def _save_popularity(model, k=5):
  module = model.serving_module(k)
  return lambda d: tf.saved_model.save(module, d, signatures={"serving_default": module.serve})


def test_popularity_top_k_golden():
  # counts 3, 10, 0, 7 -> order by count: i1 (10), i3 (7), i0 (3), i2 (0).
  model = PopularityModel(["i0", "i1", "i2", "i3"], np.array([3, 10, 0, 7]))
  ids, scores = model.top_k(3)
  assert ids.tolist() == ["i1", "i3", "i0"]
  np.testing.assert_allclose(scores, np.log1p([10, 7, 3]), rtol=1e-6)
  assert model.top_k(99)[0].tolist() == ["i1", "i3", "i0", "i2"]   # k clamped
  with pytest.raises(ValueError, match="`k` should be a positive integer"):
    model.serving_module(0)


def test_versions_increase_and_files_beside_the_model(tmp_path, toy_tables):
  model = PopularityModel.fit(prepare(toy_tables))
  first = export_versioned(_save_popularity(model), str(tmp_path), "popularity",
                           metrics={"model": {"test/all/hr@10": 0.5}},
                           model_card={"config": {"a": 1}})
  second = export_versioned(_save_popularity(model), str(tmp_path), "popularity")
  assert first.endswith("/1") and second.endswith("/2")
  assert list_versions(str(tmp_path / "popularity")) == [1, 2]
  assert latest_version_path(str(tmp_path / "popularity")) == second
  card = json.loads(open(os.path.join(first, "model_card.json")).read())
  assert card["version"] == 1 and card["packages"]["tensorflow"].startswith("2.20")
  assert json.loads(open(os.path.join(first, "metrics.json")).read()) == {
      "model": {"test/all/hr@10": 0.5}}
  # No temporary folders are left behind.
  assert sorted(os.listdir(tmp_path / "popularity")) == ["1", "2"]


def test_failed_export_leaves_no_version(tmp_path):
  def broken(directory):
    os.makedirs(directory)
    open(os.path.join(directory, "saved_model.pb"), "w").write("half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    export_versioned(broken, str(tmp_path), "m")
  assert os.listdir(tmp_path / "m") == []
  with pytest.raises(FileNotFoundError, match="No exported version"):
    latest_version_path(str(tmp_path / "m"))


@pytest.mark.slow
def test_popularity_round_trip_fresh_process_and_cli(tmp_path, toy_tables):
  model = PopularityModel.fit(prepare(toy_tables))
  path = export_versioned(_save_popularity(model, k=7), str(tmp_path), "popularity")
  expected_ids, expected_scores = model.top_k(7)
  out = run_python(f"""
import json, tfrec_music, tensorflow as tf
from tfrec_music.export import predict_rest
loaded = tf.saved_model.load({path!r})
res = loaded.signatures['serving_default'](user_id=tf.constant(['u1', 'never-seen']))
rest = predict_rest({path!r}, json.dumps({{"instances": [{{"user_id": "u42"}}]}}))
print(json.dumps({{"ids": res['item_ids'].numpy().astype(str).tolist(),
                  "scores": res['scores'].numpy().tolist(), "rest": rest}}))
""")
  result = json.loads(out.strip().splitlines()[-1])
  assert result["ids"] == [expected_ids.tolist()] * 2
  np.testing.assert_allclose(result["scores"][0], expected_scores, rtol=1e-6)
  assert result["rest"]["predictions"][0]["item_ids"] == expected_ids.tolist()
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                         timeout=120)
  assert shown.returncode == 0, shown.stderr
  assert "signature_def['serving_default']" in shown.stdout
  assert "user_id" in shown.stdout and "item_ids" in shown.stdout


def test_save_module_keeps_signatures_and_functions_without_keras_traces(tmp_path):
  """`save_module` saves what serving uses (variables, signatures, the module's own
  `tf.function`s) with the same answers as `tf.saved_model.save`, but not tf-keras' traces
  of each layer's call functions (`keras_api`)."""
  class Module(tf.Module):
    def __init__(self):
      super().__init__()
      self.layer = tf.keras.layers.Dense(3)
      self.layer.build([None, 2])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def serve(self, x):
      return {"y": self.layer(x)}

  module = Module()
  save_module(module, str(tmp_path / "ours"), signatures={"serving_default": module.serve})
  tf.saved_model.save(module, str(tmp_path / "plain"),
                      signatures={"serving_default": module.serve})
  ours, plain = (tf.saved_model.load(str(tmp_path / name)) for name in ("ours", "plain"))
  x = tf.constant([[1.0, 2.0], [-3.0, 0.5]])
  want = module.layer(x).numpy()
  np.testing.assert_array_equal(ours.signatures["serving_default"](x=x)["y"].numpy(), want)
  np.testing.assert_array_equal(plain.signatures["serving_default"](x=x)["y"].numpy(), want)
  np.testing.assert_array_equal(ours.serve(x)["y"].numpy(), want)
  assert hasattr(plain.layer, "keras_api") and not hasattr(ours.layer, "keras_api")


def test_rest_body_conversion_errors(tmp_path, toy_tables):
  model = PopularityModel.fit(prepare(toy_tables))
  path = export_versioned(_save_popularity(model), str(tmp_path), "popularity")
  signature = tf.saved_model.load(path).signatures["serving_default"]
  inputs = instances_to_inputs({"instances": [{"user_id": "a"}, {"user_id": "b"}]}, signature)
  assert inputs["user_id"].shape == (2,)
  assert instances_to_inputs({"inputs": {"user_id": ["a"]}}, signature)["user_id"].shape == (1,)
  assert instances_to_inputs({"instances": ["a", "b", "c"]}, signature)["user_id"].shape == (3,)
  with pytest.raises(ValueError, match="signature takes"):
    instances_to_inputs({"instances": [{"user": "a"}]}, signature)
  with pytest.raises(ValueError, match="instances"):
    instances_to_inputs({"rows": []}, signature)


_SLOW_EXPORT = """
import os, sys, time
import tfrec_music
from tfrec_music.export import export_versioned

def save(directory):
  os.makedirs(directory)
  open(os.path.join(directory, "saved_model.pb"), "w").write("partial")
  print("writing", flush=True)
  time.sleep(float(sys.argv[2]))
  open(os.path.join(directory, "done"), "w").write("ok")

print(export_versioned(save, sys.argv[1], "m"), flush=True)
"""


def test_killed_export_leaves_no_visible_version(tmp_path):
  import signal
  script = tmp_path / "slow_export.py"
  script.write_text(_SLOW_EXPORT)
  proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "exports"), "60"],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "writing"
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  names = os.listdir(tmp_path / "exports" / "m")
  assert names and all(n.startswith(".tmp-") for n in names)   # only the hidden temp folder
  assert list_versions(str(tmp_path / "exports" / "m")) == []
  # The next export (here in this process) still gets version 1 and a complete folder.
  def save(directory):
    os.makedirs(directory)
    with open(os.path.join(directory, "done"), "w") as f:
      f.write("ok")
  assert export_versioned(save, str(tmp_path / "exports"), "m").endswith("/m/1")
  assert os.path.exists(tmp_path / "exports" / "m" / "1" / "done")


@pytest.mark.slow
def test_concurrent_exports_get_distinct_versions(tmp_path):
  script = tmp_path / "slow_export.py"
  script.write_text(_SLOW_EXPORT)
  procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "exports"), "1"],
                            stdout=subprocess.PIPE, text=True) for _ in range(3)]
  paths = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
  assert sorted(os.path.basename(p) for p in paths) == ["1", "2", "3"]
  for path in paths:
    assert os.path.exists(os.path.join(path, "done"))
