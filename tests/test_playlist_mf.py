"""Playlist MF: training, name and content features, fold-in, evaluation beside baselines,
export round trip."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import tfrec_music  # noqa: F401
import tensorflow as tf

from conftest import REPO
from conftest import run_python
from tfrec_music.data import synthetic
from tfrec_music.data.registry import LoadedData
from tfrec_music.evaluation.playlist import PlaylistQueries
from tfrec_music.evaluation.playlist import held_out_playlists
from tfrec_music.evaluation.playlist import playlist_names
from tfrec_music.evaluation.playlist import rank_with_exclusions
from tfrec_music.export.retrieval import load_candidates
from tfrec_music.models.family import EvalContext
from tfrec_music.models.playlist_mf import Bag
from tfrec_music.models.playlist_mf import PlaylistMFConfig
from tfrec_music.models.playlist_mf import PlaylistMFFamily
from tfrec_music.models.playlist_mf import PlaylistMFModel
from tfrec_music.models.playlist_mf import negative_distribution
from tfrec_music.models.playlist_mf import pad_indices
from tfrec_music.models.playlist_mf import token_codes
from tfrec_music.models.neighbours import cosine_neighbours
from tfrec_music.models.neighbours import neighbour_matrix
from tfrec_music.models.playlist_mf.cooccurrence import cooccurrence_scores
from tfrec_music.models.playlist_mf.cooccurrence import own_share
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import prepare


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  # The tiny catalogue with more playlists (300 themed playlists of 10-30 tracks).
  catalogue = synthetic.generate("tiny", n_playlists=300, playlist_max_tracks=30)
  loaded = LoadedData(tables=catalogue.tables, oracle=catalogue.oracle,
                      playlists=catalogue.playlists)
  config = PlaylistMFFamily.make_config("tiny", {})
  tables = PlaylistMFFamily.select_tables(loaded, config)
  prepared = prepare(tables, PrepareConfig(cold_user_share=0.2))
  family = PlaylistMFFamily(config, prepared)
  job = tmp_path_factory.mktemp("job")
  family.fit(str(job))
  metrics = family.evaluate(EvalContext(oracle=catalogue.oracle, loaded=loaded))
  export = tmp_path_factory.mktemp("export") / "1"
  signatures = family.save(str(export))
  return family, prepared, metrics, str(job), str(export), signatures


def test_select_tables_makes_playlists_the_users_ordered_by_position(trained):
  _, prepared, _, _, _, _ = trained
  assert prepared.users is not None and "name" in prepared.users.columns
  assert prepared.train["user_id"].str.startswith("p").all()
  # Held-out playlists come back whole, in `pos` order (timestamp := pos).
  held = held_out_playlists(prepared)
  assert len(held) >= 40
  frame = prepared.cold_user_history
  first = frame["user_id"].iloc[0]
  rows = frame[frame["user_id"] == first].sort_values("timestamp")
  assert held[first][:len(rows)].tolist() == prepared.item_index(rows["item_id"]).tolist()


def test_beats_popularity_and_reports_auc_and_validation_scale(trained):
  _, _, metrics, _, _, _ = trained
  model, popular = metrics["model"], metrics["popularity"]
  for key in ("test/k0/r_precision", "test/k5/r_precision", "test/k10/r_precision",
              "test/seen/r_precision", "test/unseen/r_precision"):
    assert model[key] > 1.5 * popular[key], key
  assert model["test/k5/clicks"] < popular["test/k5/clicks"]
  # Held-out positives against k sampled negatives: far better than chance (0.5).
  assert model["test/seen/auc"] > 0.8
  assert model["test/unseen/auc"] > 0.8
  assert "test/seen/binary_accuracy" not in model  # softmax logits are not probabilities
  assert set(metrics) == {"model", "popularity", "same_artist", "same_album", "oracle"}
  assert metrics["oracle"]["test/k5/r_precision"] > model["test/k5/r_precision"]
  assert PlaylistMFFamily.objective[0] in model       # reported to tuning services
  # Every scorer has the validation slices, so validation figures have a scale.
  for name, values in metrics.items():
    assert values["valid/k5/playlists"] == model["valid/k5/playlists"] > 0, name


def test_early_stopping_keeps_best_weights(trained):
  family, _, _, _, _, _ = trained
  summary = family.fit_summary
  best = max(h["valid_ndcg"] for h in summary["history"])
  assert summary["best_valid_ndcg"] == best
  assert summary["history"][summary["best_epoch"] - 1]["valid_ndcg"] == best


def test_validation_metrics_are_validation_only_and_hold_the_objective(trained):
  family, _, _, _, _, _ = trained
  valid = family.validation_metrics()
  assert PlaylistMFFamily.objective == ("valid/seen_refit/r_precision", "max")
  assert PlaylistMFFamily.objective[0] in valid
  assert all(k.startswith("valid/") for k in valid)
  assert valid["valid/k5/playlists"] > 0


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_fold_in_solves_the_training_objective(trained, loss):
  family, prepared, _, _, _, _ = trained
  held = held_out_playlists(prepared)
  seeds = [t[:5] for t in list(held.values())[:8]]
  config = family.config
  family.config, family._module = dataclasses.replace(config, loss=loss), None
  try:
    module = family.module()
  finally:
    family.config, family._module = config, None
  prior = np.random.default_rng(0).normal(0, 0.3, size=(len(seeds), module.dim + 1))
  theta = module.fold_in(tf.constant(pad_indices(seeds)), tf.constant(prior, tf.float32)).numpy()
  # The objective's gradient in numpy, zero at the solution. The negatives run over the
  # whole catalogue (n <= fold_in_negatives), and
  #   softmax: f = logsumexp_j s_j - mean_seeds s + w |p - prior|^2;
  #   bce:     f = 1/(1+k) [mean_seeds BCE(1, s) + k sum_j q_j BCE(0, s_j)] + w |p - prior|^2,
  # w = fold_in_l2, divided by the seed count with `l2_per_seed`.
  vectors, bias = family.track_arrays()
  x = np.concatenate([vectors, np.ones((len(vectors), 1))], 1).astype(np.float64)
  k = family.config.negatives
  q = family.negative_probability
  l2 = family.fold_in_l2()
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  for row, seed in enumerate(seeds):
    s = x @ theta[row] + bias
    if loss == "softmax":
      p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
      grad = x.T @ p - x[seed].mean(0)
    else:
      grad = (x[seed].T @ (sigmoid(s[seed]) - 1) / len(seed) + k * x.T @ (q * sigmoid(s))) / (1 + k)
    weight = l2 / len(seed) if family.config.l2_per_seed else l2
    grad[:-1] += 2 * weight * (theta[row, :-1] - prior[row, :-1])
    assert np.abs(grad).max() < 1e-3, np.abs(grad).max()
  # No seeds: a zero vector (the name or the popularity fallback decides).
  empty = module.fold_in(tf.constant([[-1, -1]], tf.int64)).numpy()
  assert not empty.any()


def test_name_tokens_are_query_features(trained):
  family, _, _, _, _, _ = trained
  bag = family.model.name_bag
  table = bag.table()
  vocab = family.name_vocabulary
  # A training playlist's vector is its own plus the mean of its name tokens'.
  own = family.model.playlist_embedding.embeddings.numpy()
  own_bias = family.model.playlist_bias.embeddings.numpy()[:, 0]
  names = playlist_names(family.prepared)
  p, b_p = family.playlist_arrays()
  for row in range(3):
    tokens = [vocab.index(t) for t in set(re.split(r"[^a-z0-9]+", names[family.playlist_ids[row]]
                                                   .lower())) if t in vocab]
    np.testing.assert_allclose(p[row], own[row] + table[tokens, :-1].mean(0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(b_p[row], own_bias[row] + table[tokens, -1].mean(), atol=1e-6)
  # A name-only playlist is the mean of its known tokens' [vector, bias]; unknown ones are skipped.
  a, b = vocab[0], vocab[1]
  theta, has_name = family.module().name_theta(tf.constant([f"{a} zzqx {b}", "zzqx", ""]))
  np.testing.assert_allclose(theta.numpy()[0], table[[0, 1]].mean(0), rtol=1e-5, atol=1e-6)
  assert has_name.numpy().tolist() == [True, False, False]


def test_untrained_tracks_keep_their_content_vector(trained):
  family, prepared, _, _, _, _ = trained
  untrained = np.flatnonzero(prepared.item_train_counts == 0)
  assert len(untrained)
  vectors, bias = family.track_arrays()
  content, content_bias = family.model.track_table(content_only=True)
  full, full_bias = family.model.track_table()
  np.testing.assert_allclose(vectors[untrained], content[untrained], rtol=1e-6)
  trained_rows = prepared.item_train_counts > 0
  np.testing.assert_allclose(vectors[trained_rows], full[trained_rows], rtol=1e-6)
  # Its own bias is the lowest trained own bias: content decides among untrained tracks.
  own = (full_bias - content_bias)[trained_rows].min()
  np.testing.assert_allclose(bias[untrained], content_bias[untrained] + own, rtol=1e-5, atol=1e-6)
  assert np.abs(content[untrained]).sum(1).min() > 0   # artist, album and title give a vector


def test_fold_in_of_an_unseen_playlist_ranks_its_own_tracks_high(trained):
  family, prepared, _, _, _, _ = trained
  held = held_out_playlists(prepared)
  names = playlist_names(prepared)
  pid, tracks = next((p, t) for p, t in held.items() if len(t) >= 12)
  assert pid not in set(family.playlist_ids)       # never trained on
  from tfrec_music.evaluation.playlist import PlaylistQueries
  queries = PlaylistQueries([tracks[:10]], [tracks[10:]], np.asarray([names.get(pid, "")]),
                            np.asarray([pid]))
  ranked = rank_with_exclusions(family.scorer(queries), queries.seeds, prepared.n_items)[0]
  position = np.flatnonzero(np.isin(ranked, tracks[10:]))
  popular = np.argsort(-prepared.item_train_counts, kind="stable")
  popular = popular[~np.isin(popular, tracks[:10])]
  # Its remaining tracks sit higher in the folded-in ranking than by popularity.
  assert np.median(position) < np.median(np.flatnonzero(np.isin(popular, tracks[10:])))


def test_export_layout_candidates_and_projector(trained):
  family, prepared, _, job, export, signatures = trained
  for sub in ("saved_model.pb", "scann/saved_model.pb", "candidates/embeddings.npy",
              "candidates/metadata.tsv"):
    assert os.path.exists(os.path.join(export, sub)), sub
  ids, vectors = load_candidates(os.path.join(export, "candidates"))
  track_vectors, bias = family.track_arrays()
  assert ids.tolist() == prepared.item_ids.tolist()
  np.testing.assert_allclose(vectors, np.concatenate([track_vectors, bias[:, None]], 1),
                             rtol=1e-6)
  lines = open(os.path.join(job, "logs", "projector", "metadata.tsv")).read().splitlines()
  assert lines[0] == "item_id\ttitle\tartist" and len(lines) == prepared.n_items + 1
  assert "serving_default" in signatures


def test_round_trip_exact_and_scann_in_fresh_process(trained):
  family, prepared, _, _, export, _ = trained
  held = held_out_playlists(prepared)
  names = playlist_names(prepared)
  pids = list(held)[:12]
  seeds = [prepared.item_ids[held[p][:5]].tolist() for p in pids]
  seeds[1] = seeds[1][:2] + ["", "", ""]            # padding
  seeds[2] = seeds[2][:4] + ["not-a-track"]         # unknown ids are ignored
  k = family.config.top_k
  # Expected in memory: fold-in of the known seeds, seeds excluded, top k.
  seed_index = [prepared.item_index([s for s in row if s in set(prepared.item_ids)])
                for row in seeds]
  out = family.module().query(tf.constant(pad_indices(seed_index)),
                              tf.constant([""] * len(seeds)))
  theta = out["theta"].numpy()
  vectors, bias = family.track_arrays()
  scores = theta[:, :-1] @ vectors.T + bias + theta[:, -1:]
  # Held-out playlists: in no co-occurrence, so nothing of their own to remove.
  assert family.cooccurrence_weight > 0
  scores += family.cooccurrence_weight * cooccurrence_scores(seed_index, family.neighbour_csr)
  expected = prepared.item_ids[rank_with_exclusions(scores, seed_index, k)].tolist()
  name = names[pids[0]]
  popular = PopularityModel.fit(prepared).top_k(k)[0].tolist()
  result = json.loads(run_python(f"""
