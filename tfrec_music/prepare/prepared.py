"""From canonical tables to splits, cold/warm marks and vocabularies.

`prepare` is the one preparation path every model uses: deduplicate, k-core,
hold out cold users, split, mark warm and cold items, build vocabularies. Each
step records what it kept and dropped in the data report.
"""

import dataclasses
import hashlib
import io as io_lib
import json
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import Tables
from tfrec_music.prepare import filtering
from tfrec_music.prepare import split as split_lib
from tfrec_music.prepare import vocabulary

SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  """How tables become splits.

  Attributes:
    kcore: Minimum interactions per user (default 5; 0 or 1 disables). Users
      with fewer are dropped (counted in the report); items are never dropped:
      every item in the interactions or the items table stays a candidate.
    split: `"leave_one_out"` (temporal when timestamps exist) or `"ratio"`.
    ratios: Train/valid/test shares for the ratio split.
    warm_share: Share of catalogue items, by training degree, marked warm
      (default 0.2: the 20% most-interacted items are warm, the rest cold).
    cold_user_share: Share of users held out of training entirely, evaluated
      from their history alone (the `cold_user` slice). 0 disables.
    dedup: Merge repeated (user, item) pairs (counted in the report).
    seed: Seed of every random choice in preparation.
  """

  kcore: int = 5
  split: str = "leave_one_out"
  ratios: Tuple[float, float, float] = (0.8, 0.1, 0.1)
  warm_share: float = 0.2
  cold_user_share: float = 0.05
  dedup: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.split not in ("leave_one_out", "ratio"):
      raise ValueError("`split` should be one of ('leave_one_out', 'ratio'). "
                       f"Received: `split` = {self.split!r}.")
    if not 0.0 < self.warm_share <= 1.0:
      raise ValueError("`warm_share` should be in (0, 1]. "
                       f"Received: `warm_share` = {self.warm_share}.")


@dataclasses.dataclass
class PreparedData:
  """Splits, catalogue and vocabularies of one data set.

  Attributes:
    train, valid, test: Interaction frames of the split.
    items: The catalogue (every item in the interactions or the items table)
      in catalogue-index order, with whatever content columns the items table
      had.
    users: Users table (or None).
    user_links: Friendships (or None).
    cold_user_history: Interactions of held-out users, except their last.
    cold_user_test: The last interaction of each held-out user.
    warm_items: [n_items] bool, True for warm items (the `new` slice, items
      with no training interaction, is `item_train_counts == 0`).
    item_train_counts: [n_items] training interactions per item.
    vocabularies: Feature name -> tokens, from the training split only.
    config: The `PrepareConfig` used.
    fingerprint: Hash of the input interactions and the config.
  """

  train: pd.DataFrame
  valid: pd.DataFrame
  test: pd.DataFrame
  items: pd.DataFrame
  users: Optional[pd.DataFrame]
  user_links: Optional[pd.DataFrame]
  cold_user_history: pd.DataFrame
  cold_user_test: pd.DataFrame
  warm_items: np.ndarray
  item_train_counts: np.ndarray
  vocabularies: Dict[str, List[str]]
  config: PrepareConfig
  fingerprint: str
  name: str = "data"

  @property
  def n_items(self) -> int:
    """Catalogue size."""
    return len(self.items)

  @property
  def item_ids(self) -> np.ndarray:
    """[n_items] catalogue item ids in index order."""
    return self.items["item_id"].to_numpy()

  def item_index(self, item_ids) -> np.ndarray:
    """Maps item ids to catalogue indices (-1 for ids not in the catalogue)."""
    index = pd.Index(self.items["item_id"])
    return index.get_indexer(pd.Series(item_ids).astype(str))

  def item_slices(self) -> Dict[str, np.ndarray]:
    """Slice name -> [n_items] bool mask, for the evaluation library.

    `cold` and `warm` split the catalogue by training degree; `new` holds the
    items no training row names (placed by content where the model has it).
    """
    return {"cold": ~self.warm_items, "warm": self.warm_items.copy(),
            "new": self.item_train_counts == 0}

  def user_histories(self, frame: pd.DataFrame) -> Dict[str, np.ndarray]:
    """User id -> catalogue indices of the user's items in `frame`, in order."""
    idx = self.item_index(frame["item_id"])
    out = {}
    for user, rows in pd.Series(idx).groupby(frame["user_id"].to_numpy(), sort=False):
      out[user] = rows.to_numpy()
    return out

  def save(self, directory: str) -> None:
    """Writes splits (Parquet), vocabularies and metadata to `directory`."""
    io.makedirs(directory)
    for name in SPLITS + ("cold_user_history", "cold_user_test"):
      _write_parquet(getattr(self, name), io.join(directory, f"{name}.parquet"))
    _write_parquet(self.items, io.join(directory, "items.parquet"))
    if self.users is not None:
      _write_parquet(self.users, io.join(directory, "users.parquet"))
    if self.user_links is not None:
      _write_parquet(self.user_links, io.join(directory, "user_links.parquet"))
    vocabulary.save_vocabularies(self.vocabularies, io.join(directory, "vocab"))
    meta = {"config": dataclasses.asdict(self.config), "fingerprint": self.fingerprint,
            "name": self.name, "warm_items": self.warm_items.astype(int).tolist(),
            "item_train_counts": self.item_train_counts.astype(int).tolist()}
    io.write_text(io.join(directory, "prepared.json"), json.dumps(meta) + "\n")

  @classmethod
  def load(cls, directory: str) -> "PreparedData":
    """Reads what `save` wrote."""
    meta = json.loads(io.read_text(io.join(directory, "prepared.json")))
    frames = {}
    for name in SPLITS + ("cold_user_history", "cold_user_test", "items", "users",
                          "user_links"):
      path = io.join(directory, f"{name}.parquet")
      frames[name] = _read_parquet(path) if io.exists(path) else None
    config = meta["config"]
    config["ratios"] = tuple(config["ratios"])
    return cls(**frames, warm_items=np.asarray(meta["warm_items"], dtype=bool),
               item_train_counts=np.asarray(meta["item_train_counts"], dtype=np.int64),
               vocabularies=vocabulary.load_vocabularies(io.join(directory, "vocab")),
               config=PrepareConfig(**config), fingerprint=meta["fingerprint"],
               name=meta["name"])


