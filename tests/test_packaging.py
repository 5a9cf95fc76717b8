"""The sdist that cloud jobs install holds all three packages."""

import subprocess
import sys
import tarfile

from conftest import REPO


def test_sdist_contains_trainer_tuning_and_library(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                         "--outdir", str(tmp_path), REPO], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (archive,) = list(tmp_path.glob("tfrec*music-*.tar.gz"))
  names = tarfile.open(archive).getnames()
  for member in ("trainer/task.py", "tuning/tune.py", "tfrec_music/training.py",
                 "tfrec_music/data/tables.py", "setup.cfg"):
    assert any(n.endswith(member) for n in names), member
