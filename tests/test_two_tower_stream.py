"""Streamed two-tower: materialize, TFRecord round trip, causal history, training, reuse, export."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401

from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.data.tables import DataValidationError
from tfrec_music.models.history import causal_history
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.models.two_tower import materialize as materialize_lib
from tfrec_music.models.two_tower import stream as stream_lib
from tfrec_music.pipeline.tfrecord import read_shards

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow

LENGTH = 10


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
  root = tmp_path_factory.mktemp("stream")
  data_dir, shard_dir = str(root / "data"), str(root / "shards")
  # Small parquet shards and read chunks, so users span both.
  synthetic.write_large(data_dir, preset="tiny", seed=0, shard_rows=1500)
  manifest = materialize_lib.materialize(data_dir, shard_dir, LENGTH, shard_rows=1000,
                                          read_rows=700, eval_users=150)
  return data_dir, shard_dir, manifest


def _reference(data_dir):
  """All interactions in memory, split by the same rule (last -> test, second-last -> valid)."""
  files = sorted(f for f in os.listdir(data_dir) if f.startswith("interactions"))
  frame = pd.concat([pd.read_parquet(os.path.join(data_dir, f)) for f in files],
                    ignore_index=True)
  frame = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
  position = frame.groupby("user_id").cumcount().to_numpy()
  count = frame.groupby("user_id")["item_id"].transform("size").to_numpy()
  role = np.where((count >= 3) & (position == count - 1), "test",
                  np.where((count >= 3) & (position == count - 2), "valid", "train"))
  return frame, role


def test_round_trip_rows_and_causal_history(materialized):
  data_dir, shard_dir, manifest = materialized
  assert not manifest["reused"]
  frame, role = _reference(data_dir)
  train = frame[role == "train"].reset_index(drop=True)
  assert manifest["rows"]["read"] == len(frame)
  assert manifest["rows"]["train"] == len(train)
  assert manifest["rows"]["valid"] == manifest["rows"]["test"] == int((role == "test").sum())
  assert manifest["shards"] == -(-len(train) // 1000)
  data = stream_lib.load_stream_data(shard_dir)
  vocab = data.prepared.vocabularies["item_id"]
  assert vocab == sorted(train["item_id"].unique())
  # The in-memory history function on the same rows (users in order, time order).
  expected_history = causal_history(train, vocab, LENGTH)
  expected = sorted(zip(train["user_id"], train["item_id"], map(tuple, expected_history)))
  user_vocab = np.asarray(data.prepared.vocabularies["user_id"])
  item_ids = data.prepared.item_ids
  got = []
  for batch in read_shards(shard_dir, "train", 256, shuffle=False):
    users = np.asarray(data.user_order)[batch["user"].numpy()]
    lookups = data.item_lookup[batch["history"].numpy()]
    for u, i, h in zip(users, item_ids[batch["item"].numpy()], lookups):
      got.append((u, i, tuple(h)))
    np.testing.assert_array_equal(user_vocab[data.user_lookup[batch["user"].numpy()] - 2], users)
  assert len(got) == len(train)
  assert sorted(got) == expected
  # Causal: every history track was played by that user strictly before the row.
  played_at = {(u, i): t for u, i, t in zip(frame["user_id"], frame["item_id"], frame["timestamp"])}
  vocab_arr = np.asarray(vocab)
  for u, i, h in got[::7]:
    earlier = [vocab_arr[x - 2] for x in h if x >= 2]
    assert i not in earlier
    assert all(played_at[(u, e)] < played_at[(u, i)] for e in earlier)


def test_eval_sample_holds_each_users_last_two_interactions(materialized):
  data_dir, shard_dir, _ = materialized
  frame, role = _reference(data_dir)
  data = stream_lib.load_stream_data(shard_dir)
  ev = data.eval
  assert len(ev["user"]) == 150                    # reservoir of `eval_users`
  item_ids = data.prepared.item_ids
  by_user = {u: g for u, g in frame.assign(role=role).groupby("user_id")}
  for row in range(0, 150, 10):
    user = data.user_order[ev["user"][row]]
    g = by_user[user]
    assert item_ids[ev["valid_item"][row]] == g[g["role"] == "valid"]["item_id"].item()
    assert item_ids[ev["test_item"][row]] == g[g["role"] == "test"]["item_id"].item()
    seen = set(g[g["role"] == "train"]["item_id"])
    ptr, idx = ev["valid_exclude_indptr"], ev["valid_exclude_indices"]
    assert set(item_ids[idx[ptr[row]:ptr[row + 1]]]) == seen
    # The test row's history ends with the valid item (the last one played before it).
    assert item_ids[ev["test_history"][row][-1] - 1] == item_ids[ev["valid_item"][row]]


def test_rerun_reuses_and_other_settings_rewrite(materialized):
  data_dir, shard_dir, manifest = materialized
  shard = os.path.join(shard_dir, "train-00000.tfrecord")
  before = os.stat(shard).st_mtime_ns
  again = materialize_lib.materialize(data_dir, shard_dir, LENGTH, shard_rows=1000,
                                       read_rows=700, eval_users=150)
  assert again["reused"] and again["rows"] == manifest["rows"]
  assert os.stat(shard).st_mtime_ns == before
  other = str(os.path.join(os.path.dirname(shard_dir), "other"))
  first = materialize_lib.materialize(data_dir, other, 4, shard_rows=100_000)
  assert not first["reused"] and first["shards"] == 1
  os.remove(os.path.join(other, materialize_lib.DONE))     # as if killed before the end
  assert not materialize_lib.materialize(data_dir, other, 4, shard_rows=100_000)["reused"]


def test_users_must_be_contiguous(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  pd.DataFrame({"item_id": ["a", "b", "c"]}).to_parquet(data_dir / "items.parquet")
  pd.DataFrame({"user_id": ["u1", "u1", "u2", "u1"], "item_id": ["a", "b", "a", "c"],
                "timestamp": [1, 2, 3, 4]}).to_parquet(data_dir / "interactions-00000.parquet")
  with pytest.raises(DataValidationError, match=r"interactions-00000.parquet, row 4, column "
                     r"`user_id`: user 'u1' appears again.*sort the interaction shards"):
    materialize_lib.materialize(str(data_dir), str(tmp_path / "out"), 3, read_rows=2)


def test_stream_fit_learns_beats_popularity_and_exports(materialized, tmp_path):
  _, shard_dir, manifest = materialized
  with pytest.raises(ValueError, match="materialized with history_length = 10"):
    stream_lib.stream_fit(shard_dir, TwoTowerFamily.make_config("tiny", {
        "history_length": 5}), str(tmp_path / "bad"))
  config = TwoTowerFamily.make_config("tiny", {"epochs": 4, "top_k": 10})
  export = str(tmp_path / "export" / "1")
  summary = stream_lib.stream_fit(shard_dir, config, str(tmp_path / "job"),
                                        export_dir=export)
  assert summary["epochs_run"] >= 2
  losses = summary["losses"]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert summary["valid/all/hr@10"] > 1.5 * summary["popularity"]["valid/all/hr@10"]
  assert summary["test/all/hr@10"] > 1.5 * summary["popularity"]["test/all/hr@10"]
  assert summary["train_examples_per_second"] > 0 and summary["input_examples_per_second"] > 0
  assert summary["rows"] == manifest["rows"]
  assert json.load(open(tmp_path / "job" / "stream_summary.json"))["test/all/hr@10"] == \
      summary["test/all/hr@10"]
  data = stream_lib.load_stream_data(shard_dir)
  user = data.prepared.vocabularies["user_id"][3]
  row = data.serving_history[data.user_order.index(user)]
  history = [str(data.prepared.item_ids[i - 1]) for i in row if i > 0]
  country = str(data.prepared.users.set_index("user_id").loc[user, "country"])
  # Fresh process: a known user is served from the stored history (and its
  # tracks excluded): the same list as `recommend` given that history and country.
  out = run_python(f"""
