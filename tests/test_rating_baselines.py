"""Rating baselines: closed-form biases by hand, ridge solves against numpy, fallbacks."""

import numpy as np
import pandas as pd
import pytest

from tfrec_music.models.rating_baselines import BiasedBaseline
from tfrec_music.models.rating_baselines import BiasedMF
from tfrec_music.models.rating_baselines import GlobalMean
from tfrec_music.models.rating_baselines import IdIndex
from tfrec_music.models.rating_baselines import _solve_rows
from tfrec_music.models.rating_baselines import fit_rating_baselines


def _grid(alpha, user_bias, item_bias, factors=None):
  """Every (user, item) pair of a full grid with its exact rating."""
  rows = []
  for u, bu in enumerate(user_bias):
    for i, bi in enumerate(item_bias):
      r = alpha + bu + bi
      if factors is not None:
        r += float(factors[0][u] @ factors[1][i])
      rows.append((f"u{u}", f"i{i}", r))
  return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def test_global_mean_by_hand():
  # (1 + 2 + 4 + 5) / 4 = 3.
  model = GlobalMean().fit(["a", "b", "a", "c"], ["x", "x", "y", "y"], [1, 2, 4, 5])
  np.testing.assert_array_equal(model.predict(["a", "zzz"], ["x", "new"]), [3.0, 3.0])


def test_biased_baseline_recovers_known_biases_on_a_full_grid():
  # alpha = 3; users -1, 0, +1 (sum 0); items +0.5, -0.5 (sum 0).
  # Full grid, so mean(rating) = 3 exactly; with reg = 0 the first item step
  # gives beta_i = mean over users of (r - 3) = beta_i (user biases sum to 0),
  # then beta_u = mean over items of (r - 3 - beta_i) = beta_u.
  frame = _grid(3.0, [-1.0, 0.0, 1.0], [0.5, -0.5])
  model = BiasedBaseline(reg_user=0.0, reg_item=0.0).fit(frame.user_id, frame.item_id,
                                                         frame.rating)
  assert model.alpha == pytest.approx(3.0)
  bu, bi = model.biases(["u0", "u1", "u2"], ["i0", "i1", "i0"])
  np.testing.assert_allclose(bu, [-1.0, 0.0, 1.0], atol=1e-12)
  np.testing.assert_allclose(bi, [0.5, -0.5, 0.5], atol=1e-12)
  np.testing.assert_allclose(model.predict(frame.user_id, frame.item_id), frame.rating,
                             atol=1e-12)


def test_biased_baseline_regularization_by_hand():
  # One pass (iterations=1), reg 2: ratings of user a: 5 on x, 3 on y; user b: 1 on x.
  # alpha = (5 + 3 + 1) / 3 = 3; residuals: a-x 2, a-y 0, b-x -2.
  # Item step (bu = 0): beta_x = (2 - 2) / (2 + 2) = 0; beta_y = 0 / (1 + 2) = 0.
  # User step: beta_a = (2 + 0) / (2 + 2) = 0.5; beta_b = -2 / (1 + 2) = -2/3.
  model = BiasedBaseline(reg_user=2.0, reg_item=2.0, iterations=1).fit(
      ["a", "a", "b"], ["x", "y", "x"], [5.0, 3.0, 1.0])
  bu, bi = model.biases(["a", "b"], ["x", "y"])
  np.testing.assert_allclose(bu, [0.5, -2.0 / 3.0])
  np.testing.assert_allclose(bi, [0.0, 0.0])
  # More regularization pulls the biases of sparse ids harder toward 0.
  strong = BiasedBaseline(reg_user=50.0, reg_item=50.0).fit(["a", "a", "b"], ["x", "y", "x"],
                                                            [5.0, 3.0, 1.0])
  assert np.all(np.abs(strong.biases(["a", "b"], ["x", "y"])[0]) < np.abs(bu))


def test_unseen_ids_fall_back_to_what_is_known():
  frame = _grid(3.0, [-1.0, 1.0], [0.5, -0.5])
  base = BiasedBaseline(0.0, 0.0).fit(frame.user_id, frame.item_id, frame.rating)
  # Unknown user: alpha + beta_item; unknown item: alpha + beta_user; both: alpha.
  np.testing.assert_allclose(base.predict(["new", "u1", "new"], ["i0", "new", "new"]),
                             [3.5, 4.0, 3.0], atol=1e-12)
  mf = BiasedMF(dim=2, reg=0.1, reg_bias=0.0).fit(frame.user_id, frame.item_id, frame.rating)
  np.testing.assert_allclose(mf.predict(["new", "new"], ["i0", "new"]),
                             [mf.baseline.alpha + mf.baseline.biases(["u0"], ["i0"])[1][0],
                              mf.baseline.alpha])


