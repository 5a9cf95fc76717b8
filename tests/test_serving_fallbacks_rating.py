"""Serving fallbacks of the rating exports (issue 11): the DCN and the retrieve-then-rank cascade.

Each export is trained once on the tiny preset, saved, and queried through its
signatures in one fresh process per export; the tests check what that process
answered against the behaviour each module's docstring defines:

- DCN (`serving_default`, `score_ids`): unknown or empty ids get the biased
  baseline alpha + beta_u + beta_i (flagged `fallback`), empty genres and
  countries the missing-value index, NaN numbers the training mean; absent
  feature columns are refused by `serving_default` and filled from the stored
  tables by `score_ids`; duplicate rows get identical ratings.
- Cascade (`serving_default`, `recommend`): unknown users without catalogue
  history get the popularity top-k; a new user id with a history gets the
  retrieval order; empty history and empty country are served; duplicate rows
  get identical answers; `top_k` / `candidates` above the catalogue serve the
  whole catalogue once, less the user's own tracks (empty slots last).
"""

import dataclasses
import json
import os

import numpy as np
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.models.cascade import CascadeFamily
from tfrec_music.models.dcn import DCNFamily
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow

# The fresh process: loads one export, answers every request of a JSON file
# (signature name + columnar inputs) and prints the outputs as JSON.
_ANSWER = """
import json, sys, numpy as np, tfrec_music, tensorflow as tf
from tfrec_music.export import predict_rest
requests = json.load(open({requests!r}))
loaded = tf.saved_model.load({export!r})
out = {{}}
for name, (signature, inputs) in requests.items():
  sig = loaded.signatures[signature]
  specs = sig.structured_input_signature[1]
  tensors = {{k: tf.constant(np.asarray(v, dtype=object if specs[k].dtype == tf.string
                                       else np.float32), dtype=specs[k].dtype)
             for k, v in inputs.items()}}
  try:
    result = sig(**tensors)
    out[name] = {{k: (v.numpy().astype(str).tolist() if v.dtype == tf.string
                     else v.numpy().tolist()) for k, v in result.items()}}
  except Exception as e:  # reported, checked by the tests
    out[name] = {{"error": f"{{type(e).__name__}}: {{e}}"}}
try:
  predict_rest({export!r}, {{"instances": [{{"user_id": "u1", "item_id": "t1"}}]}})
  out["rest_missing_columns"] = {{"error": ""}}
except ValueError as e:
  out["rest_missing_columns"] = {{"error": str(e)}}
print(json.dumps(out))
"""


def _answer(export, requests, folder):
  """Runs `requests` ({name: (signature, inputs)}) against `export` in a fresh process."""
  path = os.path.join(folder, "requests.json")
  with open(path, "w") as f:
    json.dump(requests, f)
  out = run_python(_ANSWER.format(requests=path, export=export), timeout=120)
  return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def catalogue():
  return synthetic.generate("tiny", seed=0)


def _train_and_save(family_cls, catalogue, tmp_path_factory):
  """(family, export folder, export path `<folder>/1`) of the tiny preset, trained once."""
  prepared = prepare(catalogue.tables, PrepareConfig(**family_cls.prepare_overrides))
  family = family_cls(family_cls.make_config("tiny", {}), prepared)
  family.fit(str(tmp_path_factory.mktemp(f"{family_cls.name}_job")))
  folder = str(tmp_path_factory.mktemp(f"{family_cls.name}_export"))
  export = os.path.join(folder, "1")
  family.save(export)
  return family, folder, export


# --------------------------------------------------------------------------- DCN


def _raw_rows(family, users, items):
  """Raw serving inputs of (user, catalogue track) pairs as JSON-ready lists."""
  rows = family.prepared.item_index(items)
  raw = {"user_id": [str(u) for u in users]}
  countries = family.prepared.users.set_index("user_id")["country"]
  for column in family.spec.user_categorical:
    raw[column] = [str(countries.get(u, "")) for u in users]
  for column, values in family.raw_items.items():
    raw[column] = [v if isinstance(v, str) else float(v) for v in values[rows].tolist()]
  return raw


