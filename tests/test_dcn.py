"""DCN ranking: config checks, cross structures, training quality, export round trip, bad input."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import REPO
from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.models.dcn import DCNConfig
from tfrec_music.models.dcn import DCNFamily
from tfrec_music.models.dcn import DCNRanker
from tfrec_music.models.dcn import RankingFeatureSpec
from tfrec_music.models.dcn import raw_signature
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def tiny_prepared():
  catalogue = synthetic.generate("tiny", seed=0)
  return prepare(catalogue.tables, PrepareConfig(**DCNFamily.prepare_overrides))


@pytest.fixture(scope="module")
def trained(tiny_prepared, tmp_path_factory):
  config = DCNFamily.make_config("tiny", {"epochs": 6})
  family = DCNFamily(config, tiny_prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  export = str(tmp_path_factory.mktemp("export") / "1")
  signatures = family.save(export)
  return family, export, signatures


@pytest.mark.parametrize("field,value", [("labels", "stars"), ("structure", "mixed"),
                                         ("cross_layers", -1), ("embedding_dim", 0),
                                         ("deep_layers", (0,))])
def test_config_rejects_bad_values_naming_the_field(field, value):
  with pytest.raises(ValueError, match=f"`{field}`"):
    DCNConfig(**{field: value})


def test_config_needs_cross_or_deep_layers():
  with pytest.raises(ValueError, match="cross layers or deep layers"):
    DCNConfig(cross_layers=0, deep_layers=())


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
@pytest.mark.parametrize("projection_dim", [0, 3])
def test_ranker_structures_and_low_rank_cross(structure, projection_dim):
  config = DCNConfig(structure=structure, projection_dim=projection_dim, cross_layers=2,
                     deep_layers=(8,), embedding_dim=4)
  ranker = DCNRanker({"user_id": 5, "item_id": 7}, 2, config, output_bias=3.0)
  features = {"user_id": tf.constant([0, 1, 4]), "item_id": tf.constant([6, 2, 1]),
              "numeric": tf.zeros([3, 2])}
  out = ranker(features)
  assert out.shape == (3,)
  # x0 has 4 + 4 + 2 = 10 features. Full rank: W is [10, 10]; low rank: U [10, 3], V [3, 10].
  cross_kernels = sorted(tuple(w.shape) for w in ranker.cross[0].trainable_weights
                         if len(w.shape) == 2)
  assert cross_kernels == ([(3, 10), (10, 3)] if projection_dim else [(10, 10)])
  # The deep network reads the cross output (stacked) or x0 beside it (parallel):
  # the output layer sees 8 features (stacked) or 10 + 8 (parallel).
  assert ranker.out.kernel.shape[0] == (8 if structure == "stacked" else 18)


def test_explicit_beats_global_mean_and_reports_all_scorers(trained):
  family, _, _ = trained
  metrics = family.evaluate(None)
  assert set(metrics) == {"model", "global_mean", "biased", "biased_mf"}
  for name in metrics:
    for key in ("test/all/rmse", "test/all/mse", "test/all/mae", "valid/all/rmse",
                "test/cold/rmse", "test/warm/rmse"):
      assert key in metrics[name], (name, key)
  model = metrics["model"]
  assert model["test/all/rmse"] < 0.97 * metrics["global_mean"]["test/all/rmse"]
  assert np.isclose(model["test/all/rmse"] ** 2, model["test/all/mse"])
  assert model["test/all/count"] == len(family.prepared.test)
  summary = family.fit_summary
  best = min(h["valid_loss"] for h in summary["history"])
  assert summary["best_valid_loss"] == best and summary["examples_per_second"] > 0


def test_predictions_stay_in_the_rating_range(trained):
  family, _, _ = trained
  test = family.prepared.test
  pred = family.predict(test["user_id"], test["item_id"])
  low, high = family.rating_range
  assert pred.min() >= low and pred.max() <= high


def test_export_round_trip_in_fresh_process(trained):
  family, export, signatures = trained
  assert set(signatures) == {"serving_default", "score_ids"}
  test = family.prepared.test.head(50)
  expected = family.predict(test["user_id"], test["item_id"])
  catalogue = family.raw_items
  rows = family.prepared.item_index(test["item_id"])
  raw = {"user_id": test["user_id"].astype(str).tolist(),
         "country": family.prepared.users.set_index("user_id")["country"]
         .reindex(test["user_id"]).astype(str).tolist()}
  for column, values in catalogue.items():
    raw[column] = [v if isinstance(v, str) else float(v) for v in values[rows].tolist()]
  payload = os.path.join(os.path.dirname(export), "raw.json")
  with open(payload, "w") as f:
    json.dump(raw, f)
  out = run_python(f"""
