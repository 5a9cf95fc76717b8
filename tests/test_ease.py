"""EASE: the closed form by hand and against numpy, the memory refusal, the family."""

import argparse
import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import tfrec_music  # noqa: F401
import tensorflow as tf

from item_item_checks import check_cli_run
from item_item_checks import check_export_reproduces_metrics
from item_item_checks import tiny_run
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables
from tfrec_music.models.ease import DenseProduct
from tfrec_music.models.ease import EASEFamily
from tfrec_music.models.ease import EASESolver
from tfrec_music.models.family import EvalContext
from tfrec_music.models.item_item import HistoryQueryModel
from tfrec_music.models.registry import get_family
from tfrec_music.prepare.prepared import PrepareConfig
from tfrec_music.prepare.prepared import prepare

# Users x items (a, b, c): u0 played a, b; u1 a, b, c; u2 b, c.
X3 = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], np.float32))


def _reference(dense: np.ndarray, lam: float) -> np.ndarray:
  p = np.linalg.inv(dense.T @ dense + lam * np.eye(dense.shape[1]))
  b = np.eye(len(p)) - p / np.diag(p)[None, :]
  np.fill_diagonal(b, 0.0)
  return b


def test_golden_three_by_three():
  # X^T X = [[2,2,1],[2,3,2],[1,2,2]]; + I = [[3,2,1],[2,4,2],[1,2,3]], determinant 16,
  # inverse P = [[8,-4,0],[-4,8,-4],[0,-4,8]] / 16, diag(P) = 0.5, so B = -P / 0.5 off the
  # diagonal: B = [[0,.5,0],[.5,0,.5],[0,.5,0]]. A user who played a scores b 0.5; a and c
  # together score b 1.0.
  solver = EASESolver(X3)
  assert not solver.dual  # 3 users, 3 items: the item-side inverse
  b = solver.weights(1.0)
  np.testing.assert_allclose(b, [[0, .5, 0], [.5, 0, .5], [0, .5, 0]], atol=1e-6)
  np.testing.assert_allclose(np.array([[1, 0, 0], [1, 0, 1]], np.float32) @ b,
                             [[0, .5, 0], [0, 1., 0]], atol=1e-6)
  # The training users' scores X B: u0 = (a,b) -> (.5, .5, .5), u1 -> (.5, 1, .5), u2 -> (.5,.5,.5)
  np.testing.assert_allclose(solver.training_scores(1.0),
                             [[.5, .5, .5], [.5, 1., .5], [.5, .5, .5]], atol=1e-6)


@pytest.mark.parametrize("users,items,lam", [(20, 50, 10.0), (50, 20, 10.0), (40, 40, 3.0),
                                              (120, 300, 100.0)])
def test_closed_form_matches_numpy_both_ways(users, items, lam):
  rng = np.random.default_rng(users * items)
  dense = (rng.random((users, items)) < 0.15) * rng.integers(1, 5, (users, items))
  dense = dense.astype(np.float64)
  solver = EASESolver(sp.csr_matrix(dense.astype(np.float32)))
  assert solver.dual == (users < items)
  ref = _reference(dense, lam)
  np.testing.assert_allclose(solver.weights(lam), ref, rtol=1e-4, atol=1e-5)
  # The user-side scores used to choose lambda are X B without B.
  np.testing.assert_allclose(solver.training_scores(lam), dense @ ref, rtol=1e-4, atol=1e-4)
  assert np.all(np.diag(solver.weights(lam)) == 0)