def _python_rating(family, raw):
  """The in-memory family's rating of raw rows (encoder + `predict_encoded`)."""
  tensors = {k: tf.constant(np.asarray(v, dtype=object if isinstance(v[0], str) else np.float32))
             for k, v in raw.items()}
  encoded = {k: v.numpy() for k, v in family.encoder(tensors).items()}
  return family.predict_encoded(encoded)


@pytest.fixture(scope="module")
def dcn(catalogue, tmp_path_factory):
  family, folder, export = _train_and_save(DCNFamily, catalogue, tmp_path_factory)
  test = family.prepared.test.head(6)
  users, items = test["user_id"].astype(str).tolist(), test["item_id"].astype(str).tolist()
  known = _raw_rows(family, users, items)
  unknown_user = _raw_rows(family, users, items)
  unknown_user["user_id"] = ["never-seen-user"] * 5 + [""]
  unknown_user["country"] = [""] * 6
  unknown_item = _raw_rows(family, users, items)
  unknown_item["item_id"] = ["never-seen-track"] * 5 + [""]
  both = _raw_rows(family, users, items)
  both["user_id"], both["item_id"] = ["nobody"] * 6, ["nothing"] * 6
  empty_features = _raw_rows(family, users, items)
  for column in ("genre", "country", "parent_genre", "album"):
    if column in empty_features:
      empty_features[column] = [""] * 6
  for column in family.spec.numeric:
    empty_features[column] = [float("nan")] * 6
  duplicate = {k: [v[0]] * 4 + [v[1]] + [v[0]] for k, v in known.items()}
  requests = {
      "known": ("serving_default", known),
      "unknown_user": ("serving_default", unknown_user),
      "unknown_item": ("serving_default", unknown_item),
      "both_unknown": ("serving_default", both),
      "empty_features": ("serving_default", empty_features),
      "duplicate": ("serving_default", duplicate),
      "ids_known": ("score_ids", {"user_id": users, "item_id": items}),
      "ids_unknown": ("score_ids", {"user_id": ["nobody", users[0], ""],
                                    "item_id": [items[0], "nothing", ""]}),
      "missing_input": ("serving_default", {"user_id": users, "item_id": items}),
  }
  inputs = {"known": known, "unknown_user": unknown_user, "unknown_item": unknown_item,
            "both": both, "empty_features": empty_features}
  return family, _answer(export, requests, folder), inputs


def test_dcn_known_rows_match_the_trained_model(dcn):
  family, got, inputs = dcn
  np.testing.assert_allclose(got["known"]["rating"], _python_rating(family, inputs["known"]),
                             rtol=1e-5, atol=1e-5)
  assert got["known"]["fallback"] == [False] * 6


def test_dcn_unknown_ids_get_the_biased_baseline(dcn):
  family, got, inputs = dcn
  fallback = family.fallback_biases()
  biased = family.baselines().biased
  low, high = family.rating_range
  items = inputs["known"]["item_id"]
  users = inputs["known"]["user_id"]
  # Unknown user: alpha + beta_item; unknown track: alpha + beta_user; both: alpha.
  want_user = np.clip(biased.alpha + biased.biases(["?"] * 6, items)[1], low, high)
  want_item = np.clip(biased.alpha + biased.biases(users, ["?"] * 6)[0], low, high)
  np.testing.assert_allclose(got["unknown_user"]["rating"], want_user, rtol=1e-5)
  np.testing.assert_allclose(got["unknown_item"]["rating"], want_item, rtol=1e-5)
  np.testing.assert_allclose(got["both_unknown"]["rating"],
                             [np.clip(fallback.offset, low, high)] * 6, rtol=1e-5)
  for name in ("unknown_user", "unknown_item", "both_unknown"):
    assert got[name]["fallback"] == [True] * 6, name
  # The biases vary by track, so the fallback is no single constant.
  assert np.ptp(got["unknown_user"]["rating"]) > 0
  # The Python scorer (what the metrics report) applies the same rule.
  np.testing.assert_allclose(got["unknown_user"]["rating"],
                             _python_rating(family, inputs["unknown_user"]), rtol=1e-5)