import json, numpy as np, tfrec_music, tensorflow as tf
raw = json.load(open({payload!r}))
m = tf.saved_model.load({export!r})
sig = m.signatures["serving_default"]
specs = sig.structured_input_signature[1]
inputs = {{k: tf.constant(np.asarray(v, dtype=object if specs[k].dtype == tf.string else np.float32),
                          dtype=specs[k].dtype) for k, v in raw.items()}}
a = sig(**inputs)["rating"].numpy()
b = m.signatures["score_ids"](user_id=inputs["user_id"], item_id=inputs["item_id"])["rating"].numpy()
print(json.dumps({{"a": a.tolist(), "b": b.tolist()}}))
""")
  got = json.loads(out.strip().splitlines()[-1])
  np.testing.assert_allclose(got["a"], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["b"], expected, rtol=1e-5, atol=1e-5)


def test_serving_unknown_ids_empty_features_and_empty_batch(trained):
  family, export, _ = trained
  loaded = tf.saved_model.load(export)
  sig = loaded.signatures["serving_default"]
  specs = raw_signature(family.spec)
  blank = {k: tf.constant([""] * 2) if s.dtype == tf.string else tf.constant([np.nan] * 2, tf.float32)
           for k, s in specs.items()}
  blank["user_id"] = tf.constant(["nobody", ""])
  blank["item_id"] = tf.constant(["no-such-track", ""])
  rating = sig(**blank)["rating"].numpy()
  low, high = family.rating_range
  assert rating.shape == (2,) and np.all(np.isfinite(rating))
  assert np.all((rating >= low) & (rating <= high))
  # An unknown user and track through `score_ids` read the "missing" catalogue row:
  # the same as sending empty features with the same unknown ids.
  by_ids = loaded.signatures["score_ids"](user_id=tf.constant(["nobody"]),
                                          item_id=tf.constant(["no-such-track"]))["rating"]
  np.testing.assert_allclose(by_ids.numpy(), rating[:1], rtol=1e-6)
  # A known track with an unknown user: its own features, the OOV user.
  known_item = family.prepared.item_ids[0]
  mixed = loaded.signatures["score_ids"](user_id=tf.constant(["nobody"]),
                                         item_id=tf.constant([known_item]))["rating"].numpy()
  assert np.isfinite(mixed).all()
  empty = {k: tf.constant([], s.dtype) for k, s in specs.items()}
  assert sig(**empty)["rating"].shape == (0,)
  with pytest.raises((TypeError, ValueError)):
    sig(user_id=tf.constant(["u1"]))  # missing inputs: rejected, not guessed


def test_implicit_labels_give_auc_and_log_loss(tiny_prepared, tmp_path):
  config = DCNFamily.make_config("tiny", {"labels": "implicit", "negatives": 2, "epochs": 3})
  family = DCNFamily(config, tiny_prepared)
  family.fit(str(tmp_path))
  metrics = family.evaluate(None)["model"]
  assert metrics["test/all/auc"] > 0.6
  assert 0 < metrics["test/all/log_loss"] < np.log(2) + 0.2
  # Positives and negatives: 1 + 2 rows per held-out interaction.
  assert metrics["test/all/count"] == 3 * len(tiny_prepared.test)
  probability = family.predict(tiny_prepared.test["user_id"][:5], tiny_prepared.test["item_id"][:5])
  assert np.all((probability > 0) & (probability < 1))


def test_explicit_labels_need_a_rating_column(tiny_prepared):
  import dataclasses
  no_rating = dataclasses.replace(tiny_prepared, train=tiny_prepared.train.drop(columns="rating"))
  with pytest.raises(ValueError, match="--labels implicit"):
    DCNFamily(DCNFamily.make_config("tiny", {}), no_rating)


@pytest.mark.slow
def test_cli_trains_evaluates_and_exports(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--model", "dcn", "--preset", "tiny",
       "--cross-layers", "1", "--projection-dim", "4", "--structure", "parallel",
       "--deep-layers", "16", "--job-dir", str(tmp_path / "job"),
       "--export-dir", str(tmp_path / "export")],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "all/rmse" in proc.stdout and "biased_mf" in proc.stdout
  metrics = json.load(open(tmp_path / "export" / "dcn" / "1" / "metrics.json"))
  assert metrics["model"]["test/all/rmse"] > 0
  config = json.load(open(tmp_path / "job" / "config.json"))
  assert config["model"]["structure"] == "parallel" and config["prepare"]["split"] == "ratio"


def test_cli_parser_has_the_dcn_flags():
  from trainer.task import build_parser
  from trainer.task import resolve_hparams
  args, _ = build_parser("dcn").parse_known_args(
      ["--model", "dcn", "--structure", "parallel", "--deep-layers", "16,8", "--labels",
       "implicit"])
  hparams = resolve_hparams(args)
  assert hparams["structure"] == "parallel" and hparams["labels"] == "implicit"
  assert DCNFamily.make_config("tiny", hparams).deep_layers == (16, 8)


def test_search_space_declares_cross_projection_deep_and_learning_rate():
  import keras_tuner as kt
  hp = kt.HyperParameters()
  DCNFamily.search_space(hp)
  assert {"cross_layers", "projection_dim", "deep_depth", "deep_width",
          "learning_rate"} <= set(hp.values)
  seen_deep = set()
  for depth in (0, 1, 2):
    for width in (32, 128):
      hp.values.update({"deep_depth": depth, "deep_width": width, "projection_dim": 8})
      config = DCNFamily.make_config("tiny", DCNFamily.search_space(hp))
      assert len(config.deep_layers) == depth and config.projection_dim == 8
      seen_deep.add(config.deep_layers)
  assert (128, 64) in seen_deep and () in seen_deep


def test_validation_metrics_read_the_validation_split_only(trained):
  family, _, _ = trained
  metrics = family.validation_metrics()
  assert metrics and all(k.startswith("valid/") for k in metrics)
  key, direction = DCNFamily.objective
  assert direction == "min"
  assert metrics[key] == pytest.approx(family.evaluate(None)["model"][key])
  assert metrics["valid/all/count"] == len(family.prepared.valid)


def test_split_buckets_are_stable_and_near_80_10_10():
  from tfrec_music.prepare.hashed_split import split_buckets
  users = np.array([f"u{k % 97}" for k in range(20000)])
  items = np.array([f"t{k}" for k in range(20000)])
  buckets = split_buckets(users, items)
  order = np.random.default_rng(0).permutation(len(users))
  np.testing.assert_array_equal(split_buckets(users[order], items[order]), buckets[order])
  shares = [np.mean(buckets < 80), np.mean((buckets >= 80) & (buckets < 90)),
            np.mean(buckets >= 90)]
  np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.015)


def test_stream_train_reads_shards_and_learns(tmp_path):
  from tfrec_music.models.dcn import stream_train
  folder = str(tmp_path / "shards")
  synthetic.write_large(folder, preset="tiny", shard_rows=1500)
  config = DCNFamily.make_config("tiny", {"epochs": 3, "learning_rate": 0.01,
                                         "early_stopping_patience": 5})
  summary = stream_train(folder, config, read_rows=700)
  frame = pd.concat([pd.read_parquet(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
                     if n.startswith("interactions-")])
  assert sum(summary["rows"].values()) == len(frame)
  assert summary["examples_per_second"] > 0 and len(summary["history"]) == 3
  # The network starts at the training mean; after training it should beat
  # predicting that mean on the held-out rows.
  from tfrec_music.prepare.hashed_split import split_buckets
  bucket = split_buckets(frame["user_id"].to_numpy(), frame["item_id"].to_numpy())
  mean = frame["rating"].to_numpy()[bucket < 80].mean()
  test = frame["rating"].to_numpy()[bucket >= 90]
  assert summary["test/all/rmse"] < np.sqrt(np.mean((test - mean) ** 2))


def test_objective_follows_the_labels():
  assert DCNFamily.objective_for(DCNConfig()) == ("valid/all/rmse", "min")
  assert DCNFamily.objective_for(DCNConfig(labels="implicit")) == ("valid/all/auc", "max")


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_and_finishes(tmp_path):
  """Issue 9 for the DCN: a SIGKILLed run rerun with the same command resumes, not restarts.

  Explicit labels here; the implicit DCN's resume runs in the cascade's kill test
  (`test_cascade.py`: its re-ranker is an implicit DCN, killed mid-epoch and resumed).
  """
  labels = "explicit"
  import subprocess
  import sys
  from conftest import kill_mid_training
  job, export = str(tmp_path / "job"), str(tmp_path / "export")
  # Small batches and many epochs so training is still running when the kill lands.
  args = [sys.executable, "-m", "trainer.task", "--model", "dcn", "--preset", "tiny",
          "--labels", labels, "--negatives", "1", "--batch-size", "64", "--epochs", "8",
          "--set", "early_stopping_patience=100", "--checkpoint-every", "5",
          "--verbosity", "INFO", "--job-dir", job, "--export-dir", export]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  kill_mid_training(args, job, os.path.join(job, "backup", "dcn_validation",
                                            "validation_state.json"), env)
  assert not os.path.exists(os.path.join(export, "dcn"))

  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  card = json.load(open(os.path.join(export, "dcn", "1", "model_card.json")))
  fit = card["fit"]
  # Resumed from the last 5-step checkpoint, past the first epoch (validated before the kill).
  assert fit["resumed_from_step"] > fit["steps_per_epoch"], fit
  assert fit["resumed_from_step"] % 5 == 0, fit
  assert 1 <= fit["resumed_from_epoch"] < 8, fit
  assert [h["epoch"] for h in fit["history"]] == list(range(1, 9))
  assert "Resuming from the checkpoint at step" in second.stderr
  assert not os.path.exists(os.path.join(job, "backup", "dcn"))  # finished: backup gone
  print(f"DCN {labels} resume evidence: killed after epoch {fit['resumed_from_epoch']} was "
        f"validated; resumed at step {fit['resumed_from_step']} "
        f"({fit['steps_per_epoch']} steps/epoch); finished {len(fit['history'])} epochs")


@pytest.mark.slow
def test_cli_stream_trains_from_shards_and_exports_the_dcn_serving_contract(tmp_path):
  """`python -m trainer.task --model dcn --data parquet --data-dir DIR --stream`.

  Issue 4: a DCN streamed from shards is exported like the in-memory one, reloadable.
  """
  import subprocess
  import sys
  folder = str(tmp_path / "shards")
  synthetic.write_large(folder, preset="tiny", shard_rows=1500)
  proc = subprocess.run(
      [sys.executable, "-m", "trainer.task", "--model", "dcn", "--preset", "tiny", "--data",
       "parquet", "--data-dir", folder, "--stream", "--epochs", "2", "--checkpoint-every", "4",
       "--job-dir", str(tmp_path / "job"), "--export-dir", str(tmp_path / "export")],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  export = str(tmp_path / "export" / "dcn" / "1")
  metrics = json.load(open(os.path.join(export, "metrics.json")))
  model = metrics["model"]
  assert model["test/all/rmse"] < metrics["global_mean"]["test/all/rmse"]
  card = json.load(open(os.path.join(export, "model_card.json")))
  fit = card["fit"]
  assert fit["examples_per_second"] > 0 and fit["epochs_run"] == 2
  assert set(card["signatures"]) == {"serving_default", "score_ids"}
  assert json.load(open(tmp_path / "job" / "data_report.json"))
  assert json.load(open(tmp_path / "job" / "metrics.json")) == metrics
  assert not os.path.exists(tmp_path / "job" / "backup" / "dcn_stream")  # finished: no backup
  items = pd.read_parquet(os.path.join(folder, "items.parquet"))
  users = pd.read_parquet(os.path.join(folder, "users.parquet"))
  # The same serving inputs as the in-memory DCN's export on these tables.
  want_inputs = sorted(raw_signature(RankingFeatureSpec.from_tables(items, users)))
  # Fresh process: score the hashed test rows through serving_default from raw
  # features (and score_ids from ids) and recompute the reported test RMSE.
  out = run_python(f"""
