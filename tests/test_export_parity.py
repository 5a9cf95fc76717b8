"""What is evaluated is what is exported: each retrieval family's export, queried by
user id in a fresh process, reproduces the test HR@10 / NDCG@10 of its metrics.json."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

from tfrec_music.evaluation.export_check import export_metrics
from tfrec_music.training import RunConfig
from tfrec_music.training import load_and_prepare

# Retrieval families whose parity is not tested here has its own test:
# als (tests/test_als.py), itemknn and ease (tests/test_itemknn.py, tests/test_ease.py).
FAMILIES = ("popularity", "two_tower", "two_tower_dcn")


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILIES)
def test_export_reproduces_its_test_metrics(model, tmp_path):
  job, export = tmp_path / "job", tmp_path / "export"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "trainer.task", "--model", model, "--preset",
                         "tiny", "--seed", "0", "--job-dir", str(job), "--export-dir",
                         str(export)], capture_output=True, text=True, timeout=900, cwd=REPO,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  reported = json.loads((job / "metrics.json").read_text())["model"]
  # The same split (preparation is deterministic in the seed), queried through the export.
  _, _, _, prepared, _, _ = load_and_prepare(RunConfig(model=model, preset="tiny", seed=0,
                                                       job_dir=str(tmp_path / "prep")))
  served = export_metrics(str(export / model / "1"), prepared, "test")
  assert len(prepared.test) > 100
  for key in ("test/all/hr@10", "test/all/ndcg@10"):
    assert served[key] == pytest.approx(reported[key], abs=5e-5), key
