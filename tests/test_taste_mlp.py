"""taste_mlp: leave-one-out centroids, negatives, training quality, tuning space, export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import REPO
from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.export.saved_model import export_versioned
from tfrec_music.models.family import EvalContext
from tfrec_music.models.taste_mlp import TasteMLPFamily
from tfrec_music.models.taste_mlp import TasteMLPModel
from tfrec_music.models.taste_mlp import TasteScorer
from tfrec_music.models.taste_mlp import least_similar_users
from tfrec_music.models.user_similarity import SimilarityIndex
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def catalogue():
  return synthetic.generate("tiny", seed=0)


@pytest.fixture(scope="module")
def prepared(catalogue):
  return prepare(catalogue.tables, PrepareConfig(**TasteMLPFamily.prepare_overrides))


@pytest.fixture(scope="module")
def fitted(prepared, tmp_path_factory):
  family = TasteMLPFamily(TasteMLPFamily.make_config("tiny", {"negatives": "least_similar"}),
                          prepared)
  job = tmp_path_factory.mktemp("job")
  family.fit(str(job))
  return family, job


def test_leave_one_out_centroid_by_hand():
  tracks = np.array([[1, 0], [0, 1], [2, 2]], np.float32)
  # User 0 played tracks 0 and 1: sum (1, 1), count 2.
  model = TasteMLPModel(TasteScorer(4, 0.0), tracks, np.array([[1, 1]], np.float32),
                        np.array([2], np.float32))
  track, taste = model.features({"user": tf.constant([0, 0, 0]), "item": tf.constant([0, 0, 2]),
                                 "leave_out": tf.constant([1.0, 0.0, 0.0])})
  # Positive track 0 left out: ((1, 1) - (1, 0)) / 1 = (0, 1); otherwise (1, 1) / 2.
  np.testing.assert_allclose(taste.numpy(), [[0, 1], [0.5, 0.5], [0.5, 0.5]])
  np.testing.assert_allclose(track.numpy(), tracks[[0, 0, 2]])


def test_least_similar_users_by_hand():
  index = SimilarityIndex(["a", "b", "c"], [[0.0], [1.0], [10.0]])
  # Distances: a-b 1, a-c 10, b-c 9 -> a: c, b: c, c: a.
  assert least_similar_users(index, chunk=2).tolist() == [2, 2, 0]


def test_negatives_come_from_least_similar_user_and_never_own(fitted):
  family, _ = fitted
  rows = family.training_rows(epoch=0)
  neg = rows["label"] == 0
  users, items = rows["user"][neg], rows["item"][neg]
  assert not any(i in family.train_known[int(u)] for u, i in zip(users, items))
  # Only training rows are avoided: a later (validation / test) track is the future.
  prepared = family.prepared
  for user, item in zip(prepared.valid["user_id"][:20], prepared.valid["item_id"]):
    row = family.user_position.get_loc(user)
    index = int(prepared.item_index([item])[0])
    assert index in family.known[row]
    assert (index in family.train_known[row]) == (
        item in set(prepared.train.loc[prepared.train.user_id == user, "item_id"]))
  from_anti = np.mean([i in set(family.user_tracks[int(family.anti[u])].tolist())
                       for u, i in zip(users, items)])
  assert from_anti > 0.9
  pos = ~neg
  assert rows["leave_out"][pos].all() and not rows["leave_out"][neg].any()
  assert neg.sum() == 4 * pos.sum()


def test_tiny_training_beats_popularity_and_logs_curves(fitted, catalogue):
  family, job = fitted
  metrics = family.evaluate(EvalContext(oracle=catalogue.oracle))
  model, popularity = metrics["model"], metrics["popularity"]
  assert model["test/all/auc"] > 0.7
  assert model["test/all/auc"] > popularity["test/all/auc"]
  assert model["test/all/hr@10"] > popularity["test/all/hr@10"]
  assert metrics["oracle"]["test/all/auc"] > 0.8
  assert np.isfinite(model["test/all/log_loss"])
  history = family.fit_summary["history"]
  assert history[-1]["loss"] < history[0]["loss"]
  for run in ("train", "validation"):
    folder = job / "logs" / "taste_mlp" / run
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(folder))
  assert family.validation_metrics()["valid/all/auc"] == pytest.approx(model["valid/all/auc"])


def test_random_negatives_flag(prepared, tmp_path):
  config = TasteMLPFamily.make_config("tiny", {"negatives": "random", "epochs": 1})
  family = TasteMLPFamily(config, prepared)
  assert family.anti is None
  family.fit(str(tmp_path))
  assert family.validation_metrics()["valid/all/auc"] > 0.6
  with pytest.raises(ValueError, match="`negatives` should be 'least_similar' or 'random'"):
    TasteMLPFamily.make_config("tiny", {"negatives": "hard"})


def test_search_space():
  import keras_tuner as kt  # pylint: disable=g-import-not-at-top
  hp = kt.HyperParameters()
  overrides = TasteMLPFamily.search_space(hp)
  assert set(overrides) == {"hidden_size", "weight_decay"}
  assert set(hp.values) == {"hidden_size", "weight_decay"}
  config = TasteMLPFamily.make_config("tiny", overrides)
  assert config.hidden_size in (32, 64, 128) and 1e-7 <= config.weight_decay <= 1e-3
  assert TasteMLPFamily.objective == ("valid/all/auc", "max")


def test_export_round_trip_in_fresh_process(fitted, tmp_path):
  family, _ = fitted
  path = export_versioned(family.save, str(tmp_path / "exp"), family.name)
  users = [str(u) for u in family.user_ids[:4]]
  items = [str(i) for i in family.prepared.item_ids[[0, 5, 9, 11]]]
  expected = family.predict(users, items)
  row = family.user_position.get_indexer([users[0]])[0]
  taste = family.centroids[row:row + 1]
  track = family.track_table[:1]
  out = json.loads(run_python(f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({path!r})
r = m.signatures["serving_default"](user_id=tf.constant({users + ['nobody']!r}),
                                     item_id=tf.constant({items + [items[0]]!r}))
f = m.signatures["score_features"](track=tf.constant({track.tolist()!r}, tf.float32),
                                   taste=tf.constant({taste.tolist()!r}, tf.float32))
print(json.dumps({{"p": r["probability"].numpy().tolist(), "known": r["known"].numpy().tolist(),
                  "f": f["probability"].numpy().tolist()}}))
""").strip().splitlines()[-1])
  np.testing.assert_allclose(out["p"][:4], expected, rtol=1e-4)
  assert out["known"] == [True] * 4 + [False] and 0 < out["p"][4] < 1
  np.testing.assert_allclose(out["f"][0], family.predict([users[0]], [family.prepared.item_ids[0]])[0],
                             rtol=1e-4)


