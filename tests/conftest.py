"""Shared fixtures: a small latent-factor data set built in memory, and helpers."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_toy_tables(n_users: int = 300, n_items: int = 400, per_user: int = 15,
                    seed: int = 0) -> Tables:
  """Users and items with latent vectors; each user takes their top items (Gumbel)."""
  rng = np.random.default_rng(seed)
  d = 6
  users = rng.normal(size=(n_users, d))
  items = rng.normal(size=(n_items, d))
  rows = []
  for u in range(n_users):
    logits = items @ users[u] * 1.5 + rng.gumbel(size=n_items)
    for t, i in enumerate(np.argsort(-logits)[:per_user]):
      rows.append((f"u{u}", f"t{i}", 1_600_000_000 + 60 * t, float(1 + (i % 5)), 1.0))
  interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating",
                                             "weight"])
  item_table = pd.DataFrame({
      "item_id": [f"t{i}" for i in range(n_items)],
      "title": [f"song {'bright' if items[i, 0] > 0 else 'dark'} {i}" for i in range(n_items)],
      "artist": [f"a{int(np.argmax(items[i]))}" for i in range(n_items)],
      "album": [f"al{int(np.argmax(items[i]))}{int(items[i, 1] > 0)}" for i in range(n_items)],
      "genre": [f"g{int(np.argmin(items[i]))}" for i in range(n_items)],
      "tags": [[f"x{int(items[i, 0] > 0)}", f"y{int(items[i, 1] > 0)}"] for i in range(n_items)],
      "energy": items[:, 2].astype(np.float32),
  })
  user_table = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)],
                             "country": [f"C{int(users[u, 0] > 0)}" for u in range(n_users)]})
  return validate_tables(Tables(interactions, item_table, user_table, name="toy"))


@pytest.fixture
def toy_tables() -> Tables:
  """A validated toy data set (300 users, 400 items, 15 interactions each)."""
  return make_toy_tables()


def run_python(code: str, timeout: int = 300, cwd: str = REPO) -> str:
  """Runs `code` in a fresh Python process (same interpreter); returns stdout.

  Raises:
    AssertionError: the process failed (its stderr is in the message).
  """
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd, env=env)
  assert proc.returncode == 0, f"fresh process failed:\n{proc.stderr[-4000:]}"
  return proc.stdout


def wait_for(predicate, proc, timeout: float) -> bool:
  """Polls `predicate` until it holds (True), `proc` exits or `timeout` s pass (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  return False


def newest_checkpoint(job_dir: str) -> float:
  """Modification time of the newest checkpoint file under `<job_dir>/backup` (0: none)."""
  newest = 0.0
  for path in glob.glob(os.path.join(job_dir, "backup", "**", "checkpoint"), recursive=True):
    try:
      newest = max(newest, os.path.getmtime(path))
    except OSError:  # replaced by the next checkpoint meanwhile
      pass
  return newest


def kill_mid_training(args, job_dir: str, validation_state: str, env=None,
                      timeout: float = 120) -> None:
  """Starts the CLI `args` and SIGKILLs it mid-epoch, after its first validated epoch.

  The kill lands once a step checkpoint under `<job_dir>/backup` is newer than
  `validation_state` (the fit loop's file, written when an epoch is validated),
  so a rerun must resume past the first epoch.
  """
  first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=env)
  try:
    assert wait_for(lambda: os.path.exists(validation_state), first, timeout), \
        "no epoch was validated before the run ended"
    validated_at = os.path.getmtime(validation_state)
    assert wait_for(lambda: newest_checkpoint(job_dir) > validated_at, first, 60), \
        "no checkpoint after the first validated epoch before the run ended"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == -signal.SIGKILL