def test_id_index_marks_unknown_ids():
  index = IdIndex(["b", "a", "b"])
  assert len(index) == 2
  np.testing.assert_array_equal(index(["a", "b", "c"]), [1, 0, -1])


@pytest.mark.parametrize("n,d,obs", [(1, 1, 3), (5, 3, 40), (30, 8, 600)])
def test_solve_rows_matches_numpy_ridge_per_row(n, d, obs):
  rng = np.random.default_rng(n + d)
  index = rng.integers(0, n + 2, size=obs)  # some rows have no observation
  other = rng.normal(size=(obs, d))
  targets = rng.normal(size=obs)
  reg = rng.uniform(0.1, 2.0, size=d)
  got = _solve_rows(index, other, targets, n + 2, reg)
  for row in range(n + 2):
    mask = index == row
    if not mask.any():
      np.testing.assert_array_equal(got[row], 0.0)
      continue
    x, t = other[mask], targets[mask]
    want = np.linalg.solve(x.T @ x + np.diag(reg), x.T @ t)
    np.testing.assert_allclose(got[row], want, rtol=1e-8, atol=1e-10)


def _low_rank_ratings(seed=0, n_users=60, n_items=50, dim=2, noise=0.05):
  rng = np.random.default_rng(seed)
  p = rng.normal(0, 0.7, (n_users, dim))
  q = rng.normal(0, 0.7, (n_items, dim))
  frame = _grid(3.0, rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items), (p, q))
  frame["rating"] += rng.normal(0, noise, len(frame))
  holdout = rng.random(len(frame)) < 0.2
  return frame[~holdout], frame[holdout]


def _rmse(model, frame):
  return float(np.sqrt(np.mean((model.predict(frame.user_id, frame.item_id)
                                - frame.rating) ** 2)))


def test_biased_mf_learns_the_taste_match_the_biases_cannot():
  train, test = _low_rank_ratings()
  base = BiasedBaseline(1.0, 1.0).fit(train.user_id, train.item_id, train.rating)
  mf = BiasedMF(dim=2, reg=0.5, reg_bias=1.0, iterations=20).fit(train.user_id, train.item_id,
                                                                  train.rating)
  # Factor variance is 2 * 0.49^2 ~ 0.48 (RMSE ~0.7 for the biases alone);
  # MF should get close to the 0.05 noise floor.
  assert _rmse(base, test) > 0.5
  assert _rmse(mf, test) < 0.15
  # Deterministic for a seed.
  again = BiasedMF(dim=2, reg=0.5, reg_bias=1.0, iterations=20).fit(train.user_id, train.item_id,
                                                                     train.rating)
  np.testing.assert_array_equal(mf.predict(test.user_id, test.item_id),
                                again.predict(test.user_id, test.item_id))


def test_fit_rating_baselines_chooses_regularization_on_validation():
  train, valid = _low_rank_ratings(seed=1)
  fits = fit_rating_baselines(train, valid, mf_dim=2, bias_regs=(0.1, 1000.0),
                              mf_regs=(0.3, 1000.0))
  # A huge L2 weight flattens every bias / factor: validation must reject it.
  assert fits.chosen["biased/reg"] == 0.1 and fits.chosen["biased_mf/reg"] == 0.3
  assert _rmse(fits.biased_mf, valid) < _rmse(fits.biased, valid) < _rmse(fits.global_mean, valid)
  # Without a validation split the first grid value is taken.
  no_valid = fit_rating_baselines(train, None, mf_dim=2, bias_regs=(1000.0, 0.1),
                                  mf_regs=(1000.0, 0.3))
  assert no_valid.chosen["biased/reg"] == 1000.0


@pytest.mark.parametrize("ratings,match", [([1.0, np.nan], r"ratings\[1\]"),
                                           ([], "empty")])
def test_bad_ratings_are_rejected_with_the_row(ratings, match):
  users = [f"u{k}" for k in range(len(ratings))]
  with pytest.raises(ValueError, match=match):
    BiasedBaseline().fit(users, users, ratings)


def test_bad_arguments_name_the_argument():
  with pytest.raises(ValueError, match="`reg_user`"):
    BiasedBaseline(reg_user=-1.0)
  with pytest.raises(ValueError, match="`dim`"):
    BiasedMF(dim=0)
  with pytest.raises(ValueError, match="same length"):
    GlobalMean().fit(["a"], ["x", "y"], [1.0])
