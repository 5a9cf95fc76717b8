"""Serving fallbacks (issue 11) of the playlist MF, taste MLP, ALS, user-similarity and
popularity exports, through `serving_default` (and the other signatures) in a fresh process.

Each tiny model is trained once (module-scoped fixtures) and exported with `top_k` far above
its catalogue, so one export answers the hostile questions: unknown ids, empty or missing
optional features, duplicate rows in one batch, `k` above the catalogue size, and seeds (or
excluded tracks) that are duplicated.
"""

import dataclasses
import json

import numpy as np
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.data.registry import LoadedData
from tfrec_music.evaluation.playlist import held_out_playlists
from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.export.saved_model import export_versioned
from tfrec_music.models.als import ALSFamily
from tfrec_music.models.playlist_mf import PlaylistMFFamily
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.popularity_family import PopularityFamily
from tfrec_music.models.taste_mlp import TasteMLPFamily
from tfrec_music.models.user_similarity import UserSimilarityFamily
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow

HUGE_K = 100_000  # far above every tiny catalogue

# Loads one export in a fresh process and answers a list of calls:
# [{"name", "signature", "inputs": {name: [values, dtype]}}] -> {name: {output: list}}.
_CALLER = """
import json, sys
import numpy as np, tensorflow as tf
import tfrec_music
if {scann!r}:
  from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for the scann/ variant
calls = json.loads({calls!r})
out = {{}}
for path in {paths!r}:
  model = tf.saved_model.load(path)
  for call in calls:
    fn = model.signatures[call["signature"]]
    inputs = {{k: tf.constant(np.asarray(v, dtype=object if d == "string" else d)
                              .reshape(s), getattr(tf, d))
              for k, (v, d, s) in call["inputs"].items()}}
    res = fn(**inputs)
    out[path.rsplit("/", 1)[-1] + ":" + call["name"]] = {{
        k: (v.numpy().astype(str) if v.dtype == tf.string else v.numpy()).tolist()
        for k, v in res.items()}}
print(json.dumps(out))
"""


def _tensor(rows, dtype="string"):
  """A [B, L] (or [B]) input as (flat values, dtype, shape) for the caller script."""
  array = np.asarray(rows, dtype=object if dtype == "string" else dtype)
  assert array.dtype == object or dtype != "string" or array.ndim <= 2
  if array.ndim and array.size and isinstance(array.flat[0], list):
    raise ValueError(f"Ragged rows: {rows!r}")
  return [array.reshape(-1).tolist(), dtype, list(array.shape)]


def serve(export, calls, scann=True):
  """Runs `calls` on the exact export and (with `scann`) its `scann/` twin in a fresh process.

  Returns:
    {"exact": {name: outputs}, "scann": {name: outputs}}.
  """
  paths = [export] + ([export + "/scann"] if scann else [])
  text = run_python(_CALLER.format(scann=scann, calls=json.dumps(calls), paths=paths))
  raw = json.loads(text.strip().splitlines()[-1])
  out = {"exact": {}, "scann": {}}
  for key, value in raw.items():
    folder, name = key.split(":", 1)
    out["scann" if folder == "scann" else "exact"][name] = value
  return out


def _export(family, root, name):
  return export_versioned(family.save, str(root), name)


def _check_ranking(row_ids, row_scores, excluded, catalogue, empty_score):
  """The whole catalogue less the excluded tracks, each once; then empty slots ('' ids)."""
  assert len(row_ids) == len(catalogue)                 # k clamped to the catalogue
  filled = [i for i in row_ids if i]
  assert len(filled) == len(set(filled)) and not set(filled) & set(excluded)
  assert row_ids[:len(filled)] == filled
  assert len(filled) == len(catalogue) - len(set(excluded) & set(catalogue))
  assert row_scores[len(filled):] == [empty_score] * (len(catalogue) - len(filled))
  assert all(np.diff(row_scores[:len(filled)]) <= 1e-6)