def test_dcn_empty_genre_country_and_nan_numbers_are_served(dcn):
  family, got, inputs = dcn
  rating = np.asarray(got["empty_features"]["rating"])
  low, high = family.rating_range
  assert np.isfinite(rating).all() and ((rating >= low) & (rating <= high)).all()
  assert got["empty_features"]["fallback"] == [False] * 6  # ids known: the network scores
  np.testing.assert_allclose(rating, _python_rating(family, inputs["empty_features"]),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(rating, got["known"]["rating"])  # the features do matter


def test_dcn_duplicate_rows_get_identical_ratings(dcn):
  _, got, _ = dcn
  rating = got["duplicate"]["rating"]
  assert rating[0] == rating[1] == rating[2] == rating[3] == rating[5]
  assert rating[0] == pytest.approx(got["known"]["rating"][0], abs=1e-6)
  assert rating[4] == pytest.approx(got["known"]["rating"][1], abs=1e-6)


def test_dcn_absent_columns_refused_by_serving_default_filled_by_score_ids(dcn):
  _, got, _ = dcn
  # serving_default needs every raw feature; the refusal names the missing inputs.
  assert "error" in got["missing_input"] and "genre" in got["missing_input"]["error"]
  assert "the signature takes" in got["rest_missing_columns"]["error"]
  assert "country" in got["rest_missing_columns"]["error"]
  # score_ids reads the stored features: the same ratings as the full raw rows.
  np.testing.assert_allclose(got["ids_known"]["rating"], got["known"]["rating"], rtol=1e-5)
  # Unknown ids there get the same fallback as through serving_default.
  assert got["ids_unknown"]["fallback"] == [True, True, True]
  assert got["ids_unknown"]["rating"][0] == pytest.approx(got["unknown_user"]["rating"][0],
                                                          rel=1e-5)
  assert got["ids_unknown"]["rating"][1] == pytest.approx(got["unknown_item"]["rating"][0],
                                                          rel=1e-5)


# ----------------------------------------------------------------------- cascade


@pytest.fixture(scope="module")
def cascade(catalogue, tmp_path_factory):
  family, folder, export = _train_and_save(CascadeFamily, catalogue, tmp_path_factory)
  prepared = family.prepared
  # The same trained stages exported with `top_k` and `candidates` above the catalogue.
  wide = os.path.join(folder, "2")
  trained_config = family.config
  n = prepared.n_items
  family.config = dataclasses.replace(trained_config, candidates=n + 100, top_k=n + 50)
  try:
    family.save(wide)
  finally:
    family.config = trained_config
  users = [str(u) for u in prepared.test["user_id"].astype(str).unique()[:3]]
  history = family.retrieval.raw_query_features(users, "test")["history"].astype(str)
  known_tracks = [str(t) for t in prepared.item_ids[:5]]
  width = history.shape[1]
  blank = [""] * width
  new_history = known_tracks + [""] * (width - len(known_tracks))
  recommend = {
      "user_id": [users[0], users[0], "newcomer", "nobody", users[1], ""],
      "history": [history[0].tolist(), blank, new_history, blank, history[1].tolist(),
                  blank],
      "exclude": [history[0].tolist(), blank, new_history, blank, history[1].tolist(),
                  blank],
      "country": ["", "", "", "", "", ""],
  }
  recommend = {k: v for k, v in recommend.items()
               if k in ("user_id", "exclude") or k in family.retrieval.query_signature()}
  requests = {
      "by_id": ("serving_default", {"user_id": users + ["nobody", ""]}),
      "duplicate": ("serving_default", {"user_id": [users[0], "nobody", users[0], users[0],
                                                    "nobody"]}),
      "recommend": ("recommend", recommend),
      "empty_batch": ("serving_default", {"user_id": []}),
  }
  got = _answer(export, requests, folder)
  got_wide = _answer(wide, {"by_id": ("serving_default", {"user_id": users + ["nobody"]})},
                     folder)
  return family, got, got_wide, users, recommend


def test_cascade_unknown_and_empty_users_get_the_popularity_top_k(cascade):
  family, got, _, users, _ = cascade
  k = family.config.top_k
  popular = [str(i) for i in family.prepared.item_ids[
      np.argsort(-family.prepared.item_train_counts, kind="stable")[:k]]]
  assert got["by_id"]["fallback"] == [False] * len(users) + [True, True]
  assert got["by_id"]["item_ids"][-2] == popular and got["by_id"]["item_ids"][-1] == popular
  assert np.asarray(got["by_id"]["item_ids"]).shape == (len(users) + 2, k)
  assert got["empty_batch"]["item_ids"] == [] and got["empty_batch"]["fallback"] == []


def test_cascade_duplicate_rows_get_identical_answers(cascade):
  _, got, _, _, _ = cascade
  ids, scores = got["duplicate"]["item_ids"], got["duplicate"]["scores"]
  assert ids[0] == ids[2] == ids[3] and ids[1] == ids[4]
  np.testing.assert_array_equal(scores[0], scores[2])
  np.testing.assert_array_equal(scores[0], scores[3])
  assert ids[0] == got["by_id"]["item_ids"][0]


def test_cascade_recommend_with_empty_history_empty_country_and_new_user(cascade):
  family, got, _, users, request = cascade
  out = got["recommend"]
  assert "error" not in out, out
  k = family.config.top_k
  catalogue = set(family.prepared.item_ids.astype(str))
  # Rows: known user + history; known user, empty history; new id + known tracks;
  # unknown id, empty history; known user + history; "" with nothing.
  assert out["fallback"] == [False, False, False, True, False, True]
  for row in range(6):
    ids = out["item_ids"][row]
    assert len(ids) == k and len(set(ids)) == k and set(ids) <= catalogue
    assert all(np.diff(out["scores"][row]) <= 1e-6)
    assert not set(ids) & set(request["exclude"][row])  # excluded tracks are never served
  # A known user with an empty history is still served personally (by its id).
  assert out["item_ids"][1] != out["item_ids"][3]
  # The new id with a history: the re-ranker never saw it, so its candidates keep
  # the retrieval order: score = retrieval score / temperature.
  retrieval = family.retrieval
  raw = {"user_id": tf.constant(["newcomer"]),
         "history": tf.constant([request["history"][2]])}
  for column in retrieval.user_features:
    raw[column] = tf.constant([""])
  query = retrieval.query_model()(raw).numpy()[0]
  scores = retrieval.item_embeddings() @ query
  scores[family.prepared.item_index(request["exclude"][2][:5])] = -np.inf
  top = np.argsort(-scores, kind="stable")[:k]
  assert out["item_ids"][2] == [str(i) for i in family.prepared.item_ids[top]]
  np.testing.assert_allclose(out["scores"][2], scores[top] / family.temperature, rtol=1e-4,
                             atol=1e-4)


def test_cascade_k_above_the_catalogue_serves_the_catalogue_once(cascade):
  from tfrec_music.models.cascade import EMPTY_SCORE
  family, _, wide, users, _ = cascade
  n = family.prepared.n_items
  catalogue = set(family.prepared.item_ids.astype(str).tolist())
  ids, scores = wide["by_id"]["item_ids"], np.asarray(wide["by_id"]["scores"])
  assert np.asarray(ids).shape == (len(users) + 1, n)
  excluded = family.exclusions("test")
  for row, user in enumerate(users + ["nobody"]):
    served = [i for i in ids[row] if i]
    had = set(family.prepared.item_ids[excluded.get(user, [])].astype(str).tolist())
    # Every track once, except the user's own (stored history), which are never served:
    # their slots come last, empty.
    assert len(served) == len(set(served)) and set(served) == catalogue - had
    assert ids[row][len(served):] == [""] * (n - len(served))
    assert np.all(scores[row][len(served):] == np.float32(EMPTY_SCORE))
    assert np.all(np.isfinite(scores[row])) and np.all(np.diff(scores[row]) <= 1e-6)
    if row < len(users):
      assert had  # known users do have excluded tracks here
  assert wide["by_id"]["fallback"] == [False] * len(users) + [True]
