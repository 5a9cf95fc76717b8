"""The evaluation protocol: which rows, which exclusions, which slices.

Every scorer (a trained model, a baseline, the oracle) is a factory
`split -> score_fn`, where `score_fn` is a batched function
`user ids [B] -> scores [B, n_items]` over the prepared catalogue (the split
tells a model which history it may use), and goes through `evaluate_scorer`,
so the numbers printed side by side are computed in exactly the same way.

- `valid` rows exclude the user's training items; `test` rows exclude the
  training and validation items (the user's whole history at test time).
- Item slices: `all`, `cold`, `warm` (by training degree, see `prepare`).
- `cold_user`: users held out of training, ranked from their history alone;
  their history items are excluded.
"""

from typing import Callable, Dict, Iterable, Sequence

import numpy as np
import pandas as pd

from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.prepare.prepared import PreparedData

ScoreFn = Callable[[Sequence[str]], np.ndarray]
Scorer = Callable[[str], ScoreFn]


def fixed_scorer(score_fn: ScoreFn) -> Scorer:
  """A scorer that uses the same `score_fn` for every split (baselines, oracle)."""
  return lambda split: score_fn

DEFAULT_KS = (10, 50)


def _exclusions(prepared: PreparedData, history: pd.DataFrame,
                users: np.ndarray):
  """CSR (indptr, indices) of each row's history items, rows in `users` order."""
  idx = prepared.item_index(history["item_id"])
  frame = pd.DataFrame({"u": history["user_id"].to_numpy(), "i": idx})
  frame = frame[frame["i"] >= 0]
  grouped = frame.groupby("u", sort=False)["i"].apply(np.asarray)
  lists = [grouped.get(u, np.zeros(0, dtype=np.int64)) for u in users]
  indptr = np.zeros(len(users) + 1, dtype=np.int64)
  indptr[1:] = np.cumsum([len(x) for x in lists])
  indices = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
  return indptr, indices


def evaluation_rows(prepared: PreparedData, split: str):
  """(user ids [N], target indices [N], exclude CSR, slices) of one split.

  Args:
    prepared: Prepared data.
    split: `"valid"`, `"test"` or `"cold_user"`.

  Returns:
    Tuple ready for `evaluate_retrieval`. Targets outside the catalogue
    cannot occur after `prepare` (the catalogue holds every item).
  """
  if split == "valid":
    rows, history = prepared.valid, prepared.train
  elif split == "test":
    rows, history = prepared.test, pd.concat([prepared.train, prepared.valid])
  elif split == "cold_user":
    rows, history = prepared.cold_user_test, prepared.cold_user_history
  else:
    raise ValueError("`split` should be one of ('valid', 'test', 'cold_user'). "
                     f"Received: `split` = {split!r}.")
  users = rows["user_id"].to_numpy().astype(str)
  targets = prepared.item_index(rows["item_id"])
  if (targets < 0).any():
    raise ValueError(f"{int((targets < 0).sum())} {split} targets are not in the catalogue.")
  return users, targets, _exclusions(prepared, history, users), prepared.item_slices()


def evaluate_scorer(scorer: Scorer, prepared: PreparedData,
                    splits: Iterable[str] = ("valid", "test"),
                    ks: Sequence[int] = DEFAULT_KS,
                    cold_users: bool = True, chunk_size: int = 512,
                    lists: bool = True) -> Dict[str, float]:
  """Full-ranking metrics of one scorer, keyed `<split>/<slice>/<metric>`.

  Args:
    scorer: split name (`valid`, `test`, `cold_user`) -> score_fn, a batched
      `user ids [B] -> scores [B, n_items]` in catalogue order. Users of the
      `cold_user` split were never trained on: the model must place them from
      their history, or fall back.
    prepared: Prepared data.
    splits: Splits to evaluate.
    ks: Cut-offs for HR, NDCG and Recall.
    cold_users: Also evaluate the `cold_user` slice of the test split (when
      the preparation held users out).
    chunk_size: Users scored per call of `score_fn`.
    lists: Also report the top-K list metrics (coverage, average popularity);
      False: rank metrics only, faster (early stopping, validation).

  Returns:
    `{"test/all/hr@10": ..., "test/cold/ndcg@10": ..., "test/cold_user/hr@10": ...}`.
  """
  metrics: Dict[str, float] = {}
  popularity = prepared.item_train_counts.astype(np.float64)
  for split in splits:
    users, targets, exclude, slices = evaluation_rows(prepared, split)
    if len(users) == 0:
      continue
    result = evaluate_retrieval(scorer(split), users, targets, n_items=prepared.n_items,
                                exclude=exclude, item_slices=slices, ks=tuple(ks),
                                chunk_size=chunk_size, item_popularity=popularity,
                                lists=lists)
    metrics.update({f"{split}/{key}": value for key, value in result.items()})
  if cold_users and "test" in splits and len(prepared.cold_user_test):
    users, targets, exclude, _ = evaluation_rows(prepared, "cold_user")
    result = evaluate_retrieval(scorer("cold_user"), users, targets, n_items=prepared.n_items,
                                exclude=exclude, item_slices={}, ks=tuple(ks),
                                chunk_size=chunk_size, item_popularity=popularity,
                                lists=lists)
    metrics.update({f"test/cold_user/{key.split('/', 1)[1]}": value
                    for key, value in result.items() if key.startswith("all/")})
  return metrics


def format_metrics_table(metrics_by_scorer: Dict[str, Dict[str, float]],
                         keys: Sequence[str]) -> str:
  """A compact text table: one row per scorer, one column per key present."""
  keys = [k for k in keys if any(k in m for m in metrics_by_scorer.values())]
  short = [k.replace("test/", "") for k in keys]
  width = max([len(s) for s in short] + [8])
  name_width = max(len(n) for n in metrics_by_scorer) + 2
  lines = ["scorer".ljust(name_width) + "".join(s.rjust(width + 2) for s in short)]
  for name, metrics in metrics_by_scorer.items():
    cells = []
    for k in keys:
      v = metrics.get(k)
      cells.append(("-" if v is None or v != v else f"{v:.4f}").rjust(width + 2))
    lines.append(name.ljust(name_width) + "".join(cells))
  return "\n".join(lines)
