"""Serving fallbacks of the two-tower export, through its signatures in a fresh process.

The hostile requests a serving system meets: unknown user ids, histories of
unknown or empty track ids, unknown or empty user features, duplicate rows in
one batch, unknown and duplicate exclusions, an empty batch, and `k` above the
catalogue. Each is sent to the exact index, its ScaNN variant and the two
towers, reloaded in a fresh Python process (as TF Serving would load them).
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_toy_tables
from conftest import REPO
from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare

# Every test here trains or serves a model end to end: `make test-fast` skips the module.
pytestmark = pytest.mark.slow

_PROBE = r"""
import json, sys, numpy as np, tfrec_music, tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for the scann/ variant
export, big, users, tracks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
out = {}
def ids(result):
  return result["item_ids"].numpy().astype(str).tolist()
for variant in ("", "/scann"):
  model = tf.saved_model.load(export + variant)
  serve, rec = model.signatures["serving_default"], model.signatures["recommend"]
  r = {}
  batch = serve(user_id=tf.constant([users[0], users[0], "nobody", "", users[1], "nobody"]))
  r["dup_ids"] = ids(batch)
  r["dup_scores"] = batch["scores"].numpy().tolist()
  r["dup_fallback"] = batch["fallback"].numpy().tolist()
  empty = serve(user_id=tf.constant([], tf.string))
  r["empty_batch_shape"] = list(empty["item_ids"].shape)
  def recommend(history, country="", exclude=("",), user="nobody"):
    return rec(user_id=tf.constant([user]), history=tf.constant([list(history)]),
               country=tf.constant([country]), exclude=tf.constant([list(exclude)]))
  known = tracks[:3]
  r["hist_known"] = ids(recommend(known))[0]
  with_unknown = recommend(known + ["no-such-track", "", "another-unknown"])
  r["hist_with_unknown"] = ids(with_unknown)[0]
  r["hist_with_unknown_fallback"] = bool(with_unknown["fallback"].numpy()[0])
  only_unknown = recommend(["no-such-track", "another-unknown"])
  r["only_unknown"] = ids(only_unknown)[0]
  r["only_unknown_fallback"] = bool(only_unknown["fallback"].numpy()[0])
  r["all_empty"] = ids(recommend(["", ""]))[0]
  r["unknown_country"] = ids(recommend(known, country="atlantis"))[0]
  r["excluded"] = ids(recommend(known, exclude=[tracks[5], tracks[5], "no-such-track", ""]))[0]
  r["excluded_target"] = tracks[5]
  out[variant or "exact"] = r
big_model = tf.saved_model.load(big)
big_answer = big_model.signatures["serving_default"](user_id=tf.constant([users[0], "nobody"]))
out["big_k"] = [len(x) for x in ids(big_answer)]
out["big_known_ids"] = ids(big_answer)[0]
out["big_known_scores"] = big_answer["scores"].numpy()[0].tolist()
big_scann = tf.saved_model.load(big + "/scann")
out["big_k_scann"] = [len(x) for x in ids(big_scann.signatures["serving_default"](
    user_id=tf.constant([users[0], "nobody"])))]
query = tf.saved_model.load(export + "/query_tower").signatures["serving_default"]
q = query(user_id=tf.constant(["nobody", users[0], users[0]]),
          history=tf.constant([["", ""], [tracks[0], "no-such-track"], [tracks[0], ""]]),
          country=tf.constant(["", "atlantis", "atlantis"]))["embedding"].numpy()
out["query_finite"] = bool(np.isfinite(q).all())
out["query_unknown_track_ignored"] = float(np.abs(q[1] - q[2]).max())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  prepared = prepare(make_toy_tables(), PrepareConfig(cold_user_share=0.1))
  config = TwoTowerFamily.make_config("tiny", {"epochs": 2, "top_k": 10})
  family = TwoTowerFamily(config, prepared)
  family.fit(str(tmp_path_factory.mktemp("job")))
  export = tmp_path_factory.mktemp("export") / "1"
  family.save(str(export))
  family.config = dataclasses.replace(config, top_k=10**6)
  big = tmp_path_factory.mktemp("export_big") / "1"
  family.save(str(big))
  users = list(prepared.vocabularies["user_id"][:2])
  tracks = list(prepared.vocabularies["item_id"][:6])
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run([sys.executable, "-c", _PROBE, str(export), str(big), json.dumps(users),
                         json.dumps(tracks)], capture_output=True, text=True, timeout=300,
                        cwd=REPO, env=env, check=False)
  assert proc.returncode == 0, f"fresh process failed:\n{proc.stderr[-4000:]}"
  popular = PopularityModel.fit(prepared).top_k(10)[0].tolist()
  return json.loads(proc.stdout.strip().splitlines()[-1]), popular, prepared


@pytest.mark.parametrize("variant", ["exact", "/scann"])
def test_duplicate_rows_and_unknown_users(exports, variant):
  result, popular, _ = exports
  r = result[variant]
  assert r["dup_ids"][0] == r["dup_ids"][1] and r["dup_scores"][0] == r["dup_scores"][1]
  assert r["dup_ids"][2] == r["dup_ids"][3] == r["dup_ids"][5] == popular   # unknown, empty id
  assert r["dup_fallback"] == [False, False, True, True, False, True]
  assert r["dup_ids"][4] != r["dup_ids"][0]                                 # personal
  assert r["empty_batch_shape"] == [0, 10]


@pytest.mark.parametrize("variant", ["exact", "/scann"])
def test_unknown_and_empty_history_tracks(exports, variant):
  result, popular, _ = exports
  r = result[variant]
  assert r["hist_with_unknown"] == r["hist_known"]          # unknown ids are ignored
  assert not r["hist_with_unknown_fallback"]
  assert r["only_unknown"] == popular and r["only_unknown_fallback"]
  assert r["all_empty"] == popular
  assert len(r["unknown_country"]) == 10                    # unknown country: OOV, no error


@pytest.mark.parametrize("variant", ["exact", "/scann"])
def test_exclusions_with_duplicates_and_unknown_ids(exports, variant):
  result, _, _ = exports
  r = result[variant]
  assert r["excluded_target"] not in r["excluded"]
  assert len(r["excluded"]) == len(set(r["excluded"])) == 10


def test_k_above_catalogue_and_towers(exports):
  result, _, prepared = exports
  assert result["big_k"] == [prepared.n_items] * 2
  assert result["big_k_scann"] == [prepared.n_items] * 2
  # A known user's stored history is excluded: with k = the catalogue, those
  # slots come back empty ("" / EMPTY_SCORE) after the real results.
  ids, scores = result["big_known_ids"], result["big_known_scores"]
  n_empty = ids.count("")
  assert n_empty > 0 and ids[-n_empty:] == [""] * n_empty
  assert scores[-n_empty:] == [EMPTY_SCORE] * n_empty
  assert all(np.isfinite(scores[:-n_empty])) and len(set(ids[:-n_empty])) == len(ids) - n_empty
  assert result["query_finite"]
  assert result["query_unknown_track_ignored"] < 1e-5
