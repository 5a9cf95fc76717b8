"""Two-tower retrieval trained from sharded TFRecords, so memory stays flat as data grows.

The recommender idea is the two-tower one (`models/two_tower.py`): a user
tower (id, country, recent tracks) and a track tower (id plus content) in one
space, trained with in-batch softmax. What changes is where the rows live:

1. `materialize` makes one streaming pass over the canonical Parquet shards
   (`interactions-*.parquet`, as `synthetic.write_large` writes them) and
   writes training rows `{user, history, item}` as TFRecord shards: `user` is
   the user's index in order of first appearance, `history` the user's last
   `history_length` earlier tracks (causal: catalogue index + 1, 0 = padding),
   `item` the track's catalogue index. Integer indices keep the final
   vocabularies out of the pass: they are mapped to lookup indices at read
   time through two small tables. Only one read chunk plus the rows of the
   user that spans its end are in memory, never the interactions.
2. `stream_fit` builds the very `TwoTowerFamily` towers and `TwoTowerModel`
   (from a catalogue-only `PreparedData`: items, users, vocabularies and
   training counts, no interaction frames), reads the shards with parallel
   interleave, block shuffle, batch-then-parse, and trains with
   `fit_with_validation` (checkpoints, resume, NaN guard, early stopping).

Split (temporal leave-one-out, as `prepare`): a user's rows must be contiguous
(they are in `write_large`'s shards) and are ordered by `timestamp` within the
user; the last interaction is the test row, the second-last the validation
row, the rest train (users with fewer than 3 interactions are train only). No
k-core filter runs (it needs every row at once). Interactions with tracks
missing from `items.parquet` are dropped and counted in the manifest.

Evaluation is the foundation's full ranking (`evaluate_embeddings`) on a fixed
reservoir sample of `eval_users` users (their valid and test rows, their
histories and the items to exclude: training items for valid, training and
valid items for test), so its memory does not grow with the data either.
"""

import dataclasses
import io as _pyio
import json
import logging
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.evaluation.retrieval import evaluate_embeddings
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.fit_callbacks import EpochTimer
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.two_tower import TwoTowerConfig
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.pipeline.tfrecord import read_shards
from tfrec_music.pipeline.tfrecord import write_shards
from tfrec_music.prepare.prepared import PrepareConfig
from tfrec_music.prepare.prepared import PreparedData
from tfrec_music.prepare.prepared import mark_warm
from tfrec_music.prepare.vocabulary import build_vocabularies
from tfrec_music.prepare.vocabulary import load_vocabularies
from tfrec_music.prepare.vocabulary import save_vocabularies

MANIFEST = "manifest.json"
DONE = "_COMPLETE"
TRAIN = "train"
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------
# Materialization.
# --------------------------------------------------------------------------


def _interaction_files(data_dir: str) -> List[str]:
  from tfrec_music.data.loaders import canonical  # pylint: disable=g-import-not-at-top
  from tfrec_music.data.tables import DataValidationError  # pylint: disable=g-import-not-at-top
  names = canonical.list_dir(data_dir)
  shards = sorted(n for n in names if n.startswith("interactions") and n.endswith(".parquet"))
  if not shards or "items.parquet" not in names:
    raise DataValidationError(
        f"the folder needs interactions*.parquet shards and items.parquet. Found: {names[:20]}.",
        file=io.join(data_dir, "interactions-00000.parquet"),
        fix="write the canonical Parquet shards with `python -m tfrec_music.data.synthetic "
            "--out DIR` (or `synthetic.write_large`).")
  return [io.join(data_dir, n) for n in shards]


def _source_signature(data_dir: str, files: Sequence[str]) -> List[Tuple[str, int]]:
  """(name, size) of the input files: a changed input invalidates a materialization."""
  names = [f.rsplit("/", 1)[-1] for f in files] + ["items.parquet"]
  out = []
  for name in names:
    path = io.join(data_dir, name)
    out.append((name, int(tf.io.gfile.stat(path).length)))
  return out


