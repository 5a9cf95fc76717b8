"""ALS: exact solves vs a numpy reference, CV, batch outputs, export round trip, CLI."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import REPO
from conftest import run_python
from tfrec_music import training
from tfrec_music.models.als import ALSConfig
from tfrec_music.models.als import ALSFamily
from tfrec_music.models.als import ALSParams
from tfrec_music.models.als import ALSSolver
from tfrec_music.models.als import confidence
from tfrec_music.models.als import fit_als
from tfrec_music.models.als import fold_in_numpy
from tfrec_music.models.als import kfold_assignment


def _sparse(n_users=40, n_items=30, n=500, seed=0):
  rng = np.random.default_rng(seed)
  key = np.unique(rng.integers(0, n_users, n) * n_items + rng.integers(0, n_items, n))
  users, items = key // n_items, key % n_items
  return users, items, rng.integers(1, 6, len(users)).astype(np.float64), n_users, n_items


def _ridge_rows(users, items, values, n_users, item_factors, params):
  """Numpy reference: each user's ridge solution given the item factors."""
  k = item_factors.shape[1]
  out = np.zeros((n_users, k))
  for u in range(n_users):
    m = users == u
    if not m.any():
      continue
    y = item_factors[items[m]].astype(np.float64)
    lam = params.reg * (m.sum() if params.reg_scaled else 1.0)
    if params.implicit:
      c = confidence(values[m], params.alpha, params.weight)
      a = item_factors.T.astype(np.float64) @ item_factors + (y.T * (c - 1)) @ y
      b = y.T @ c
    else:
      a, b = y.T @ y, y.T @ values[m]
    out[u] = np.linalg.solve(a + lam * np.eye(k), b)
  return out


def _dense_objective(x, y, users, items, values, params):
  """Numpy reference of the training objective over the dense matrix."""
  scores = x @ y.T
  nu, ni = scores.shape
  deg_u = np.bincount(users, minlength=nu)
  deg_i = np.bincount(items, minlength=ni)
  if params.implicit:
    conf = np.ones((nu, ni))
    pref = np.zeros((nu, ni))
    conf[users, items] = confidence(values, params.alpha, params.weight)
    pref[users, items] = 1.0
    data = np.sum(conf * (pref - scores) ** 2)
  else:
    data = np.sum((values - scores[users, items]) ** 2)
  wu = deg_u if params.reg_scaled else np.ones(nu)
  wi = deg_i if params.reg_scaled else np.ones(ni)
  return data + params.reg * (np.sum(wu * (x ** 2).sum(1)) + np.sum(wi * (y ** 2).sum(1)))


@pytest.mark.parametrize("feedback", ["explicit", "implicit"])
@pytest.mark.parametrize("reg_scaled", [False, True])
def test_half_step_is_the_closed_form_ridge_solution_and_loss_decreases(feedback, reg_scaled):
  users, items, values, nu, ni = _sparse()
  params = ALSParams(rank=5, reg=0.5, feedback=feedback, alpha=2.0, weight="log1p",
                     reg_scaled=reg_scaled, iterations=6, block_entries=64)
  solver = ALSSolver(users, items, values, nu, ni, params)
  losses = solver.run()
  # Each half-step is an exact minimization, so the objective never rises.
  assert all(b <= a * (1 + 1e-5) for a, b in zip(losses, losses[1:]))
  assert losses[-1] < 0.7 * losses[0]
  x, y = solver.user_factors.numpy(), solver.item_factors.numpy()
  np.testing.assert_allclose(losses[-1], _dense_objective(x, y, users, items, values, params),
                             rtol=1e-4)
  solved, _ = solver._half_step(0, solver.item_factors, solver.user_factors)
  reference = _ridge_rows(users, items, values, nu, y, params)
  np.testing.assert_allclose(solved.numpy(), reference, atol=2e-4, rtol=1e-3)


def test_conjugate_gradient_agrees_with_cholesky():
  users, items, values, nu, ni = _sparse(seed=1)
  base = ALSParams(rank=6, reg=1.0, feedback="implicit", alpha=3.0, iterations=5)
  exact = ALSSolver(users, items, values, nu, ni, base)
  exact.run()
  # CG solves a k x k system exactly in k steps (up to rounding).
  cg = ALSSolver(users, items, values, nu, ni, dataclasses.replace(base, solver="cg", cg_steps=6))
  cg.run()
  np.testing.assert_allclose(cg.losses, exact.losses, rtol=1e-3)
  np.testing.assert_allclose(cg.user_factors.numpy() @ cg.item_factors.numpy().T,
                             exact.user_factors.numpy() @ exact.item_factors.numpy().T, atol=5e-3)
  # Few warm-started steps still decrease the loss.
  cheap = ALSSolver(users, items, values, nu, ni, dataclasses.replace(base, solver="cg",
                                                                      cg_steps=2))
  losses = cheap.run()
  assert losses[-1] < losses[0] and losses[-1] < 1.1 * exact.losses[-1]


