"""Two-tower training rows as sharded TFRecords, written in one streaming pass.

Part of training the two-tower model (`two_tower.core`) from data too large
for memory (`two_tower.stream` trains from what this writes).
`materialize` makes one streaming pass over the canonical Parquet shards
(`interactions-*.parquet`, as `synthetic.write_large` writes them) and writes
training rows `{user, history, item}` as TFRecord shards: `user` is the
user's index in order of first appearance, `history` the user's last
`history_length` earlier tracks (causal: catalogue index + 1, 0 = padding),
`item` the track's catalogue index. Integer indices keep the final
vocabularies out of the pass: they are mapped to lookup indices at read time
through two small tables. Only one read chunk plus the rows of the user that
spans its end are in memory, never the interactions.

Split (temporal leave-one-out, as `prepare`): a user's rows must be contiguous
(they are in `write_large`'s shards) and are ordered by `timestamp` within the
user; the last interaction is the test row, the second-last the validation
row, the rest train (users with fewer than 3 interactions are train only). No
k-core filter runs (it needs every row at once). Interactions with tracks
missing from `items.parquet` are dropped and counted in the manifest.
"""

import io as _pyio
import json
import logging
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.pipeline.tfrecord import write_shards
from tfrec_music.prepare.vocabulary import save_vocabularies

MANIFEST = "manifest.json"
DONE = "_COMPLETE"
TRAIN = "train"
_FORMAT_VERSION = 1


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


def read_bytes(path: str) -> bytes:
  """The bytes of the file at `path` (local or `tf.io.gfile`)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def _save_npy(path: str, array: np.ndarray) -> None:
  buffer = _pyio.BytesIO()
  np.save(buffer, array)
  _write_bytes(path, buffer.getvalue())


def load_npy(path: str) -> np.ndarray:
  """The `.npy` array at `path` (local or `tf.io.gfile`)."""
  return np.load(_pyio.BytesIO(read_bytes(path)), allow_pickle=False)


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
        "`two_tower.materialize.materialize(data_dir, shard_dir, history_length)` first.")
  return json.loads(io.read_text(io.join(shard_dir, MANIFEST)))
