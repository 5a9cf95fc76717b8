"""ALS layout: padded blocks stacked by shape, and solves that do not depend on the stacking."""

import dataclasses

import numpy as np
import pytest

import tfrec_music  # noqa: F401

from tfrec_music.models.als import ALSParams
from tfrec_music.models.als import ALSSolver
from tfrec_music.models.als import layout
from tfrec_music.models.als import solver as solver_lib


def _entries(n_rows=37, n_cols=23, n=400, seed=0):
  rng = np.random.default_rng(seed)
  key = np.unique(rng.integers(0, n_rows, n) * n_cols + rng.integers(0, n_cols, n))
  rows, cols = key // n_cols, key % n_cols
  return rows, cols, rng.random(len(rows)), rng.random(len(rows)) + 1.0, n_rows


@pytest.mark.parametrize("stack", [0, 1, 3])
def test_stacks_hold_every_entry_once_and_pad_with_empty_blocks(stack):
  rows, cols, a, b, n = _entries()
  stacks, degree = layout.build_stacks(rows, cols, a, b, n, reg=0.5, reg_scaled=True,
                                       block_entries=24, stack=stack)
  np.testing.assert_array_equal(degree, np.bincount(rows, minlength=n))
  found = []
  for s in stacks:
    index, coef, count = s.index.numpy(), s.coef.numpy(), int(s.count)
    length = index.shape[2] - 2
    assert 1 <= count <= index.shape[0] and (stack or index.shape[0] == 1)
    # Blocks past `count`: scratch rows only, lambda 1, nothing else.
    assert np.all(index[count:, :, 0] == n) and not index[count:, :, 1:].any()
    assert not coef[count:, :, :-1].any() and np.all(coef[count:, :, -1] == 1.0)
    lines = zip(index[:count].reshape(-1, length + 2), coef[:count].reshape(-1, coef.shape[2]))
    for line, c in lines:
      if line[0] == n:
        continue
      k = line[1]
      assert k == degree[line[0]] and not line[2 + k:].any() and c[-1] == 0.5 * k
      found += list(zip([line[0]] * k, line[2:2 + k], c[:k], c[length:length + k]))
  assert sorted(found) == sorted(zip(rows, cols, a.astype(np.float32), b.astype(np.float32)))
  assert [s.entries for s in stacks] == sorted((s.entries for s in stacks), reverse=True)
  positions = layout.positions(stacks, n, n + 5).numpy()
  lines = np.concatenate([s.rows.numpy() for s in stacks])
  solved = degree > 0
  np.testing.assert_array_equal(lines[positions[:n][solved]], np.flatnonzero(solved))
  assert np.all(positions[:n][~solved] == len(lines)) and np.all(positions[n:] == len(lines))


@pytest.mark.parametrize("feedback", ["implicit", "explicit"])
def test_conjugate_gradient_does_not_depend_on_the_stacking(feedback, monkeypatch):
  rows, cols, _, _, n = _entries(seed=1)
  values = np.random.default_rng(2).integers(1, 6, len(rows)).astype(np.float64)
  params = ALSParams(rank=4, reg=0.5, feedback=feedback, solver="cg", cg_steps=3, iterations=3,
                     block_entries=16)
  runs = []
  for blocks in (1, 2, 64):
    monkeypatch.setattr(solver_lib, "_STACK_BLOCKS", blocks)
    solver = ALSSolver(rows, cols, values, n, 23, params)
    runs.append((solver.run(), solver.user_factors.numpy(), solver.item_factors.numpy(),
                 max(int(s.index.shape[0]) for s in solver.user_blocks)))
  assert runs[0][3] == 1 and runs[2][3] > 2
  for losses, users, items, _ in runs[1:]:
    np.testing.assert_allclose(losses, runs[0][0], rtol=1e-5)
    np.testing.assert_allclose(users, runs[0][1], atol=1e-5)
    np.testing.assert_allclose(items, runs[0][2], atol=1e-5)
  # Rows without entries stay at zero.
  exact = ALSSolver(rows, cols, values, n + 3, 23, dataclasses.replace(params, solver="cholesky"))
  exact.run()
  assert not exact.user_factors.numpy()[n:].any()