def test_seeded_initialization_is_reproducible():
  users, items, values, nu, ni = _sparse()
  params = ALSParams(rank=4, reg=0.3, feedback="explicit", iterations=3, seed=7)
  a = ALSSolver(users, items, values, nu, ni, params)
  b = ALSSolver(users, items, values, nu, ni, params)
  assert a.run() == b.run()
  c = ALSSolver(users, items, values, nu, ni, dataclasses.replace(params, seed=8))
  assert c.run() != a.losses


def test_fold_in_of_a_training_user_is_one_exact_solve():
  users, items, values, nu, ni = _sparse(seed=2)
  for feedback in ("implicit", "explicit"):
    params = ALSParams(rank=4, reg=0.7, feedback=feedback, alpha=1.5, iterations=4)
    fit = fit_als(users, items, values, nu, ni, params, center="none")
    histories = [(items[users == u], values[users == u]) for u in range(5)]
    vectors, _ = fold_in_numpy(fit, histories)
    reference = _ridge_rows(users, items, values, nu, fit.item_factors, params)[:5]
    np.testing.assert_allclose(vectors, reference, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "`rank` should be a positive integer"),
    ({"reg": -1.0}, "`reg` should be a positive number"),
    ({"feedback": "clicks"}, "`feedback` should be one of"),
    ({"weight": "sqrt"}, "`weight` should be one of"),
])
def test_bad_solver_parameters_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ALSParams(**kwargs)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="`item_index` should be in"):
    ALSSolver([0], [5], [1.0], 1, 3, ALSParams(rank=2))
  with pytest.raises(ValueError, match="non-negative"):
    ALSSolver([0], [0], [-1.0], 1, 1, ALSParams(rank=2))
  with pytest.raises(ValueError, match="`ranks` should be positive integers"):
    ALSConfig(ranks=(0,))
  with pytest.raises(ValueError, match="Unknown hyperparameter"):
    ALSFamily.make_config("tiny", {"rank_grid": 3})


def test_kfold_assignment_is_stratified_by_user():
  rng = np.random.default_rng(0)
  users = np.repeat(np.arange(50), rng.integers(1, 12, 50))
  folds = kfold_assignment(users, 3, seed=0)
  counts = np.bincount(users)
  assert np.all(folds[np.isin(users, np.flatnonzero(counts == 1))] == -1)
  for u in np.flatnonzero(counts >= 3):
    # every fold holds out some but never all of a user's rows
    assert set(folds[users == u]) == {0, 1, 2}
  sizes = np.bincount(folds[folds >= 0])
  assert sizes.max() - sizes.min() <= 0.2 * sizes.mean()
  np.testing.assert_array_equal(folds, kfold_assignment(users, 3, seed=0))


# --------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def implicit_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("als")
  config = training.RunConfig(model="als", preset="tiny", job_dir=str(root / "job"),
                              export_dir=str(root / "export"))
  result = training.run(config)
  return result


def test_implicit_run_beats_popularity_and_records_cv(implicit_run):
  metrics = implicit_run.metrics
  model = metrics["model"]
  assert model["test/all/hr@10"] > 2 * metrics["popularity"]["test/all/hr@10"]
  assert model["test/all/hr@10"] <= metrics["oracle"]["test/all/hr@10"] + 0.05
  assert model["test/cold_user/hr@10"] > metrics["popularity"]["test/cold_user/hr@10"]
  config = implicit_run.model_config
  grid = {k: v for k, v in model.items() if k.startswith("cv/rank=")}
  assert len(grid) == len(config.ranks) * len(config.regs)
  best = max(grid, key=grid.get)
  assert best == f"cv/rank={model['cv/chosen_rank']}/reg={model['cv/chosen_reg']:g}/hr@10"
  written = json.load(open(os.path.join(implicit_run.job_dir, "metrics.json")))
  assert written["model"]["cv/chosen_rank"] == model["cv/chosen_rank"]


