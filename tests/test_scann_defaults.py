"""The exports' default ScaNN settings: how they scale, and that they build at any size."""

import json

import numpy as np
import pytest

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from conftest import run_python
from tfrec_music.export import retrieval


@pytest.mark.parametrize("n_items, k, expected", [
    # 1M: sqrt -> 1000 leaves of 1000 tracks; 5% of them = 50 (> 5000 / 1000 = 5).
    (1_000_000, 210, (1000, 50, 1000)),
    # 100k: int(sqrt) = 316 leaves of 316.5 tracks; 5% = ceil(15.8) = 16 and
    # ceil(5000 / 316.5) = 16.
    (100_000, 210, (316, 16, 1000)),
    # 10k: 100 leaves of 100 tracks; 5000 tracks need 50 leaves (> 5% = 5).
    (10_000, 210, (100, 50, 1000)),
    # 4M: leaves capped at 2000 (of 2000 tracks); 5% = 100.
    (4_000_000, 210, (2000, 100, 1000)),
    # The tiny preset's 500 tracks: 22 leaves, all searched (5000 / 22.7 > 22);
    # every track is re-scored (reordering clamped to the catalogue, above k).
    (500, 220, (22, 22, 500)),
    # Reordering never drops below k; 3 tracks still make 2 leaves.
    (50, 60, (7, 7, 60)),
    (3, 3, (2, 2, 3)),
])
def test_default_options_scale_with_the_catalogue(n_items, k, expected):
  options = retrieval.default_scann_options(n_items, k)
  assert (options["num_leaves"], options["num_leaves_to_search"],
          options["num_reordering_candidates"]) == expected
  assert options["dimensions_per_block"] == 2


@pytest.mark.parametrize("n_items", [3, 15, 16, 37, 500, 1000])
def test_default_index_builds_and_is_exact_when_it_reorders_everything(n_items):
  # Up to 1000 tracks every leaf is searched and every track re-scored
  # exactly, so the ScaNN top-k is the brute-force top-k (numpy reference).
  # Under 16 tracks (too few for ScaNN's quantizer) the index is brute force.
  rng = np.random.default_rng(n_items)
  items = rng.standard_normal((n_items, 16)).astype(np.float32)
  queries = rng.standard_normal((20, 16)).astype(np.float32)
  k = min(10, n_items)
  ids = np.array([f"t{i}" for i in range(n_items)])
  index = retrieval.make_scann_index(items, ids, k)
  _, found = index(tf.constant(queries), k=k)
  expected = np.argsort(-(queries @ items.T), axis=1)[:, :k]
  assert [set(row) for row in found.numpy().astype(str)] == \
      [set(ids[row]) for row in expected]


def test_options_override_the_defaults():
  # Searching 1 of 100 leaves of random vectors misses most of the true
  # top-10 that the default search (50 leaves, 5000 tracks) finds.
  rng = np.random.default_rng(0)
  items = rng.standard_normal((10_000, 16)).astype(np.float32)
  queries = rng.standard_normal((50, 16)).astype(np.float32)
  ids = np.array([f"t{i}" for i in range(len(items))])
  expected = [set(ids[row]) for row in np.argsort(-(queries @ items.T), axis=1)[:, :10]]

  def recall(index):
    found = index(tf.constant(queries), k=10)[1].numpy().astype(str)
    return np.mean([len(set(row) & e) / 10 for row, e in zip(found, expected)])

  default = recall(retrieval.make_scann_index(items, ids, 10))
  narrow = recall(retrieval.make_scann_index(items, ids, 10, {"num_leaves_to_search": 1}))
  assert default >= 0.8 and narrow <= 0.5


@pytest.mark.slow
def test_small_catalogue_scann_export_round_trips(tmp_path):
  # 5 tracks: the `scann` variant falls back to a brute-force index; saved and
  # loaded in a fresh process (no ScaNN ops registered), it answers as the
  # in-process module. Track 3 is excluded, so the top 3 of scores
  # q . items = [0, 1, 2, 3, 4] (items[i] = [i, 0]) is t4, t2, t1.
  items = np.array([[float(i), 0.0] for i in range(5)], np.float32)
  ids = np.array([f"t{i}" for i in range(5)], dtype=object)
  module = retrieval.RetrievalServingModule(
      lambda f: f["query"], {"query": tf.TensorSpec([None, 2], tf.float32, name="query")},
      items, ids, "scann", known_users=np.array(["u0"], dtype=object),
      stored_features={"query": np.array([[1.0, 0.0]], np.float32)},
      fallback_ids=ids[:3], fallback_scores=np.zeros(3, np.float32), k=3, max_exclusions=2)
  retrieval.save_retrieval_module(module, str(tmp_path / "scann"))
  request = {"user_id": tf.constant(["u0"]), "query": tf.constant([[1.0, 0.0]]),
             "exclude": tf.constant([["t3", ""]])}
  here = module.recommend(request)
  assert here["item_ids"].numpy().astype(str).tolist() == [["t4", "t2", "t1"]]
  out = run_python(f"""
import json, tfrec_music, tensorflow as tf
model = tf.saved_model.load({str(tmp_path / "scann")!r})
answer = model.signatures["recommend"](user_id=tf.constant(["u0"]),
    query=tf.constant([[1.0, 0.0]]), exclude=tf.constant([["t3", ""]]))
print(json.dumps({{"ids": answer["item_ids"].numpy().astype(str).tolist(),
                  "scores": answer["scores"].numpy().tolist()}}))
""")
  loaded = json.loads(out.strip().splitlines()[-1])
  assert loaded["ids"] == [["t4", "t2", "t1"]]
  np.testing.assert_allclose(loaded["scores"], here["scores"].numpy())
