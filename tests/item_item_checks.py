"""Checks shared by the ItemKNN and EASE tests: a tiny CLI run and its export's parity."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from conftest import REPO
from conftest import run_python
from tfrec_music import training

# What the fresh process does: load the export, serve every test user by id,
# every cold user from their history, an unknown id, and one known user twice.
_SERVE = """
import json, sys, numpy as np, tfrec_music, tensorflow as tf
request = json.load(open({request!r}))
model = tf.saved_model.load({export!r})
serve, recommend = model.signatures['serving_default'], model.signatures['recommend']
def padded(rows, fill):
  width = max([len(r) for r in rows] + [1])
  return [list(r) + [fill] * (width - len(r)) for r in rows]
out = {{"test": [], "cold": []}}
users = request["test_users"]
for start in range(0, len(users), 128):
  o = serve(user_id=tf.constant(users[start:start + 128]))
  out["test"] += o["item_ids"].numpy()[:, :10].astype(str).tolist()
  if start == 0:
    out["first_scores"] = o["scores"].numpy()[0].tolist()
    out["first_ids"] = o["item_ids"].numpy()[0].astype(str).tolist()
histories, weights = request["cold_histories"], request["cold_weights"]
if histories:
  hist = tf.constant(padded(histories, ""))
  o = recommend(user_id=tf.constant(request["cold_users"]), history=hist,
                weights=tf.constant(padded(weights, 0.0), tf.float32), exclude=hist)
  out["cold"] = o["item_ids"].numpy()[:, :10].astype(str).tolist()
o = serve(user_id=tf.constant(["nobody", users[0]]))
out["unknown"] = {{"fallback": o["fallback"].numpy().tolist(),
                  "ids": o["item_ids"].numpy()[0].astype(str).tolist()}}
first = request["first_history"]
o = recommend(user_id=tf.constant(["someone new"]), history=tf.constant([first + ["", first[0]]]),
              weights=tf.constant([request["first_weights"] + [0.0, 0.0]], tf.float32),
              exclude=tf.constant([first]))
out["recommend_first"] = o["item_ids"].numpy()[0].astype(str).tolist()
print(json.dumps(out))
"""


def tiny_run(model: str, root) -> tuple:
  """Runs `python -m trainer.task --model <model> --preset tiny`; returns (job dir, version dir, stdout)."""
  job, export = root / "job", root / "export"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "trainer.task", "--model", model, "--preset", "tiny",
                         "--job-dir", str(job), "--export-dir", str(export)],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return job, export / model / "1", proc.stdout


def check_cli_run(run: tuple, name: str, other: str) -> dict:
  """The tiny run chose `name` on validation, beat popularity and printed the baselines."""
  job, version, stdout = run
  metrics = json.loads((job / "metrics.json").read_text())
  assert set(metrics) == {"model", "popularity", other, "oracle"}
  model = metrics["model"]
  grid = {k: v for k, v in model.items() if k.startswith(f"select/{name}=")}
  chosen = model[f"select/chosen_{name}"]
  assert grid[f"select/{name}={chosen:g}/valid/hr@10"] == max(grid.values())
  # The selection scored validation as the final evaluation does.
  assert abs(grid[f"select/{name}={chosen:g}/valid/hr@10"] - model["valid/all/hr@10"]) < 1e-9
  assert model["test/all/hr@10"] > 2 * metrics["popularity"]["test/all/hr@10"]
  assert any(k.startswith("select/chosen_") for k in metrics[other])
  rows = {line.split()[0] for line in stdout.splitlines() if line.strip()}
  assert {"model", "popularity", other, "oracle"} <= rows
  card = json.loads((version / "model_card.json").read_text())
  assert card["fit"][name] == chosen
  return metrics


def _hits(lists, targets):
  ranks = [row.index(t) + 1 if t in row else 0 for row, t in zip(lists, targets)]
  hr = float(np.mean([r > 0 for r in ranks]))
  ndcg = float(np.mean([1 / np.log2(r + 1) if r else 0.0 for r in ranks]))
  return hr, ndcg


def check_export_reproduces_metrics(job, version, tmp_path) -> None:
  """Serves every test user (by id) and cold user (by history) from the export in a fresh
  process and checks metrics.json's test HR@10 / NDCG@10 and cold-user HR@10 to 4 digits."""
  config = json.loads((job / "config.json").read_text())
  _, _, _, prepared, _, _ = training.load_and_prepare(
      training.RunConfig(**{**config["run"], "job_dir": str(tmp_path / "again")}))
  metrics = json.loads((version / "metrics.json").read_text())
  assert metrics == json.loads((job / "metrics.json").read_text())
  model = metrics["model"]
  test_users = prepared.test["user_id"].astype(str).tolist()
  cold = prepared.cold_user_history.groupby("user_id", sort=False)
  cold_users = prepared.cold_user_test["user_id"].astype(str).tolist()
  first = pd.concat([prepared.train, prepared.valid])
  first = first[first["user_id"] == test_users[0]]
  request = {"test_users": test_users, "cold_users": cold_users,
             "cold_histories": [cold.get_group(u)["item_id"].astype(str).tolist()
                                for u in cold_users],
             "cold_weights": [cold.get_group(u)["weight"].astype(float).tolist()
                              for u in cold_users],
             "first_history": first["item_id"].astype(str).tolist(),
             "first_weights": first["weight"].astype(float).tolist()}
  path = tmp_path / "request.json"
  path.write_text(json.dumps(request))
  served = json.loads(run_python(_SERVE.format(request=str(path), export=str(version)))
                      .strip().splitlines()[-1])
  hr, ndcg = _hits(served["test"], prepared.test["item_id"].astype(str).tolist())
  assert round(hr, 4) == round(model["test/all/hr@10"], 4)
  assert round(ndcg, 4) == round(model["test/all/ndcg@10"], 4)
  if cold_users:
    cold_hr, _ = _hits(served["cold"], prepared.cold_user_test["item_id"].astype(str).tolist())
    assert round(cold_hr, 4) == round(model["test/cold_user/hr@10"], 4)
  # Unknown ids get the popularity ranking and say so; known ones do not.
  assert served["unknown"]["fallback"] == [True, False]
  popular = prepared.items["item_id"].to_numpy()[np.lexsort(
      (np.arange(prepared.n_items), -prepared.item_train_counts))]
  assert served["unknown"]["ids"] == popular[:len(served["unknown"]["ids"])].tolist()
  # A new user sending a known user's history (duplicated, padded) gets that user's answer,
  # their own tracks excluded.
  assert served["recommend_first"] == served["first_ids"]
  assert not set(served["first_ids"]) & set(request["first_history"])
  assert all(np.diff(served["first_scores"]) <= 0)