import json, numpy as np, tfrec_music, tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers ScaNN's ops for the scann/ variant
exact = tf.saved_model.load({export!r})
approx = tf.saved_model.load({export!r} + '/scann')
seeds = tf.constant({json.dumps(seeds)})
blank = tf.constant([''] * {len(seeds)})
e = exact.signatures['serving_default'](seeds=seeds, name=blank)
a = approx.signatures['serving_default'](seeds=seeds, name=blank)
c = exact.signatures['continue_seeds'](seeds=seeds)
named = exact.signatures['serving_default'](seeds=tf.constant([['']]), name=tf.constant([{name!r}]))
nothing = exact.signatures['serving_default'](seeds=tf.constant([['nope']]), name=tf.constant(['zzqx']))
ids = lambda r: r['item_ids'].numpy().astype(str).tolist()
print(json.dumps({{"exact": ids(e), "scann": ids(a), "cont": ids(c),
                  "fallback": e['fallback'].numpy().tolist(),
                  "named": ids(named)[0], "named_fallback": bool(named['fallback'].numpy()[0]),
                  "nothing": ids(nothing)[0], "nothing_fallback": bool(nothing['fallback'].numpy()[0])}}))
""").strip().splitlines()[-1])
  assert result["exact"] == expected                 # same top-k as in memory
  assert result["cont"] == expected
  assert not any(result["fallback"])
  recall = np.mean([len(set(x) & set(y)) / k for x, y in zip(result["exact"], result["scann"])])
  assert recall >= 0.9
  for row, seed in enumerate(seeds):                 # seeds never come back
    assert not set(seed) & set(result["exact"][row])
    assert not set(seed) & set(result["scann"][row])
  # A name-only playlist is served from its name, not from popularity.
  assert not result["named_fallback"] and result["named"] != popular
  # Neither known seeds nor a known name token: the popularity fallback.
  assert result["nothing_fallback"] and result["nothing"] == popular


def test_bad_config_messages():
  with pytest.raises(ValueError, match="`negative_sampling` should be 'uniform' or 'popularity'"):
    PlaylistMFConfig(negative_sampling="hard")
  with pytest.raises(ValueError, match="`negatives` should be a positive integer"):
    PlaylistMFConfig(negatives=0)
  with pytest.raises(ValueError, match="`item_features` should be a list"):
    PlaylistMFConfig(item_features=("lyrics",))
  with pytest.raises(ValueError, match="`loss` should be 'softmax' or 'bce'. Received: `loss` = 'x'"):
    PlaylistMFConfig(loss="x")
  with pytest.raises(ValueError, match="`name_prior` should be True or False"):
    PlaylistMFConfig(name_prior=1)
  with pytest.raises(ValueError, match="Unknown hyperparameter"):
    PlaylistMFFamily.make_config("tiny", {"dimension": 3})
  config = PlaylistMFFamily.make_config("tiny", {"item_features": ["artist"]})
  assert dataclasses.asdict(config)["item_features"] == ("artist",)


def test_search_space_declares_the_tuned_knobs():
  import keras_tuner as kt
  hp = kt.HyperParameters()
  overrides = PlaylistMFFamily.search_space(hp)
  assert {"embedding_dim", "l2", "fold_in_l2", "learning_rate"} <= set(overrides)
  config = PlaylistMFFamily.make_config("tiny", overrides)
  assert config.embedding_dim == overrides["embedding_dim"]
  assert {"embedding_dim", "l2", "fold_in_l2", "learning_rate"} <= set(hp.values)


def test_token_codes_by_hand():
  # "chill" and "rock" are in 2 texts each, "pop" and "1"/"2" in one: min_count 2 keeps
  # vocabulary ["chill", "rock"]; "Rock!" lower-cases and loses its "!".
  codes, vocab = token_codes(["chill rock 1", "chill pop 2", "Rock!", ""], min_count=2)
  assert vocab == ["chill", "rock"]
  assert codes.tolist() == [[0, 1], [0, -1], [1, -1], [-1, -1]]


def test_tag_codes_by_hand():
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.playlist_mf.tokens import tag_codes  # pylint: disable=g-import-not-at-top
  # "chill" is on 3 tracks, "rock" on 2 (listed twice on one: counted once), "jazz" on 1.
  tags = pd.Series([["rock", "chill", "rock"], ["chill"], None, np.array(["jazz", "chill", "rock"])])
  codes, vocab = tag_codes(tags, min_count=2)
  assert vocab == ["chill", "rock"]
  assert codes.tolist() == [[0, 1], [0, -1], [-1, -1], [0, 1]]


def test_bag_is_the_mean_of_its_codes():
  bag = Bag(np.array([[0, 1], [1, -1], [-1, -1]]), vocab_size=2, dim=2, stddev=0.1, seed=0)
  bag(tf.constant([0]))  # builds the embeddings
  bag.vectors.set_weights([np.array([[1.0, 2.0], [3.0, 6.0], [9.0, 9.0]])])  # row 2: padding
  bag.bias.set_weights([np.array([[1.0], [-3.0], [9.0]])])
  vectors, bias = bag(tf.constant([0, 1, 2]))
  # Row 0: mean of codes 0 and 1 = [2, 4], bias (1 - 3) / 2 = -1; row 1: code 1 alone;
  # row 2: no code -> zeros (the padding row never counts).
  np.testing.assert_allclose(vectors.numpy(), [[2.0, 4.0], [3.0, 6.0], [0.0, 0.0]])
  np.testing.assert_allclose(bias.numpy(), [-1.0, -3.0, 0.0])


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_softmax_estimates_the_exact_loss(sampling):
  # 400 tracks, skewed popularity; 300 draws a batch (< 400: the sampled path). With the
  # logQ correction, sum_draws exp(s_j) / (m q_j) estimates the partition function, so the
  # mean sampled loss is close to the exact softmax loss of the same weights.
  n, counts = 400, np.random.default_rng(0).zipf(1.5, 400).clip(max=500)
  q = negative_distribution(counts, sampling)
  kwargs = dict(embedding_dim=8, init_stddev=1.0, l2=0.0, negative_sampling=sampling)
  sampled = PlaylistMFModel(20, n, q, PlaylistMFConfig(softmax_negatives=300, **kwargs))
  exact = PlaylistMFModel(20, n, q, PlaylistMFConfig(softmax_negatives=n, **kwargs))
  batch = {"playlist": tf.constant(np.arange(20) % 20, tf.int64),
           "item": tf.constant(np.arange(20) * 7, tf.int64)}
  exact.compute_loss(batch)
  sampled.compute_loss(batch)
  exact.set_weights(sampled.get_weights())
  target = float(exact.compute_loss(batch))
  estimate = np.mean([float(sampled.compute_loss(batch)) for _ in range(30)])
  assert abs(estimate - target) < 0.05 * target, (estimate, target)


def test_own_dropout_trains_the_content_alone():
  # own_dropout = 1: every track's own vector and bias are dropped in training, so a step
  # moves the artist part and leaves the own part as initialized; 0 moves both.
  codes = (np.arange(30) // 3)[:, np.newaxis]                     # 10 artists, 3 tracks each
  batch = tf.data.Dataset.from_tensors({"playlist": tf.constant(np.arange(8) % 4, tf.int64),
                                        "item": tf.constant(np.arange(8) * 3, tf.int64)})
  for dropout in (1.0, 0.0):
    config = PlaylistMFConfig(embedding_dim=4, own_dropout=dropout, learning_rate=0.1)
    model = PlaylistMFModel(4, 30, np.full(30, 1 / 30), config, {"artist": (codes, 10)})
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1))
    model.fit(batch, verbose=0)                                  # builds, one step
    own = model.track_embedding.embeddings.numpy().copy()
    artist = model.item_bags[0].vectors.embeddings.numpy().copy()
    model.fit(batch, verbose=0)
    moved_own = np.abs(model.track_embedding.embeddings.numpy() - own).max()
    moved_artist = np.abs(model.item_bags[0].vectors.embeddings.numpy() - artist).max()
    assert moved_artist > 1e-3
    assert (moved_own == 0.0) if dropout == 1.0 else (moved_own > 1e-3)


def sigkill_and_rerun(tmp_path, model, flags, every, epochs, steps_per_epoch, metric):
  """SIGKILLs `python -m trainer.task --model <model> ...` mid-epoch after its first validated
  epoch, reruns the same command, checks the resume and returns what the rerun reports.

  Checked: the kill landed past the first epoch at a checkpoint step (every `every` steps),
  not before the epoch validated last but one; the rerun resumed there; the history holds
  every epoch once; the best `metric` is the history's best.

  Returns:
    (epochs validated before the kill, step resumed at, the export's `fit` summary).
  """
  from conftest import kill_mid_training  # pylint: disable=g-import-not-at-top
  job, export = str(tmp_path / "job"), str(tmp_path / "export")
  args = [sys.executable, "-m", "trainer.task", "--model", model, "--preset", "tiny",
          "--set", "early_stopping_patience=100", "--epochs", str(epochs),
          "--checkpoint-every", str(every), "--job-dir", job, "--export-dir", export,
          "--verbosity", "INFO", *flags]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  # Killed mid-epoch, once a step checkpoint newer than the first validated epoch exists.
  kill_mid_training(args, job, os.path.join(job, "backup", f"{model}_validation",
                                            "validation_state.json"), env)
  assert not os.path.exists(os.path.join(job, "metrics.json"))
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  step = re.search(r"Resuming from the checkpoint at step (\d+)", second.stderr)
  validated = re.search(r"Resuming: (\d+) epochs validated before", second.stderr)
  assert step and validated, "the rerun started from scratch:\n" + second.stderr[-2000:]
  assert not os.path.exists(os.path.join(job, "backup", model))  # finished: backup gone
  assert os.path.exists(os.path.join(job, "metrics.json"))
  card = json.loads(open(os.path.join(export, model, "1", "model_card.json")).read())
  validated, step, fit = int(validated.group(1)), int(step.group(1)), card["fit"]
  print(f"{model} resume evidence: killed after {validated} validated epochs "
        f"(step >= {validated * steps_per_epoch}, {steps_per_epoch} steps/epoch), "
        f"resumed at step {step}")
  assert 1 <= validated < epochs
  assert step > steps_per_epoch and step % every == 0
  assert step >= (validated - 1) * steps_per_epoch
  assert fit["resumed_from_step"] == step and fit["resumed_from_epoch"] == validated
  assert [h["epoch"] for h in fit["history"]] == list(range(1, epochs + 1))
  assert fit[f"best_{metric}"] == max(h[metric] for h in fit["history"])
  return validated, step, fit


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_step_checkpoint(tmp_path):
  # Tiny playlists: 290 training rows, batch 16 -> 19 steps an epoch, a checkpoint every 5.
  epochs, every = 10, 5
  sigkill_and_rerun(tmp_path, "playlist_mf", ["--batch-size", "16"], every, epochs,
                    steps_per_epoch=19, metric="valid_ndcg")


def test_non_finite_loss_stops_with_advice(tmp_path):
  catalogue = synthetic.generate("tiny")
  loaded = LoadedData(tables=catalogue.tables, oracle=catalogue.oracle,
                      playlists=catalogue.playlists)
  # Vectors of norm ~1e18: the L2 penalty overflows float32 at the first step.
  config = PlaylistMFFamily.make_config("tiny", {"init_stddev": 1e18})
  prepared = prepare(PlaylistMFFamily.select_tables(loaded, config),
                     PrepareConfig(cold_user_share=0.2))
  with pytest.raises(FloatingPointError, match=r"became inf at epoch 1(, by step 1)?\. Lower the "
                                               r"learning rate \(`--learning-rate`\) or raise `--l2`"):
    PlaylistMFFamily(config, prepared).fit(str(tmp_path))


def test_cooccurrence_term_and_own_share_by_hand():
  # Playlists p0 {t0, t1, t2}, p1 {t0, t1}, p2 {t2, t3}: column norms sqrt2, sqrt2, sqrt2, 1;
  # cos(t0, t1) = 1, cos(t0, t2) = cos(t1, t2) = 1/2, cos(t2, t3) = 1/sqrt2, cos(t0, t3) = 0.
  matrix = sp.csr_matrix((np.ones(7, np.float32), ([0, 0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2, 3])),
                         shape=(3, 4))
  index, sims = cosine_neighbours(matrix, 2)
  assert index.tolist() == [[1, 2], [0, 2], [3, 0], [2, -1]]  # ties: lower index first
  csr = neighbour_matrix(index, sims, 2)
  r = 1 / np.sqrt(2)
  scores = cooccurrence_scores([np.array([0]), np.array([0, 2]), np.array([], np.int64)], csr)
  np.testing.assert_allclose(scores, [[0, 1, 0.5, 0], [0.25, 0.5, 0.25, r / 2], [0, 0, 0, 0]],
                             rtol=1e-6)
  # p0's own row adds 1 / (|s| |j|) to each kept pair (s, j) it holds both of.
  own = matrix[[0, 0]]
  norms = np.array([np.sqrt(2)] * 3 + [1.0])
  share = own_share([np.array([0]), np.array([0, 2])], own, csr, norms)
  np.testing.assert_allclose(share, [[0, 0.5, 0.5, 0], [0.25, 0.25, 0.25, 0]], rtol=1e-6)
  with pytest.raises(ValueError, match="cooccurrence_weights"):
    PlaylistMFConfig(cooccurrence_weights=(1.0, -2.0))


def test_cooccurrence_weight_is_chosen_on_validation_and_scored(trained):
  family, prepared, metrics, _, _, _ = trained
  selection = family.fit_summary["cooccurrence_selection"]
  weights = family.config.cooccurrence_weights
  assert list(selection) == [f"{w:g}" for w in weights]
  best = max(selection, key=selection.get)
  assert family.fit_summary["cooccurrence_weight"] == float(best) == family.cooccurrence_weight
  assert metrics["model"]["select/chosen_cooccurrence_weight"] == float(best)
  assert metrics["model"][f"select/cooccurrence_weight={best}/valid/ndcg"] == selection[best]
  # The selection's figures are the validation K-seed slices' NDCG under each weight.
  valid = np.mean([metrics["model"][f"valid/k{k}/ndcg"] for k in (1, 5, 10)])
  assert valid == pytest.approx(selection[best], abs=1e-5)  # rounded to 5 digits
  # The term moves the scores of held-out playlists: the scorer is logits + w x term.
  held = held_out_playlists(prepared)
  pids = list(held)[:8]
  queries = PlaylistQueries([held[p][:5] for p in pids], [held[p][5:] for p in pids],
                            np.asarray([""] * len(pids), object), np.asarray(pids, object))
  logits, term = family.score_parts(queries)
  assert np.abs(term).sum() > 0
  np.testing.assert_allclose(family.scorer(queries), logits + family.cooccurrence_weight * term,
                             rtol=1e-6)