import json, os, numpy as np, pandas as pd, tfrec_music, tensorflow as tf
from tfrec_music.prepare.hashed_split import split_buckets
folder = {folder!r}
frame = pd.concat([pd.read_parquet(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
                   if n.startswith("interactions-")])
test = frame[split_buckets(frame["user_id"].to_numpy(), frame["item_id"].to_numpy()) >= 90]
items = pd.read_parquet(os.path.join(folder, "items.parquet")).set_index("item_id")
users = pd.read_parquet(os.path.join(folder, "users.parquet")).set_index("user_id")
m = tf.saved_model.load({export!r})
sig = m.signatures["serving_default"]
specs = sig.structured_input_signature[1]
raw = {{}}
for name, spec in specs.items():
  if name in ("user_id", "item_id"):
    values = test[name].astype(str).to_numpy()
  elif name in users.columns:
    values = users[name].reindex(test["user_id"]).to_numpy()
  else:
    values = items[name].reindex(test["item_id"]).to_numpy()
  if spec.dtype == tf.string:
    values = pd.Series(values).astype(object).where(pd.notna(values), "").astype(str).to_numpy()
  raw[name] = tf.constant(values.astype(object if spec.dtype == tf.string else np.float32),
                          dtype=spec.dtype)
out = sig(**raw)
by_ids = m.signatures["score_ids"](user_id=raw["user_id"], item_id=raw["item_id"])
truth = test["rating"].to_numpy(np.float64)
print(json.dumps({{"inputs": sorted(specs),
                  "rmse": float(np.sqrt(np.mean((out["rating"].numpy() - truth) ** 2))),
                  "ids_rmse": float(np.sqrt(np.mean((by_ids["rating"].numpy() - truth) ** 2))),
                  "fallback": int(out["fallback"].numpy().sum()), "n": len(truth)}}))
""")
  got = json.loads(out.strip().splitlines()[-1])
  assert got["inputs"] == want_inputs
  assert got["n"] == fit["rows"]["test"]
  assert got["rmse"] == pytest.approx(model["test/all/rmse"], rel=1e-4)
  assert got["ids_rmse"] == pytest.approx(model["test/all/rmse"], rel=1e-4)
  print(f"--stream: {fit['examples_per_second']:.0f} examples/s, test RMSE "
        f"{model['test/all/rmse']:.4f} (global mean "
        f"{metrics['global_mean']['test/all/rmse']:.4f}); served from the export "
        f"{got['rmse']:.4f} with {got['fallback']} of {got['n']} rows on the fallback")