def test_loss_is_logged_to_tensorboard(implicit_run):
  log_dir = os.path.join(implicit_run.job_dir, "logs", "als", "train")
  losses = []
  for name in os.listdir(log_dir):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
      for value in event.summary.value:
        if value.tag == "loss":
          losses.append((event.step, float(tf.make_ndarray(value.tensor))))
  config = implicit_run.model_config
  assert [s for s, _ in sorted(losses)] == list(range(1, config.iterations + 1))
  values = [v for _, v in sorted(losses)]
  assert all(b <= a * (1 + 1e-5) for a, b in zip(values, values[1:]))


def _run_prepared(run, job_dir):
  """The prepared data of a finished run (rebuilt from its config.json)."""
  config = json.load(open(os.path.join(run.job_dir, "config.json")))
  return training.load_and_prepare(training.RunConfig(**{**config["run"], "job_dir": job_dir}))


def test_batch_recommendations_for_all_users_and_items(implicit_run):
  rec_dir = os.path.join(implicit_run.job_dir, "recommendations")
  per_user = pd.read_parquet(os.path.join(rec_dir, "user_top_items.parquet"))
  per_item = pd.read_parquet(os.path.join(rec_dir, "item_top_users.parquet"))
  n = implicit_run.model_config.top_n
  assert (per_user.groupby("user_id").size() == n).all()
  assert set(per_user["rank"]) == set(range(1, n + 1))
  # ranks follow scores, and no user is recommended a track they trained on
  for _, group in per_user.groupby("user_id"):
    assert np.all(np.diff(group.sort_values("rank")["score"].to_numpy()) <= 1e-6)
  _, _, _, prepared, _, _ = _run_prepared(implicit_run, str(implicit_run.job_dir) + "_again")
  trained = set(zip(prepared.train["user_id"], prepared.train["item_id"]))
  assert not trained & set(zip(per_user["user_id"], per_user["item_id"]))
  assert not trained & set(zip(per_item["user_id"], per_item["item_id"]))
  card = json.load(open(os.path.join(implicit_run.export_path, "model_card.json")))
  assert card["fit"]["rank"] == implicit_run.metrics["model"]["cv/chosen_rank"]
  assert per_item.groupby("item_id").size().max() == n
  assert {"item_id", "user_id", "rank", "score"} <= set(per_item.columns)


def test_export_round_trip_in_a_fresh_process(implicit_run, tmp_path):
  export = implicit_run.export_path
  # The reference: the same model rebuilt in memory from the same run.
  family_cls, config, _, prepared, _, _ = _run_prepared(implicit_run, str(tmp_path))
  family = family_cls(config, prepared)
  family.fit(str(tmp_path))
  fit = family.fit_result
  _, vectors, _ = family.user_vectors("test")
  users = list(family.user_ids[:4])
  k = min(config.top_k, prepared.n_items)
  seen = family.test_history().groupby("user_id")["item_id"].apply(set)
  expected = []
  for u in users:
    scores = vectors[family.user_index.get_loc(u)] @ fit.item_factors.T
    order = [prepared.item_ids[i] for i in np.argsort(-scores, kind="stable")
             if prepared.item_ids[i] not in seen[u]]
    expected.append(order[:k])
  history = prepared.train[prepared.train["user_id"] == users[0]]
  hist_items = history["item_id"].tolist()
  hist_weights = history["weight"].astype(float).tolist()
  folded, _ = fold_in_numpy(fit, [(prepared.item_index(hist_items), np.asarray(hist_weights))])
  out = run_python(f"""
import json, numpy as np, tfrec_music, tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for the scann/ variant
exact = tf.saved_model.load({export!r})
approx = tf.saved_model.load({export!r} + '/scann')
users = tf.constant({json.dumps(users)})
e = exact.signatures['serving_default'](user_id=users)
a = approx.signatures['serving_default'](user_id=users)
recall = np.mean([len(set(x[:10]) & set(y[:10])) / 10 for x, y in
                  zip(e['item_ids'].numpy(), a['item_ids'].numpy())])
hist = tf.constant([{json.dumps(hist_items + [''])}])
weights = tf.constant([{json.dumps(hist_weights + [0.0])}], tf.float32)
f = exact.signatures['fold_in'](history=hist, weights=weights)
r = exact.signatures['recommend'](user_id=tf.constant(['new-user']), history=hist,
                                  weights=weights, exclude=hist)
unknown = exact.signatures['serving_default'](user_id=tf.constant(['nobody']))
print(json.dumps({{"exact": e['item_ids'].numpy().astype(str).tolist(), "recall": float(recall),
                  "vector": f['user_vector'].numpy()[0].tolist(),
                  "fold_ids": f['item_ids'].numpy()[0].astype(str).tolist(),
                  "recommend_ids": r['item_ids'].numpy()[0].astype(str).tolist(),
                  "unknown_fallback": bool(unknown['fallback'].numpy()[0])}}))
""")
  result = json.loads(out.strip().splitlines()[-1])
  assert result["exact"] == expected                   # same top-k as in memory
  assert result["recall"] >= 0.9                       # ScaNN vs exact, recall@10
  np.testing.assert_allclose(result["vector"], folded[0], atol=1e-4)
  assert result["fold_ids"] == result["recommend_ids"]
  assert not set(result["fold_ids"]) & set(hist_items)
  assert result["unknown_fallback"]