def _parquet_batches(paths: Sequence[str], read_rows: int
                     ) -> Iterator[Tuple[int, pd.DataFrame]]:
  """(file number, frame with `_row`: 1-based row in its file) per read chunk."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  for number, path in enumerate(paths):
    source = path if "://" not in path else tf.io.gfile.GFile(path, "rb")
    parquet = pq.ParquetFile(source)
    columns = [c for c in ("user_id", "item_id", "timestamp") if c in parquet.schema_arrow.names]
    row = 1
    for batch in parquet.iter_batches(batch_size=read_rows, columns=columns):
      frame = batch.to_pandas()
      frame["_row"] = np.arange(row, row + len(frame), dtype=np.int64)
      frame["_file"] = number
      row += len(frame)
      yield number, frame


class _Pass:
  """State of the one pass over the interactions (see `materialize`)."""

  def __init__(self, files: Sequence[str], items: pd.DataFrame, history_length: int,
               eval_users: int, seed: int):
    self.files = list(files)
    self.item_index = pd.Index(items["item_id"].astype(str))
    self.n_items = len(items)
    self.length = history_length
    self.eval_users = eval_users
    self.rng = np.random.default_rng([seed, 7])
    self.user_pos: Dict[str, int] = {}
    self.user_order: List[str] = []
    self.has_train: List[bool] = []
    self.serving_history: List[np.ndarray] = []
    self.item_counts = np.zeros(self.n_items, dtype=np.int64)
    self.rows = {"read": 0, "train": 0, "valid": 0, "test": 0, "dropped_unknown_item": 0}
    self.eligible = 0
    self.reservoir: List[Dict[str, Any]] = []

  def _error(self, frame: pd.DataFrame, position: int, column: str, problem: str, fix: str):
    from tfrec_music.data.tables import DataValidationError  # pylint: disable=g-import-not-at-top
    return DataValidationError(problem, file=self.files[int(frame["_file"].iat[position])],
                               row=int(frame["_row"].iat[position]), column=column, fix=fix)

  def rows_of_complete_users(self, read_rows: int) -> Iterator[Dict[str, np.ndarray]]:
    """Training-row chunks; the user spanning a chunk's end waits for the next chunk."""
    carry: Optional[pd.DataFrame] = None
    for _, frame in _parquet_batches(self.files, read_rows):
      self.rows["read"] += len(frame)
      if carry is not None and len(carry):
        frame = pd.concat([carry, frame], ignore_index=True)
      users = frame["user_id"].to_numpy()
      starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
      cut = int(starts[-1])
      carry = frame.iloc[cut:].reset_index(drop=True)
      if cut:
        yield from self._process(frame.iloc[:cut].reset_index(drop=True))
    if carry is not None and len(carry):
      yield from self._process(carry)

  def _process(self, frame: pd.DataFrame) -> Iterator[Dict[str, np.ndarray]]:
    """Splits, histories and eval samples of a frame of whole, contiguous users."""
    if frame["user_id"].isna().any() or frame["item_id"].isna().any():
      column = "user_id" if frame["user_id"].isna().any() else "item_id"
      raise self._error(frame, int(np.flatnonzero(frame[column].isna().to_numpy())[0]), column,
                        "the id is missing.", "give every interaction a user_id and an item_id.")
    users = frame["user_id"].astype(str).to_numpy()
    block_start = np.r_[True, users[1:] != users[:-1]]
    starts = np.flatnonzero(block_start)
    block_of_row = np.cumsum(block_start) - 1
    block_user = np.empty(len(starts), dtype=np.int64)
    for b, s in enumerate(starts):
      user = users[s]
      if user in self.user_pos:
        raise self._error(
            frame, int(s), "user_id",
            f"user {user!r} appears again after rows of other users; streaming needs each "
            "user's interactions together (its causal history and leave-one-out split are "
            "built user by user).",
            "sort the interaction shards by user_id (then timestamp), e.g. write them with "
            "`synthetic.write_large`, or load the data in memory without `--stream`.")
      self.user_pos[user] = len(self.user_order)
      block_user[b] = len(self.user_order)
      self.user_order.append(user)
      self.has_train.append(False)
    if "timestamp" in frame.columns:
      order = np.lexsort((frame["timestamp"].to_numpy(), block_of_row))
    else:
      order = np.arange(len(frame))
    cat = self.item_index.get_indexer(frame["item_id"].astype(str).to_numpy()[order])
    block = block_of_row[order]
    known = cat >= 0
    self.rows["dropped_unknown_item"] += int((~known).sum())
    cat, block = cat[known].astype(np.int64), block[known]
    n = len(cat)
    new_block = np.r_[True, block[1:] != block[:-1]] if n else np.zeros(0, bool)
    first = np.flatnonzero(new_block)
    size = np.diff(np.r_[first, n])
    position = np.arange(n) - np.repeat(first, size)
    count = np.repeat(size, size)
    test = (count >= 3) & (position == count - 1)
    valid = (count >= 3) & (position == count - 2)
    train = ~(test | valid)
    history = np.zeros((n, self.length), dtype=np.int64)
    for offset in range(1, self.length + 1):
      rows = np.flatnonzero(position >= offset)
      history[rows, self.length - offset] = cat[rows - offset] + 1
    user = block_user[block]
    self.rows["train"] += int(train.sum())
    self.rows["valid"] += int(valid.sum())
    self.rows["test"] += int(test.sum())
    np.add.at(self.item_counts, cat[train], 1)
    for u in np.unique(user[train]):
      self.has_train[int(u)] = True
    self._serving_histories(first, size, cat, test, history, user)
    self._sample(first, size, cat, user, history, train, valid, test)
    keep = np.flatnonzero(train)
    # Rows are grouped by user; mixing them within the chunk (plus the read-time
    # shuffle across interleaved shards) keeps one user from filling a batch.
    keep = keep[self.rng.permutation(len(keep))]
    if len(keep):
      yield {"user": user[keep], "history": history[keep], "item": cat[keep]}

  def _serving_histories(self, first, size, cat, test, history, user):
    """Each user's last tracks before the test row (what an export serves them from)."""
    for s, k in zip(first, size):
      last = s + k - 1
      if test[last]:
        row = history[last]
      else:  # no held-out rows: the history after the user's last row
        row = np.r_[history[last][1:], cat[last] + 1]
      self.serving_history.append((int(user[s]), row.astype(np.int32)))

  def _sample(self, first, size, cat, user, history, train, valid, test):
    """Reservoir sample (Algorithm R) of users with valid and test rows."""
    for s, k in zip(first, size):
      if k < 3:
        continue
      self.eligible += 1
      if len(self.reservoir) < self.eval_users:
        slot = len(self.reservoir)
        self.reservoir.append({})
      else:
        slot = int(self.rng.integers(0, self.eligible))
        if slot >= self.eval_users:
          continue
      rows = np.arange(s, s + k)
      v, t = rows[valid[rows]][0], rows[test[rows]][0]
      self.reservoir[slot] = {"user": int(user[s]), "valid_item": int(cat[v]),
                              "test_item": int(cat[t]), "valid_history": history[v].copy(),
                              "test_history": history[t].copy(),
                              "train_items": cat[rows[train[rows]]].copy()}