import json, tfrec_music, tensorflow as tf
m = tf.saved_model.load({export!r})
a = m.signatures['serving_default'](user_id=tf.constant([{user!r}]))
b = m.signatures['recommend'](user_id=tf.constant([{user!r}]), history=tf.constant([{history!r}]),
                              country=tf.constant([{country!r}]),
                              exclude=tf.constant([{history!r}]))
print(json.dumps({{"a": a['item_ids'].numpy().astype(str).tolist()[0],
                  "fallback": bool(a['fallback'].numpy()[0]),
                  "b": b['item_ids'].numpy().astype(str).tolist()[0]}}))
""")
  result = json.loads(out.strip().splitlines()[-1])
  assert not result["fallback"] and len(result["a"]) == 10
  assert set(result["a"]) <= set(data.prepared.item_ids)
  assert result["a"] == result["b"]


def test_trainer_task_stream_trains_evaluates_and_exports(materialized, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  data_dir = materialized[0]
  job, export = tmp_path / "job", tmp_path / "export"

  def task(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.task", "--preset", "tiny", "--data", "parquet",
         "--data-dir", data_dir, "--stream", "--job-dir", str(job), "--export-dir", str(export),
         *args], capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

  proc = task("--model", "two_tower", "--epochs", "3", "--set", "history_length=10")
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((job / "metrics.json").read_text())
  model, popular = metrics["model"], metrics["popularity"]
  assert model["test/all/hr@10"] > popular["test/all/hr@10"]
  assert "valid/all/hr@10" in model and "test/cold/hr@10" in model
  version = export / "two_tower" / "1"
  assert json.loads((version / "metrics.json").read_text()) == metrics
  card = json.loads((version / "model_card.json").read_text())
  assert card["fit"]["materialization"]["rows"]["train"] > 0
  assert card["fit"]["materialization_reused"] is False
  assert (job / "stream_shards").is_dir()
  # A rerun reuses the materialization; a family without streaming is a clear error.
  proc = task("--model", "two_tower", "--epochs", "1", "--set", "history_length=10",
              "--no-export")
  assert proc.returncode == 0, proc.stderr[-3000:]
  stream_report = json.loads((job / "data_report.json").read_text())["stream"]
  assert stream_report["materialization_reused"] is True
  rows = json.loads((job / "data_report.json").read_text())["stream/materialized_rows"]
  assert rows["dropped_unknown_item"] == 0 and rows["read"] == sum(
      rows[k] for k in ("train", "valid", "test", "dropped_unknown_item"))
  proc = task("--model", "als")
  assert proc.returncode == 2 and "`--stream` is not available for `--model als`" in proc.stderr