# ---------------------------------------------------------------- playlist MF
@pytest.fixture(scope="module")
def playlist(tmp_path_factory):
  catalogue = synthetic.generate("tiny", n_playlists=120, playlist_max_tracks=20)
  loaded = LoadedData(tables=catalogue.tables, oracle=catalogue.oracle,
                      playlists=catalogue.playlists)
  config = PlaylistMFFamily.make_config("tiny", {"epochs": 3})
  prepared = prepare(PlaylistMFFamily.select_tables(loaded, config),
                     PrepareConfig(cold_user_share=0.2))
  family = PlaylistMFFamily(config, prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  family.config = dataclasses.replace(config, top_k=HUGE_K)
  family._module = None  # pylint: disable=protected-access
  export = _export(family, tmp_path_factory.mktemp("export"), family.name)
  held = held_out_playlists(prepared)
  ids = prepared.item_ids
  seeds = [ids[t[:3]].tolist() for t in list(held.values())[:2]]
  # A known name token (id > 0; row 0 is the unknown token). A hash table exports its
  # keys in no fixed order, so pick by id, not by position.
  keys, values = (t.numpy() for t in family.module().token_table.export())
  name = min(k.decode() for k, v in zip(keys, values) if v > 0)
  a, b = seeds
  calls = [
      {"name": "batch", "signature": "serving_default", "inputs": {
          "seeds": _tensor([a + [""], a + [""], [a[0], a[0], a[1], "nope"],
                            ["nope", "", "", ""], ["", "", "", ""], b + ["zzz"]]),
          "name": _tensor(["", "", "", "", name, "zzqx"])}},
      {"name": "no_seeds", "signature": "serving_default", "inputs": {
          "seeds": _tensor(np.zeros((2, 0), object)), "name": _tensor([name, ""])}},
      {"name": "no_name", "signature": "continue_seeds", "inputs": {
          "seeds": _tensor([a + [""], ["nope", "", "", ""]])}},
  ]
  return family, prepared, serve(export, calls), seeds, name


def test_playlist_k_above_catalogue_and_duplicated_seeds_excluded(playlist):
  family, prepared, out, (a, b), _ = playlist
  catalogue = prepared.item_ids.tolist()
  for kind in ("exact", "scann"):
    batch = out[kind]["batch"]
    ids, scores = batch["item_ids"], batch["scores"]
    # Known seeds: every other track comes back once, the seeds never.
    _check_ranking(ids[0], scores[0], a, catalogue, EMPTY_SCORE)
    # A duplicated seed (and an unknown one) is excluded once and for all.
    _check_ranking(ids[2], scores[2], a[:2] + ["nope"], catalogue, EMPTY_SCORE)
    _check_ranking(ids[5], scores[5], b, catalogue, EMPTY_SCORE)
    assert batch["fallback"] == [False, False, False, True, False, False]


def test_playlist_duplicate_rows_give_identical_outputs(playlist):
  _, _, out, _, _ = playlist
  for kind in ("exact", "scann"):
    batch = out[kind]["batch"]
    assert batch["item_ids"][0] == batch["item_ids"][1]
    assert batch["scores"][0] == batch["scores"][1]
    # Same seeds without a name signature: the same answer.
    assert out[kind]["no_name"]["item_ids"][0] == batch["item_ids"][0]


def test_playlist_unknown_and_empty_seeds_fall_back_to_name_then_popularity(playlist):
  _, prepared, out, _, name = playlist
  popular = PopularityModel.fit(prepared).top_k(prepared.n_items)[0].tolist()
  for kind in ("exact", "scann"):
    batch = out[kind]["batch"]
    # Only unknown seeds, no name / an unknown name: the popularity ranking.
    assert batch["item_ids"][3] == popular and batch["fallback"][3]
    assert batch["item_ids"][5] != popular  # known seed b + an unknown one: folded in
    # Empty seeds with a known name token: the name model, not popularity.
    assert name and not batch["fallback"][4] and batch["item_ids"][4] != popular
    # A [B, 0] seed tensor (no seeds at all) works the same way.
    no_seeds = out[kind]["no_seeds"]
    assert no_seeds["fallback"] == [False, True]
    assert no_seeds["item_ids"][0] == batch["item_ids"][4]
    assert no_seeds["item_ids"][1] == popular
    assert out[kind]["no_name"]["fallback"] == [False, True]
    assert out[kind]["no_name"]["item_ids"][1] == popular


# ---------------------------------------------------------------- ALS
@pytest.fixture(scope="module")
def tiny_catalog():
  return synthetic.generate("tiny", seed=0)


@pytest.fixture(scope="module")
def als(tiny_catalog, tmp_path_factory):
  config = ALSFamily.make_config("tiny", {"ranks": (8,), "top_k": HUGE_K})
  prepared = prepare(tiny_catalog.tables,
                     PrepareConfig(**dict(ALSFamily.prepare_overrides_for(config))))
  family = ALSFamily(config, prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  export = _export(family, tmp_path_factory.mktemp("export"), family.name)
  user = str(family.user_ids[0])
  # serving_default excludes the user's test-time history: training and validation tracks.
  seen = family.test_history()
  history = seen.loc[seen["user_id"] == user, "item_id"].astype(str).tolist()
  t = prepared.item_ids[:3].tolist()
  calls = [
      {"name": "serve", "signature": "serving_default",
       "inputs": {"user_id": _tensor([user, user, "nobody", ""])}},
      {"name": "recommend", "signature": "recommend", "inputs": {
          "user_id": _tensor(["new", "new", "new", "nobody", user]),
          "history": _tensor([[t[0], t[1], ""], [t[0], t[1], ""], [t[0], t[0], "zz"],
                              ["zz", "", ""], ["", "", ""]]),
          "weights": _tensor([[3, 1, 0], [3, 1, 0], [2, 2, 5], [1, 0, 0], [0, 0, 0]], "float32"),
          "exclude": _tensor([[t[2], t[2]], [t[2], t[2]], ["", ""], ["", ""], ["zz", t[2]]])}},
      {"name": "recommend_empty", "signature": "recommend", "inputs": {
          "user_id": _tensor(["new", user]), "history": _tensor(np.zeros((2, 0), object)),
          "weights": _tensor(np.zeros((2, 0)), "float32"),
          "exclude": _tensor(np.zeros((2, 0), object))}},
      {"name": "fold_in", "signature": "fold_in", "inputs": {
          "history": _tensor([[t[0], t[1]], ["zz", ""]]),
          "weights": _tensor([[3, 1], [1, 0]], "float32")}},
  ]
  popular = PopularityModel.fit(prepared).top_k(prepared.n_items)[0].tolist()
  return serve(export, calls), prepared.item_ids.tolist(), popular, history, t


def test_als_known_unknown_and_empty_users(als):
  out, catalogue, popular, history, _ = als
  for kind in ("exact", "scann"):
    res = out[kind]["serve"]
    assert res["fallback"] == [False, False, True, True]
    # k above the catalogue: the catalogue less the user's seen tracks, then empty slots.
    _check_ranking(res["item_ids"][0], res["scores"][0], history, catalogue, EMPTY_SCORE)
    assert res["item_ids"][0] == res["item_ids"][1] and res["scores"][0] == res["scores"][1]
    # Unknown and empty user ids: the popularity ranking.
    assert res["item_ids"][2] == popular and res["item_ids"][3] == popular


def test_als_recommend_and_fold_in_fallbacks(als):
  out, catalogue, popular, _, t = als
  for kind in ("exact", "scann"):
    res = out[kind]["recommend"]
    # A new user folded in from known tracks; duplicated exclusions removed once.
    assert res["fallback"] == [False, False, False, True, False]
    _check_ranking(res["item_ids"][0], res["scores"][0], [t[2]], catalogue, EMPTY_SCORE)
    assert res["item_ids"][0] == res["item_ids"][1] and res["scores"][0] == res["scores"][1]
    _check_ranking(res["item_ids"][2], res["scores"][2], [], catalogue, EMPTY_SCORE)
    # Unknown user with only unknown history: popularity.
    assert res["item_ids"][3] == popular
    # A known user with empty history keeps the trained vector; unknown exclusions ignored.
    _check_ranking(res["item_ids"][4], res["scores"][4], [t[2]], catalogue, EMPTY_SCORE)
    empty = out[kind]["recommend_empty"]
    assert empty["fallback"] == [True, False] and empty["item_ids"][0] == popular
    # The same trained vector: the same ranking, less the track row 4 excluded.
    assert [i for i in empty["item_ids"][1] if i != t[2]] == [i for i in res["item_ids"][4] if i]
    folded = out[kind]["fold_in"]
    assert folded["fallback"] == [False, True] and folded["item_ids"][1] == popular
    _check_ranking(folded["item_ids"][0], folded["scores"][0], t[:2], catalogue, EMPTY_SCORE)
    assert not any(folded["user_vector"][1])


# ---------------------------------------------------------------- taste MLP
@pytest.fixture(scope="module")
def taste(tiny_catalog, tmp_path_factory):
  prepared = prepare(tiny_catalog.tables, PrepareConfig(**TasteMLPFamily.prepare_overrides))
  family = TasteMLPFamily(TasteMLPFamily.make_config("tiny", {"epochs": 1}), prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  export = _export(family, tmp_path_factory.mktemp("export"), family.name)
  users = [str(u) for u in family.user_ids[:2]]
  items = prepared.item_ids[:2].tolist()
  calls = [{"name": "serve", "signature": "serving_default", "inputs": {
      "user_id": _tensor([users[0], users[0], "nobody", users[1], "", "nobody", ""]),
      "item_id": _tensor([items[0], items[0], items[0], "nope", items[1], "nope", ""])}}]
  return family, serve(export, calls, scann=False)["exact"]["serve"], users, items


def test_taste_unknown_ids_get_the_average_user_or_track(taste):
  family, res, users, items = taste
  assert res["known"] == [True, True, False, False, False, False, False]
  assert res["probability"][0] == res["probability"][1]                    # duplicate rows
  np.testing.assert_allclose(res["probability"][0], family.predict(users[:1], items[:1]),
                             rtol=1e-4)
  # Unknown (or empty) user: the mean taste centroid; unknown track: the mean track.
  mean_taste = family.centroids.mean(0, keepdims=True)
  mean_track = family.track_table.mean(0, keepdims=True)
  row = family.user_position.get_indexer(users[1:2])
  expected = [
      (family.track_table[[0]], mean_taste),                                # nobody, item 0
      (mean_track, family.centroids[row]),                                  # user 1, unknown
      (family.track_table[[1]], mean_taste),                                # "", item 1
      (mean_track, mean_taste), (mean_track, mean_taste)]                   # nothing known
  for got, (track, taste_vector) in zip(res["probability"][2:], expected):
    logit = family.scorer(tf.constant(track, tf.float32), tf.constant(taste_vector, tf.float32))
    np.testing.assert_allclose(got, tf.sigmoid(logit).numpy()[0], rtol=1e-4)
  assert all(0 < p < 1 for p in res["probability"])


# ---------------------------------------------------------------- user similarity
@pytest.fixture(scope="module")
def similar(tiny_catalog, tmp_path_factory):
  prepared = prepare(tiny_catalog.tables, PrepareConfig(**UserSimilarityFamily.prepare_overrides))
  config = UserSimilarityFamily.make_config("tiny", {"track_vectors": "text", "word_dim": 16,
                                                     "top_k": HUGE_K})
  family = UserSimilarityFamily(config, prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  export = _export(family, tmp_path_factory.mktemp("export"), family.name)
  users = family._require_model().users.ids  # pylint: disable=protected-access
  user = str(users[0])
  tracks = prepared.item_ids[:2].tolist()
  calls = [
      {"name": "serve", "signature": "serving_default",
       "inputs": {"user_id": _tensor([user, user, "nobody", ""])}},
      {"name": "tracks", "signature": "similar_to_tracks", "inputs": {
          "track_ids": _tensor([[tracks[0], tracks[0], "zz"], [tracks[0], tracks[0], "zz"],
                                ["zz", "", ""], ["", "", ""], [tracks[0], "", ""]])}},
      {"name": "no_tracks", "signature": "similar_to_tracks",
       "inputs": {"track_ids": _tensor(np.zeros((2, 0), object))}},
  ]
  return [str(u) for u in users], user, serve(export, calls)


def test_similar_users_k_above_the_user_count_and_unknown_users(similar):
  users, user, out = similar
  for kind in ("exact", "scann"):
    res = out[kind]["serve"]
    assert res["known"] == [True, True, False, False]
    ids = res["user_ids"][0]
    # k clamped to the other users: every other user once, never the user itself.
    assert len(ids) == len(users) - 1 and sorted(ids) == sorted(set(users) - {user})
    assert res["user_ids"][0] == res["user_ids"][1] and res["scores"][0] == res["scores"][1]
    assert all(np.diff(res["scores"][0]) <= 1e-6)
    # Unknown and empty ids: known = False, empty ids and zero scores (no one to compare).
    for row in (2, 3):
      assert res["user_ids"][row] == [""] * len(ids) and res["scores"][row] == [0.0] * len(ids)


def test_similar_to_tracks_skips_unknown_tracks_and_handles_empty_rows(similar):
  users, _, out = similar
  for kind in ("exact", "scann"):
    res = out[kind]["tracks"]
    assert res["known"] == [True, True, False, False, True]
    assert res["user_ids"][0] == res["user_ids"][1] and res["scores"][0] == res["scores"][1]
    # A duplicated known track and an unknown one: the centroid of that one track.
    assert res["user_ids"][0] == res["user_ids"][4]
    np.testing.assert_allclose(res["scores"][0], res["scores"][4], rtol=1e-5)
    # A new user is nobody: k is clamped to all users but one, each at most once.
    assert len(res["user_ids"][0]) == len(users) - 1
    assert len(set(res["user_ids"][0])) == len(users) - 1 and set(res["user_ids"][0]) <= set(users)
    for row in (2, 3):
      assert set(res["user_ids"][row]) == {""} and not any(res["scores"][row])
    assert out[kind]["no_tracks"]["known"] == [False, False]


# ---------------------------------------------------------------- popularity
def test_popularity_export_serves_everyone_the_clamped_ranking(tiny_catalog, tmp_path):
  prepared = prepare(tiny_catalog.tables, PrepareConfig())
  family = PopularityFamily(PopularityFamily.make_config("tiny", {"top_k": HUGE_K}), prepared)
  family.fit(str(tmp_path))
  export = _export(family, tmp_path / "export", family.name)
  user = str(prepared.train["user_id"].iloc[0])
  calls = [{"name": "serve", "signature": "serving_default",
            "inputs": {"user_id": _tensor([user, "nobody", "", "nobody"])}}]
  res = serve(export, calls, scann=False)["exact"]["serve"]
  ids, scores = PopularityModel.fit(prepared).top_k(prepared.n_items)
  for row in range(1, 4):
    assert res["item_ids"][row] == ids.tolist()        # the whole catalogue, once each
    np.testing.assert_allclose(res["scores"][row], scores, rtol=1e-6)
  # A known user: the same ranking without their tracks up to the test point, then
  # empty slots ("" at the lowest float) where no track is left.
  seen = set(prepared.train.loc[prepared.train.user_id == user, "item_id"]) | set(
      prepared.valid.loc[prepared.valid.user_id == user, "item_id"])
  rest = [i for i in ids.tolist() if i not in seen]
  assert res["item_ids"][0] == rest + [""] * len(seen)
  np.testing.assert_allclose(res["scores"][0][:len(rest)],
                             [s for i, s in zip(ids, scores) if i not in seen], rtol=1e-6)