def _is_complete(out_dir: str, params: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  if not (io.exists(io.join(out_dir, DONE)) and io.exists(io.join(out_dir, MANIFEST))):
    return None
  manifest = json.loads(io.read_text(io.join(out_dir, MANIFEST)))
  if manifest.get("params") != params:
    logging.warning("%s holds a materialization of other inputs or settings (%s); writing "
                    "it again with %s.", out_dir, manifest.get("params"), params)
    return None
  return manifest


def materialize(data_dir: str, out_dir: str, history_length: int = 20, *,
                eval_users: int = 2000, shard_rows: int = 250_000, read_rows: int = 131_072,
                seed: int = 0) -> Dict[str, Any]:
  """Writes the training TFRecord shards, vocabularies and eval sample once.

  A folder that already holds a complete materialization (its `_COMPLETE`
  marker is written last) of the same input files (names and sizes) and
  settings is reused as is; an incomplete or different one is written again.

  Files in `out_dir`: `train-NNNNN.tfrecord` (+ `train.features.json`) with
  int64 `user` [B], `history` [B, history_length] and `item` [B];
  `vocab/user_id.txt`, `vocab/item_id.txt` (sorted, training split only);
  `user_order.txt` (user id of each `user` index); `item_train_counts.npy`
  [n_items]; `serving_history.npy` [n_users, history_length] (catalogue index
  + 1 of each user's last tracks before the test row); `eval.npz` (the eval
  sample); copies of `items.parquet` and `users.parquet`; `manifest.json`.

  Args:
    data_dir: Folder of canonical Parquet shards (`interactions*.parquet`,
      `items.parquet`, optional `users.parquet`), each user's rows together.
    out_dir: Destination folder (local or `tf.io.gfile` path).
    history_length: Tracks kept in each row's causal history.
    eval_users: Users sampled (reservoir, seeded) for validation and test.
    shard_rows: Training rows per TFRecord shard.
    read_rows: Parquet rows read at a time (bounds memory).
    seed: Seed of the eval sample and of the row mixing within a chunk.

  Returns:
    The manifest: `rows` (`read`, `train`, `valid`, `test`,
    `dropped_unknown_item`), `users`, `items`, `train_users`, `train_items`,
    `shards`, `seconds`, `params`, plus `reused` (True when nothing was written).

  Raises:
    DataValidationError: missing files, a missing id, or a user whose rows
      are not contiguous (names the file, row and column).
    ValueError: a non-positive `history_length`, `eval_users`, `shard_rows`
      or `read_rows`.
  """
  for name, value in (("history_length", history_length), ("eval_users", eval_users),
                      ("shard_rows", shard_rows), ("read_rows", read_rows)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"`{name}` should be a positive integer. Received: `{name}` = {value!r}.")
  from tfrec_music.data.loaders import canonical  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  files = _interaction_files(data_dir)
  params = {"version": _FORMAT_VERSION,
            "source": [list(s) for s in _source_signature(data_dir, files)],
            "history_length": int(history_length), "eval_users": int(eval_users),
            "seed": int(seed)}
  done = _is_complete(out_dir, params)
  if done is not None:
    return {**done, "reused": True}
  io.makedirs(out_dir)
  for stale in [DONE] + [p.rsplit("/", 1)[-1] for p in
                         tf.io.gfile.glob(io.join(out_dir, f"{TRAIN}-*.tfrecord"))]:
    if io.exists(io.join(out_dir, stale)):
      tf.io.gfile.remove(io.join(out_dir, stale))
  items = canonical.read_parquet_file(io.join(data_dir, "items.parquet"))
  state = _Pass(files, items, history_length, eval_users, seed)
  del items
  paths = write_shards(state.rows_of_complete_users(read_rows), out_dir, TRAIN, shard_rows)

  item_ids = canonical.read_parquet_file(io.join(data_dir, "items.parquet"))["item_id"]
  item_ids = item_ids.astype(str).to_numpy()
  vocabs = {"user_id": sorted(u for u, t in zip(state.user_order, state.has_train) if t),
            "item_id": sorted(item_ids[state.item_counts > 0].tolist())}
  save_vocabularies(vocabs, io.join(out_dir, "vocab"))
  io.write_text(io.join(out_dir, "user_order.txt"), "".join(u + "\n" for u in state.user_order))
  _save_npy(io.join(out_dir, "item_train_counts.npy"), state.item_counts)
  serving = np.zeros((len(state.user_order), history_length), dtype=np.int32)
  for user, row in state.serving_history:
    serving[user] = row
  _save_npy(io.join(out_dir, "serving_history.npy"), serving)
  _save_eval(io.join(out_dir, "eval.npz"), state.reservoir, history_length)
  for name in ("items.parquet", "users.parquet"):
    if io.exists(io.join(data_dir, name)):
      tf.io.gfile.copy(io.join(data_dir, name), io.join(out_dir, name), overwrite=True)
  manifest = {"params": params, "rows": state.rows, "users": len(state.user_order),
              "items": int(len(item_ids)), "train_users": len(vocabs["user_id"]),
              "train_items": len(vocabs["item_id"]), "eval_users": len(state.reservoir),
              "shards": len(paths), "seconds": round(time.perf_counter() - start, 2)}
  io.write_text(io.join(out_dir, MANIFEST), json.dumps(manifest, indent=2) + "\n")
  io.write_text(io.join(out_dir, DONE), "")
  logging.info("materialized %d training rows in %d shards to %s (%.0fs)",
               state.rows["train"], len(paths), out_dir, manifest["seconds"])
  return {**manifest, "reused": False}


def _write_bytes(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)


def _read_bytes(path: str) -> bytes:
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def _save_npy(path: str, array: np.ndarray) -> None:
  buffer = _pyio.BytesIO()
  np.save(buffer, array)
  _write_bytes(path, buffer.getvalue())


def _load_npy(path: str) -> np.ndarray:
  return np.load(_pyio.BytesIO(_read_bytes(path)), allow_pickle=False)


def _csr(lists: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
  indptr = np.zeros(len(lists) + 1, dtype=np.int64)
  indptr[1:] = np.cumsum([len(x) for x in lists])
  indices = (np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64))
  return indptr, indices


def _save_eval(path: str, reservoir: List[Dict[str, Any]], length: int) -> None:
  reservoir = sorted(reservoir, key=lambda r: r["user"])
  valid_ptr, valid_idx = _csr([r["train_items"] for r in reservoir])
  test_ptr, test_idx = _csr([np.r_[r["train_items"], r["valid_item"]] for r in reservoir])
  empty = np.zeros((0, length), np.int64)
  arrays = {"user": np.array([r["user"] for r in reservoir], np.int64),
            "valid_item": np.array([r["valid_item"] for r in reservoir], np.int64),
            "test_item": np.array([r["test_item"] for r in reservoir], np.int64),
            "valid_history": (np.stack([r["valid_history"] for r in reservoir])
                              if reservoir else empty),
            "test_history": (np.stack([r["test_history"] for r in reservoir])
                             if reservoir else empty),
            "valid_exclude_indptr": valid_ptr, "valid_exclude_indices": valid_idx,
            "test_exclude_indptr": test_ptr, "test_exclude_indices": test_idx}
  buffer = _pyio.BytesIO()
  np.savez(buffer, **arrays)
  _write_bytes(path, buffer.getvalue())


def read_manifest(shard_dir: str) -> Dict[str, Any]:
  """The manifest of a complete materialization.

  Raises:
    FileNotFoundError: `shard_dir` holds no complete materialization.
  """
  if not io.exists(io.join(shard_dir, DONE)):
    raise FileNotFoundError(
        f"{shard_dir} holds no complete materialization (no {DONE} marker). Run "
        "`two_tower_stream.materialize(data_dir, shard_dir, history_length)` first.")
  return json.loads(io.read_text(io.join(shard_dir, MANIFEST)))


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class StreamData:
  """What training needs besides the shards: catalogue, vocabularies and index maps.

  Attributes:
    prepared: Catalogue-only `PreparedData` (empty interaction frames) for
      `TwoTowerFamily`.
    user_lookup: [n_users] user-id lookup index of each shard `user` index.
    item_lookup: [n_items + 1] track-id lookup index of each shard history
      value (catalogue index + 1; 0 = padding -> 0).
    user_columns: User feature -> [n_users] lookup index (e.g. `country`).
    eval: The eval sample arrays (see `materialize`).
    manifest: The materialization's manifest.
    user_order: User id of each shard `user` index.
    serving_history: [n_users, history_length] catalogue index + 1 of each
      user's last tracks before the test row (0 = padding).
  """

  prepared: PreparedData
  user_lookup: np.ndarray
  item_lookup: np.ndarray
  user_columns: Dict[str, np.ndarray]
  eval: Dict[str, np.ndarray]
  manifest: Dict[str, Any]
  user_order: List[str]
  serving_history: np.ndarray


def _vocab_frame(vocabs: Dict[str, List[str]]) -> pd.DataFrame:
  """A two-column frame whose unique values are exactly the id vocabularies."""
  users, items = vocabs["user_id"], vocabs["item_id"]
  n = max(len(users), len(items), 1)
  pad = lambda v: (list(v) + [v[0]] * (n - len(v))) if v else [""] * n  # noqa: E731
  return pd.DataFrame({"user_id": pad(users), "item_id": pad(items)})


def load_stream_data(shard_dir: str) -> StreamData:
  """Reads a materialization's small side files (not the shards).

  Raises:
    FileNotFoundError: no complete materialization in `shard_dir`.
  """
  from tfrec_music.data.loaders import canonical  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(shard_dir)
  items = canonical.read_parquet_file(io.join(shard_dir, "items.parquet"))
  items = items.drop(columns=[c for c in items.columns if c.startswith("_")])
  items["item_id"] = items["item_id"].astype(str)
  users = None
  if io.exists(io.join(shard_dir, "users.parquet")):
    users = canonical.read_parquet_file(io.join(shard_dir, "users.parquet"))
    users = users.drop(columns=[c for c in users.columns if c.startswith("_")])
    users["user_id"] = users["user_id"].astype(str)
    users = users.drop_duplicates("user_id")
  ids = load_vocabularies(io.join(shard_dir, "vocab"))
  if not ids.get("user_id") or not ids.get("item_id"):
    raise ValueError(f"{shard_dir} has no training rows (empty vocabularies): every user "
                     "has fewer than 3 interactions or no track is in items.parquet.")
  empty_vocab = {k: [v for v in ids[k] if v != ""] for k in ("user_id", "item_id")}
  frame = _vocab_frame(empty_vocab)
  vocabs = build_vocabularies(frame, items, users)
  vocabs["user_id"], vocabs["item_id"] = ids["user_id"], ids["item_id"]
  counts = _load_npy(io.join(shard_dir, "item_train_counts.npy")).astype(np.int64)
  empty = pd.DataFrame({"user_id": pd.Series([], dtype=object),
                        "item_id": pd.Series([], dtype=object),
                        "timestamp": pd.Series([], dtype=np.int64)})
  prepared = PreparedData(
      train=empty, valid=empty, test=empty, items=items, users=users, user_links=None,
      cold_user_history=empty, cold_user_test=empty,
      warm_items=mark_warm(counts.astype(np.float64), PrepareConfig().warm_share),
      item_train_counts=counts, vocabularies=vocabs,
      config=PrepareConfig(kcore=0, cold_user_share=0.0),
      fingerprint=json.dumps(manifest["params"], sort_keys=True), name="stream")
  user_order = io.read_text(io.join(shard_dir, "user_order.txt")).split("\n")[:-1]
  user_lookup = lookup_indices(np.asarray(user_order, dtype=object), vocabs["user_id"])
  item_lookup = np.zeros(len(items) + 1, dtype=np.int64)
  item_lookup[1:] = lookup_indices(items["item_id"].to_numpy(), vocabs["item_id"])
  user_columns = {}
  if users is not None:
    table = users.set_index("user_id")
    for column in ("country",):
      if column in table.columns and column in vocabs:
        values = table[column].reindex(user_order).fillna("").astype(str).to_numpy()
        user_columns[column] = lookup_indices(values, vocabs[column])
  eval_arrays = dict(np.load(_pyio.BytesIO(_read_bytes(io.join(shard_dir, "eval.npz"))),
                             allow_pickle=False))
  serving = _load_npy(io.join(shard_dir, "serving_history.npy"))
  return StreamData(prepared, user_lookup, item_lookup, user_columns, eval_arrays, manifest,
                    user_order, serving)


def _encode_queries(data: StreamData, users: np.ndarray, history: np.ndarray,
                    columns: Sequence[str]) -> Dict[str, tf.Tensor]:
  out = {"user_id": tf.constant(data.user_lookup[users]),
         "history": tf.constant(data.item_lookup[history])}
  for column in columns:
    out[column] = tf.constant(data.user_columns[column][users])
  return out


def input_throughput(dataset: tf.data.Dataset, max_batches: Optional[int] = None
                     ) -> Dict[str, float]:
  """Examples per second of iterating `dataset` alone (no model), one pass.

  Args:
    dataset: Batched dataset of dicts (the training input).
    max_batches: Stop after this many batches (None: the whole pass).

  Returns:
    `examples`, `seconds`, `examples_per_second` (the first batch, which pays
    for starting the readers, is not timed).
  """
  iterator = iter(dataset)
  first = next(iterator)
  examples = 0
  start = time.perf_counter()
  for n, batch in enumerate(iterator):
    examples += int(tf.shape(next(iter(batch.values())))[0])
    if max_batches is not None and n + 2 >= max_batches:
      break
  seconds = time.perf_counter() - start
  del first
  return {"examples": examples, "seconds": seconds,
          "examples_per_second": examples / max(seconds, 1e-9)}


def stream_fit(shard_dir: str, config: TwoTowerConfig, job_dir: str, *,
               shuffle_buffer: Optional[int] = None, block_rows: int = 256,
               num_parallel_calls: int = tf.data.AUTOTUNE,
               deterministic: bool = True, measure_input: bool = True,
               input_batches: Optional[int] = None, checkpoint_every: int = 0,
               backup_dir: Optional[str] = None, export_dir: Optional[str] = None,
               exporter: Optional[Callable[[Callable[[str], Any], Dict[str, Any]], str]] = None
               ) -> Dict[str, Any]:
  """Trains the two-tower model from a materialization (see `materialize`).

  The towers and training model are `TwoTowerFamily`'s, built from the
  catalogue, vocabularies and training counts only. Each epoch streams the
  shards (parallel interleave, bounded shuffle, batch-then-parse, index maps
  on the host) through `fit_with_validation`: checkpoints under
  `<job_dir>/backup` (every `checkpoint_every` steps, else every epoch), a
  killed run resumes when rerun, a NaN loss stops it, and early stopping
  follows validation HR@10 on `config.validation_users` of the eval sample
  (all of it when 0), best weights kept.

  Args:
    shard_dir: Folder written by `materialize`.
    config: `TwoTowerConfig`; its `history_length` must equal the
      materialization's.
    job_dir: Run folder (logs, checkpoints, `stream_summary.json`).
    shuffle_buffer: Rows in the read-time shuffle buffer (default 16 batches;
      rows are already mixed within each materialization chunk, and a larger
      buffer slows the input pipeline down more than it mixes).
    block_rows: Rows read, shuffled and handed on as one block (see
      `pipeline.tfrecord.read_shards`): the materialization already mixed the
      rows of each chunk, so a block is a random sample of its chunk, and the
      input pipeline handles one element per block instead of one per row.
      0 shuffles single rows (several times slower).
    num_parallel_calls: Parallel shard readers and parse calls.
    deterministic: Fixed element order for a given seed.
    measure_input: Also time one pass of the input pipeline alone (no model).
    input_batches: Batches of that pass (None: a whole epoch).
    checkpoint_every: Checkpoint every this many steps (0: every epoch).
    backup_dir: Shared backup folder (default `<job_dir>/backup`).
    export_dir: When given, also writes the two-tower export there
      (`TwoTowerFamily.save`: exact and ScaNN retrieval SavedModels, towers,
      candidates), serving known users from their stored recent tracks.
    exporter: Instead of `export_dir`: `exporter(save_fn, summary)` is called
      with the function that writes that export into a folder (e.g. to keep
      it for `export.saved_model.export_versioned`); a path it returns is
      recorded as `export`.

  Returns:
    Summary: `rows`, `users`, `items`, `epochs_run`, `best_epoch`, `history`,
    `valid/all/hr@10`, `test/<slice>/<metric>` (full ranking on the eval
    sample), `popularity` (the same for the most-played baseline),
    `train_examples_per_second`, `input_examples_per_second`,
    `input_to_train_ratio`, `eval_users`, `id_table_bytes` (user and track
    id embeddings with optimizer slots), and `export` when exported.

  Raises:
    FileNotFoundError: no complete materialization in `shard_dir`.
    ValueError: `history_length` differs from the materialization's, or the
      batch is larger than the training rows.
  """
  data = load_stream_data(shard_dir)
  manifest = data.manifest
  length = manifest["params"]["history_length"]
  if config.history_length != length:
    raise ValueError(f"`history_length` = {config.history_length} but {shard_dir} was "
                     f"materialized with history_length = {length}. Use `--set "
                     f"history_length={length}` or materialize again into another folder.")
  n_train = manifest["rows"]["train"]
  if config.batch_size > n_train:
    raise ValueError(f"`batch_size` = {config.batch_size} is larger than the {n_train} "
                     "training interactions. Use a smaller `--set batch_size=...`.")
  family = TwoTowerFamily(config, data.prepared)
  family.checkpoint_every, family.backup_dir = checkpoint_every, backup_dir
  columns = tuple(c for c in family.user_features if c in data.user_columns)
  user_lookup = tf.constant(data.user_lookup)
  item_lookup = tf.constant(data.item_lookup)
  column_tables = {c: tf.constant(data.user_columns[c]) for c in columns}

  def lookup_fn(raw):
    out = {"user_id": tf.gather(user_lookup, raw["user"]),
           "history": tf.gather(item_lookup, raw["history"]), "item_index": raw["item"]}
    for column, table in column_tables.items():
      out[column] = tf.gather(table, raw["user"])
    return out

  replicas = family.model.distribute_strategy.num_replicas_in_sync
  batch = config.batch_size * replicas
  dataset = read_shards(shard_dir, TRAIN, batch, shuffle=True, seed=config.seed,
                        shuffle_buffer=shuffle_buffer or 16 * batch, block_rows=block_rows,
                        lookup_fn=lookup_fn,
                        num_parallel_calls=num_parallel_calls, deterministic=deterministic,
                        drop_remainder=config.cross_replica_negatives and replicas > 1)
  input_stats = input_throughput(dataset, input_batches) if measure_input else None

  ev = data.eval
  warm = data.prepared.warm_items
  slices = {"cold": ~warm, "warm": warm.copy()}

  def evaluate(split: str, rows: Optional[np.ndarray] = None) -> Dict[str, float]:
    rows = np.arange(len(ev["user"])) if rows is None else rows
    if not len(rows):
      return {}
    family._item_embeddings = None  # pylint: disable=protected-access  (weights changed)
    queries = family.query_tower(_encode_queries(data, ev["user"][rows],
                                                 ev[f"{split}_history"][rows], columns)).numpy()
    indptr, indices = ev[f"{split}_exclude_indptr"], ev[f"{split}_exclude_indices"]
    exclude = [indices[indptr[r]:indptr[r + 1]] for r in rows]
    metrics = evaluate_embeddings(queries, family.item_embeddings(), ev[f"{split}_item"][rows],
                                  exclude=exclude, item_slices=slices,
                                  ks=(10,) if split == "valid" else (10, 50),
                                  lists=split != "valid")
    return {f"{split}/{k}": v for k, v in metrics.items()}

  def validate(epoch: int) -> float:
    n_eval = len(ev["user"])
    n = config.validation_users
    rows = np.arange(n_eval)
    if n and n_eval > n:
      rows = np.sort(np.random.default_rng([config.seed, epoch]).choice(n_eval, n, replace=False))
    return float(evaluate("valid", rows).get("valid/all/hr@10", float("nan")))

  timer = EpochTimer()
  tensorboard = tf.keras.callbacks.TensorBoard(log_dir=io.join(job_dir, "logs", "two_tower_stream"),
                                               update_freq="epoch")
  losses: List[float] = []
  loss_logger = tf.keras.callbacks.LambdaCallback(
      on_epoch_end=lambda epoch, logs: losses.append(float((logs or {}).get("loss", np.nan))))
  fit = fit_with_validation(
      family.model, dataset, epochs=config.epochs, validate=validate,
      patience=config.early_stopping_patience, job_dir=job_dir, name="two_tower_stream",
      checkpoint_every=checkpoint_every, backup_dir=backup_dir,
      fingerprint=config_fingerprint(config, data=data.prepared.fingerprint),
      callbacks=[timer, loss_logger, tensorboard],
      nan_advice="Lower the learning rate (`--set learning_rate=...`) or raise the temperature.")
  train_seconds = float(sum(timer.seconds))
  epochs_timed = len(timer.seconds)
  metrics = {**evaluate("valid"), **evaluate("test")}
  counts = data.prepared.item_train_counts.astype(np.float32)
  popularity = {}
  for split in ("valid", "test"):
    indptr, indices = ev[f"{split}_exclude_indptr"], ev[f"{split}_exclude_indices"]
    if len(ev["user"]):
      popularity.update({f"{split}/{k}": v for k, v in evaluate_retrieval(
          lambda q: np.broadcast_to(counts, (len(q), len(counts))), ev["user"],
          ev[f"{split}_item"], n_items=len(counts), exclude=(indptr, indices),
          item_slices=slices, ks=(10, 50)).items()})
  train_eps = n_train * epochs_timed / max(train_seconds, 1e-9)
  summary = {"rows": manifest["rows"], "users": manifest["train_users"],
             "items": manifest["items"], "eval_users": int(len(ev["user"])),
             "batch_size": batch, "epochs_run": fit["epochs_run"],
             "best_epoch": fit["best_epoch"], "resumed_from_epoch": fit["resumed_from_epoch"],
             "history": fit["history"], "losses": losses,
             "train_seconds": train_seconds, "train_examples_per_second": train_eps,
             **metrics, "popularity": popularity}
  if input_stats is not None:
    summary["input_examples_per_second"] = input_stats["examples_per_second"]
    summary["input_seconds"] = input_stats["seconds"]
    summary["input_to_train_ratio"] = input_stats["examples_per_second"] / max(train_eps, 1e-9)
  summary["id_table_bytes"] = id_table_bytes(family.model)
  if export_dir:
    summary["export"] = stream_export(family, data, export_dir)
  elif exporter is not None:
    path = exporter(lambda directory: stream_export(family, data, directory), summary)
    if path:
      summary["export"] = path
  io.write_text(io.join(job_dir, "stream_summary.json"),
                json.dumps(summary, indent=2, default=float) + "\n")
  logging.info("two_tower stream: %d epochs, %.0f examples/s training, valid HR@10 %.4f, "
               "test HR@10 %.4f", fit["epochs_run"], train_eps,
               summary.get("valid/all/hr@10", float("nan")),
               summary.get("test/all/hr@10", float("nan")))
  return summary


def id_table_bytes(model: tf.keras.Model) -> int:
  """Bytes of the user-id and track-id embedding tables and their optimizer slots.

  These grow with the number of users and tracks, not with interactions; the
  streaming benchmark subtracts them to compare memory across data sizes.
  """
  names = ("user_id_embedding", "item_id_embedding")
  variables = list(model.trainable_variables)
  if model.optimizer is not None:
    variables += list(model.optimizer.variables())
  seen, total = set(), 0
  for variable in variables:
    key = id(variable)
    if key in seen or not any(n in variable.name for n in names):
      continue
    seen.add(key)
    total += int(np.prod(variable.shape)) * variable.dtype.size
  return total


def stream_export(family: TwoTowerFamily, data: StreamData, directory: str) -> Dict[str, str]:
  """Writes `family`'s two-tower export, known users served from their stored tracks.

  Args:
    family: The family `stream_fit` trained.
    data: Its `StreamData`.
    directory: Export folder (the SavedModel root).

  Returns:
    `TwoTowerFamily.save`'s description of the signatures.
  """
  item_ids = data.prepared.item_ids
  known = set(data.prepared.vocabularies["user_id"])
  histories = {}
  for user, row in zip(data.user_order, data.serving_history):
    if user in known:
      histories[user] = [item_ids[i - 1] for i in row if i > 0]
  family.histories["test"] = histories
  return family.save(directory)