@pytest.mark.parametrize("batch", [1, 6])
def test_serving_product_matches_numpy(batch):
  rng = np.random.default_rng(batch)
  n = 25
  b = _reference((rng.random((40, n)) < 0.3).astype(np.float64), 5.0).astype(np.float32)
  ids = np.array([f"t{i}" for i in range(n)])
  histories = rng.integers(-1, n, (batch, 6))
  names = np.where(histories >= 0, ids[np.maximum(histories, 0)], "")
  model = HistoryQueryModel(ids, DenseProduct(b), "binary", np.zeros(n, np.float32))
  got = model({"history": tf.constant(names.astype(object)),
               "weights": tf.ones((batch, 6))}).numpy()
  multi_hot = np.zeros((batch, n), np.float32)
  for row in range(batch):
    multi_hot[row, histories[row][histories[row] >= 0]] = 1.0
  np.testing.assert_allclose(got, multi_hot @ b, rtol=1e-5, atol=1e-5)


def _wide_prepared(n_items: int, users: int = 40):
  """`users` users sharing a few tracks and each playing a block of their own (n_items in all)."""
  own = (n_items - 5) // users
  rows = []
  for u in range(users):
    tracks = [f"s{i}" for i in range(5)] + [f"t{u * own + i}" for i in range(own)]
    rows += [(f"u{u}", t, 1_600_000_000 + j) for j, t in enumerate(tracks)]
  last = users * own
  rows += [(f"u{users - 1}", f"t{i}", 1_500_000_000) for i in range(last, n_items - 5)]
  frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
  tables = validate_tables(Tables(frame, None, None, name="wide"))
  return prepare(tables, PrepareConfig(kcore=0, cold_user_share=0.0))


def test_a_catalogue_over_the_limit_is_refused_with_the_memory_and_the_fix():
  prepared = _wide_prepared(405)
  config = EASEFamily.make_config("tiny", {"max_items": 400})
  with pytest.raises(ValueError) as error:
    EASEFamily(config, prepared)
  message = str(error.value)
  for part in ("405 items", "0.00 GB", "`max_items` = 400", "--set max_items=405",
               "--model itemknn"):
    assert part in message, part
  EASEFamily(EASEFamily.make_config("tiny", {"max_items": 405}), prepared)  # at the limit: fine
  with pytest.raises(ValueError, match=r"`lambdas` should be positive numbers\. "
                                       r"Received: `lambdas` = \[10, -1\]\."):
    EASEFamily.make_config("tiny", {"lambdas": [10, -1]})


@pytest.mark.slow
def test_baseline_is_skipped_with_a_logged_reason_over_the_default_limit(caplog):
  # 20,005 tracks: over the default 20,000; HetRec's 17,632 artists are under it.
  prepared = _wide_prepared(20_005)
  family_cls = get_family("popularity")
  family = family_cls(family_cls.make_config("default", {}), prepared)
  family.fit("")
  with caplog.at_level(logging.WARNING):
    metrics = family.evaluate(EvalContext())
  assert set(metrics) == {"model", "itemknn"}
  assert "Baseline `ease` skipped: EASE needs a dense items x items matrix: 20,005 items take " \
         "1.60 GB" in caplog.text


def test_flags_parse_into_config_fields():
  parser = argparse.ArgumentParser()
  EASEFamily.add_arguments(parser.add_argument_group("ease"))
  args = parser.parse_args(["--lambdas", "50,500", "--max-items", "30000", "--search", "full"])
  config = EASEFamily.make_config("default", {k: v for k, v in vars(args).items()
                                              if v is not None})
  assert config.lambdas == (50.0, 500.0) and config.max_items == 30000
  assert config.search == "full"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return tiny_run("ease", tmp_path_factory.mktemp("ease"))


@pytest.mark.slow
def test_cli_run_chooses_lambda_on_validation(tiny):
  metrics = check_cli_run(tiny, "lambda", "itemknn")
  # tiny's grid is 10, 100, 1000; the local search starts at 100 and tries both neighbours.
  assert len([k for k in metrics["model"] if k.startswith("select/lambda=")]) == 3


@pytest.mark.slow
def test_export_serves_the_scored_model(tiny, tmp_path):
  job, version, _ = tiny
  check_export_reproduces_metrics(job, version, tmp_path)