def test_export_serves_the_model_scored_on_the_test_split(implicit_run, tmp_path):
  # Every test user queried by id alone through `serving_default`, in a fresh
  # process: the export's HR@10 and NDCG@10 are the ones metrics.json reports
  # (NDCG too: on the tiny data the training vectors happen to give the same
  # HR@10 as the refolded ones the test split is scored with, not the same NDCG).
  config = os.path.join(implicit_run.job_dir, "config.json")
  out = run_python(f"""
import json, tfrec_music
from tfrec_music import training
from tfrec_music.evaluation.export_check import export_metrics
run = {{**json.load(open({config!r}))["run"], "job_dir": {str(tmp_path)!r}}}
prepared = training.load_and_prepare(training.RunConfig(**run))[3]
metrics = export_metrics({implicit_run.export_path!r}, prepared)
print(json.dumps({{"users": len(prepared.test), **metrics}}))
""")
  served = json.loads(out.strip().splitlines()[-1])
  scored = json.load(open(os.path.join(implicit_run.job_dir, "metrics.json")))["model"]
  assert served["users"] > 100
  for key in ("test/all/hr@10", "test/all/ndcg@10"):
    assert round(served[key], 4) == round(scored[key], 4), key


def test_explicit_feedback_beats_the_global_mean_and_serves_ratings(tmp_path):
  root = tmp_path
  result = training.run(training.RunConfig(
      model="als", preset="tiny", job_dir=str(root / "job"), export_dir=str(root / "export"),
      hparams={"feedback": "explicit", "ranks": [4], "regs": [3.0, 10.0], "top_n": 3}))
  metrics = result.metrics
  assert metrics["model"]["test/all/rmse"] < metrics["global_mean"]["test/all/rmse"]
  assert metrics["model"]["cv/folds"] == 2 and "cv/rank=4/reg=10/rmse" in metrics["model"]
  prepared_config = json.load(open(os.path.join(result.job_dir, "config.json")))["prepare"]
  assert prepared_config["split"] == "ratio" and prepared_config["cold_user_share"] == 0.0
  # The exported scores are the predicted ratings (alpha + b_u + b_i + x.y).
  family_cls, config, _, prepared, _, _ = training.load_and_prepare(training.RunConfig(
      model="als", preset="tiny", job_dir=str(root / "job2"),
      hparams={"feedback": "explicit", "ranks": [4], "regs": [3.0, 10.0], "top_n": 0}))
  family = family_cls(config, prepared)
  family.fit(str(root / "job2"))
  user = str(family.user_ids[0])
  out = run_python(f"""
import json, tensorflow as tf, tfrec_music
m = tf.saved_model.load({result.export_path!r})
o = m.signatures['serving_default'](user_id=tf.constant([{user!r}]))
print(json.dumps({{"ids": o['item_ids'].numpy()[0].astype(str).tolist()[:5],
                  "scores": o['scores'].numpy()[0].tolist()[:5]}}))
""")
  served = json.loads(out.strip().splitlines()[-1])
  raw = family.predict([user] * 5, served["ids"])
  np.testing.assert_allclose(np.clip(served["scores"], *family.rating_range), raw, atol=1e-3)


def test_flags_parse_into_config_fields():
  parser = argparse.ArgumentParser()
  ALSFamily.add_arguments(parser.add_argument_group("als"))
  args = parser.parse_args(["--rank", "8,16", "--reg", "0.5", "--feedback", "explicit",
                            "--reg-scaled"])
  overrides = {k: v for k, v in vars(args).items() if v is not None}
  config = ALSFamily.make_config("tiny", overrides)
  assert config.ranks == (8, 16) and config.regs == (0.5,) and config.reg_scaled
  assert config.feedback == "explicit"


def test_cli_rejects_a_bad_rank(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  bad = subprocess.run([sys.executable, "-m", "trainer.task", "--model", "als", "--preset",
                        "tiny", "--set", "ranks=[0]", "--no-export", "--job-dir",
                        str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=300)
  assert bad.returncode == 2 and "`ranks` should be positive integers" in bad.stderr
