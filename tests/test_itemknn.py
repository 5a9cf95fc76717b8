"""ItemKNN: cosine neighbours by hand and against numpy, its serving product, the family."""

import argparse

import numpy as np
import pytest
import scipy.sparse as sp

import tfrec_music  # noqa: F401
import tensorflow as tf

from item_item_checks import check_cli_run
from item_item_checks import check_export_reproduces_metrics
from item_item_checks import tiny_run
from tfrec_music.models.item_item import HistoryQueryModel
from tfrec_music.models.item_item import choose_value
from tfrec_music.models.itemknn import ItemKNNFamily
from tfrec_music.models.itemknn import NeighbourProduct
from tfrec_music.models.itemknn import cosine_neighbours
from tfrec_music.models.itemknn import neighbour_matrix

# Users x items (a, b, c): u0 played a, b; u1 a, b, c; u2 b, c.
X3 = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], np.float32))


def test_golden_three_by_three():
  # Columns a = (1,1,0), b = (1,1,1), c = (0,1,1): |a| = |c| = sqrt 2, |b| = sqrt 3;
  # a.b = 2, a.c = 1, b.c = 2, so cos(a,b) = cos(b,c) = 2/sqrt 6 = 0.8165, cos(a,c) = 1/2.
  # Ties keep the lower index: b's neighbours are a, then c.
  indices, sims = cosine_neighbours(X3, k=2)
  np.testing.assert_array_equal(indices, [[1, 2], [0, 2], [1, 0]])
  s6 = 2 / np.sqrt(6)
  np.testing.assert_allclose(sims, [[s6, 0.5], [s6, s6], [s6, 0.5]], rtol=1e-6)
  # shrink 1: a.b / (sqrt 6 + 1) = 0.5798, a.c / (2 + 1) = 0.3333.
  _, shrunk = cosine_neighbours(X3, k=2, shrink=1.0)
  np.testing.assert_allclose(shrunk[0], [2 / (np.sqrt(6) + 1), 1 / 3], rtol=1e-6)
  # A user who played a and c: b gets sim(a,b) + sim(c,b) = 1.633, a gets sim(c,a) = 0.5, c
  # gets sim(a,c) = 0.5. With K = 1, a keeps only b and c only b: a and c score 0.
  history = sp.csr_matrix(np.array([[1, 0, 1]], np.float32))
  np.testing.assert_allclose((history @ neighbour_matrix(indices, sims, 2)).toarray(),
                             [[0.5, 2 * s6, 0.5]], rtol=1e-6)
  np.testing.assert_allclose((history @ neighbour_matrix(indices, sims, 1)).toarray(),
                             [[0.0, 2 * s6, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("users,items,k,shrink,block", [
    (6, 5, 2, 0.0, 1 << 24), (40, 60, 7, 0.0, 300), (120, 90, 20, 5.0, 1000),
    (30, 8, 50, 0.0, 1 << 24)])
def test_neighbours_match_numpy(users, items, k, shrink, block):
  rng = np.random.default_rng(users + items)
  dense = (rng.random((users, items)) < 0.2) * rng.integers(1, 4, (users, items))
  dense[:, 0] = 0  # an item nobody played: no neighbours, nobody's neighbour
  indices, sims = cosine_neighbours(sp.csr_matrix(dense.astype(np.float32)), k, shrink,
                                    block_entries=block)
  norms = np.sqrt((dense.astype(np.float64) ** 2).sum(0))
  with np.errstate(divide="ignore", invalid="ignore"):
    ref = dense.T.astype(np.float64) @ dense / (norms[:, None] * norms[None, :] + shrink)
  ref = np.nan_to_num(ref)
  np.fill_diagonal(ref, 0.0)
  width = min(k, items - 1)
  assert indices.shape == (items, width)
  for i in range(items):
    expected = np.sort(ref[i][ref[i] > 0])[::-1][:width]
    got = sims[i][indices[i] >= 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # the K largest, in order
    np.testing.assert_allclose(ref[i, indices[i][indices[i] >= 0]], got, rtol=1e-5)
    assert i not in indices[i]
  assert (indices[0] == -1).all() and not (indices == 0).any()


@pytest.mark.parametrize("batch,width", [(1, 1), (5, 7), (32, 40)])
def test_serving_product_matches_numpy(batch, width):
  rng = np.random.default_rng(batch)
  n = 30
  train = sp.csr_matrix((rng.random((50, n)) < 0.3).astype(np.float32))
  matrix = neighbour_matrix(*cosine_neighbours(train, 6), 6)
  ids = np.array([f"t{i}" for i in range(n)])
  popularity = np.arange(n, dtype=np.float32)[::-1]
  histories = rng.integers(-2, n, (batch, width))  # -2: padding "", -1: an unknown id
  histories[0] = -2  # no history at all: popularity
  weights = rng.integers(1, 9, (batch, width)).astype(np.float32)
  names = np.where(histories >= 0, ids[np.maximum(histories, 0)],
                   np.where(histories == -1, "unknown", ""))
  for weighting in ("binary", "log1p"):
    model = HistoryQueryModel(ids, NeighbourProduct(matrix), weighting, popularity)
    got = model({"history": tf.constant(names.astype(object)),
                 "weights": tf.constant(weights)}).numpy()
    dense = np.zeros((batch, n), np.float32)
    for row in range(batch):
      for col, w in zip(histories[row], weights[row]):
        if col >= 0:
          dense[row, col] += np.log1p(w) if weighting == "log1p" else 1.0
    if weighting == "binary":
      dense = np.minimum(dense, 1.0)
    expected = (sp.csr_matrix(dense) @ matrix).toarray()
    expected[0] = popularity
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_local_search_walks_to_the_peak():
  curve = {1: 0.1, 2: 0.3, 3: 0.5, 4: 0.4, 5: 0.2}
  tried = []

  def hr(v):
    tried.append(v)
    return curve[v]

  assert choose_value([5, 1, 3, 2, 4], hr, "local") == 3 and set(tried) == {2, 3, 4}
  rising = {v: v / 10 for v in range(1, 9)}
  assert choose_value(list(rising), rising.get, "local") == 8
  assert choose_value([1, 2, 3], {1: 0.2, 2: 0.2, 3: 0.2}.get, "full") == 1  # first on ties
  assert choose_value([7], {7: 0.0}.get, "local") == 7


def test_config_and_flags():
  parser = argparse.ArgumentParser()
  ItemKNNFamily.add_arguments(parser.add_argument_group("itemknn"))
  args = parser.parse_args(["--neighbours", "10,30", "--shrink", "5", "--weighting", "log1p"])
  config = ItemKNNFamily.make_config("default", {k: v for k, v in vars(args).items()
                                                 if v is not None})
  assert config.neighbours == (10, 30) and config.shrink == 5.0 and config.weighting == "log1p"
  assert ItemKNNFamily.make_config("default", {"neighbours": 40}).neighbours == (40,)
  with pytest.raises(ValueError, match=r"`neighbours` should be positive integers\. "
                                       r"Received: `neighbours` = \(10, 0\)\."):
    ItemKNNFamily.make_config("default", {"neighbours": [10, 0]})
  with pytest.raises(ValueError, match="`weighting` should be one of"):
    ItemKNNFamily.make_config("default", {"weighting": "tfidf"})
  with pytest.raises(ValueError, match="`shrink` should be a non-negative number"):
    ItemKNNFamily.make_config("default", {"shrink": -1.0})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return tiny_run("itemknn", tmp_path_factory.mktemp("itemknn"))


@pytest.mark.slow
def test_cli_run_chooses_k_on_validation_and_prints_the_baselines(tiny):
  metrics = check_cli_run(tiny, "neighbours", "ease")
  assert len([k for k in metrics["model"] if k.startswith("select/neighbours=")]) == 2


@pytest.mark.slow
def test_export_serves_the_scored_model(tiny, tmp_path):
  job, version, _ = tiny
  check_export_reproduces_metrics(job, version, tmp_path)