def _write_parquet(frame: pd.DataFrame, path: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Through a buffer: pyarrow cannot write to a GFile (gs://, ram://) directly.
  buffer = io_lib.BytesIO()
  frame.to_parquet(buffer, index=False)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


def _read_parquet(path: str) -> pd.DataFrame:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    frame = pd.read_parquet(io_lib.BytesIO(f.read()))
  if "tags" in frame.columns:
    frame["tags"] = [list(t) for t in frame["tags"]]
  return frame


def fingerprint_tables(tables: Tables, config: PrepareConfig) -> str:
  """A short hash of the interactions and the preparation config."""
  h = hashlib.sha256()
  cols = [c for c in ("user_id", "item_id", "timestamp", "rating", "weight")
          if c in tables.interactions.columns]
  h.update(pd.util.hash_pandas_object(tables.interactions[cols], index=False).values.tobytes())
  h.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
  return h.hexdigest()[:16]


def mark_warm(item_train_counts: np.ndarray, warm_share: float) -> np.ndarray:
  """Marks the `warm_share` most-interacted items warm (ties: lower index first).

  Args:
    item_train_counts: [n_items] training interactions per item.
    warm_share: Share of items to mark warm.

  Returns:
    [n_items] bool mask.
  """
  n = len(item_train_counts)
  n_warm = int(round(warm_share * n))
  order = np.lexsort((np.arange(n), -item_train_counts))
  warm = np.zeros(n, dtype=bool)
  warm[order[:n_warm]] = True
  return warm


def prepare(tables: Tables, config: PrepareConfig = PrepareConfig(),
            report: Optional[DataReport] = None) -> PreparedData:
  """Runs the whole preparation on validated tables.

  Deduplicate (causally: a pair's play count and rating come from the listens
  up to its split point), drop users under the minimum activity, hold out
  cold users, split, keep every item of the data as a candidate, mark warm
  and cold items, build vocabularies from the training split.

  Args:
    tables: Validated canonical tables.
    config: Preparation settings.
    report: Data report to add the counts of every step to.

  Returns:
    The prepared data.
  """
  report = report if report is not None else DataReport()
  start = time.perf_counter()
  interactions = tables.interactions
  listens = None
  if config.dedup:
    interactions, listens = filtering.deduplicate(interactions, report, return_listens=True)
  all_item_ids = interactions["item_id"].unique()
  interactions = filtering.kcore(interactions, config.kcore, report)
  interactions, cold_history, cold_test = split_lib.hold_out_users(
      interactions, config.cold_user_share if config.split == "leave_one_out" else 0.0,
      config.seed, report)
  if config.split == "leave_one_out":
    parts = split_lib.leave_one_out(interactions, config.seed, report)
    if "timestamp" in interactions.columns:
      parts = filtering.causal_totals(parts, listens, SPLITS, report)
      cold = filtering.causal_totals({"history": cold_history, "target": cold_test}, listens,
                                     ("history", "target"), report)
      cold_history, cold_test = cold["history"], cold["target"]
  else:
    parts = split_lib.ratio_split(interactions, config.ratios, config.seed, report)

  # Every item of the data stays a candidate, whatever the user filter dropped.
  catalogue_ids = pd.Index(all_item_ids).astype(str)
  if tables.items is not None:
    catalogue_ids = catalogue_ids.union(pd.Index(tables.items["item_id"]).astype(str))
  catalogue_ids = np.sort(catalogue_ids.unique().to_numpy())
  if tables.items is not None:
    items = tables.items.set_index("item_id").reindex(catalogue_ids).reset_index()
    report.record("catalogue", items_in_table=len(tables.items),
                  items_in_table_without_interactions=int(
                      (~tables.items["item_id"].isin(all_item_ids)).sum()))
  else:
    items = pd.DataFrame({"item_id": catalogue_ids})
  counts = parts["train"]["item_id"].value_counts()
  item_train_counts = counts.reindex(catalogue_ids, fill_value=0).to_numpy().astype(np.int64)
  warm = mark_warm(item_train_counts, config.warm_share)
  users = tables.users
  vocabs = vocabulary.build_vocabularies(parts["train"], items, users)
  report.record("catalogue", items=len(items), warm_items=int(warm.sum()),
                cold_items=int((~warm).sum()),
                items_without_training_interactions=int((item_train_counts == 0).sum()))
  report.record("vocabularies", **{name: len(v) for name, v in vocabs.items()})
  report.record("prepare", seconds=round(time.perf_counter() - start, 3))
  return PreparedData(train=parts["train"], valid=parts["valid"], test=parts["test"],
                      items=items, users=users, user_links=tables.user_links,
                      cold_user_history=cold_history, cold_user_test=cold_test,
                      warm_items=warm, item_train_counts=item_train_counts,
                      vocabularies=vocabs, config=config,
                      fingerprint=fingerprint_tables(tables, config), name=tables.name)