def test_task_cli_on_tiny(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-m", "trainer.task", "--model", "taste_mlp",
                         "--preset", "tiny", "--set", "negatives=random", "--set", "hidden_size=8",
                         "--job-dir", str(tmp_path / "job"), "--export-dir", str(tmp_path / "exp")],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "model (taste_mlp)" in proc.stdout and "popularity" in proc.stdout
  version = tmp_path / "exp" / "taste_mlp" / "1"
  card = json.loads((version / "model_card.json").read_text())
  assert card["config"]["model"]["hidden_size"] == 8
  assert card["config"]["model"]["negatives"] == "random"
  assert json.loads((version / "metrics.json").read_text())["model"]["test/all/auc"] > 0.5


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_step_checkpoint(tmp_path):
  from test_playlist_mf import sigkill_and_rerun  # pylint: disable=g-import-not-at-top
  # Tiny: 2879 positives + 4 negatives each, batch 256 -> 57 steps an epoch, a checkpoint every 10.
  epochs, every = 10, 10
  _, _, fit = sigkill_and_rerun(
      tmp_path, "taste_mlp", ["--set", "negatives=random", "--set", "hidden_size=8"], every,
      epochs, steps_per_epoch=57, metric="valid_auc")
  assert fit["history"][-1]["valid_auc"] > 0.7


def test_each_epoch_draws_its_own_negatives_from_the_step_counter(prepared):
  family = TasteMLPFamily(TasteMLPFamily.make_config("tiny", {"negatives": "random"}), prepared)
  steps = family.steps_per_epoch()
  dataset = family.epoch_dataset()
  first = next(iter(dataset))
  family.model.optimizer.iterations.assign(steps + 3)   # as restored mid-epoch 2
  second = next(iter(dataset))
  rows = {e: family.training_rows(e) for e in (0, 1)}
  pairs = {e: set(zip(r["user"].tolist(), r["item"].tolist())) for e, r in rows.items()}
  for batch, epoch in ((first, 0), (second, 1)):
    negative = batch["label"].numpy() == 0
    drawn = list(zip(batch["user"].numpy()[negative].tolist(),
                     batch["item"].numpy()[negative].tolist()))
    assert drawn and all(p in pairs[epoch] for p in drawn)          # this epoch's negatives
    assert np.mean([p in pairs[1 - epoch] for p in drawn]) < 0.6    # not the other epoch's
  assert len(list(dataset)) == steps


def test_nan_loss_stops_with_advice(prepared, tmp_path):
  family = TasteMLPFamily(TasteMLPFamily.make_config("tiny", {"learning_rate": 1e30}), prepared)
  with pytest.raises(FloatingPointError, match=r"became nan .*Lower the learning rate "
                                               r"\(`--learning-rate`\)"):
    family.fit(str(tmp_path))
