"""Two-tower retrieval trained from sharded TFRecords, so memory stays flat as data grows.

The recommender idea is the two-tower one (`two_tower.core`): a user tower
(id, country, recent tracks) and a track tower (id plus content) in one
space, trained with in-batch softmax. What changes is where the rows live:
`two_tower.materialize` writes them once as TFRecord shards, and
`stream_fit` builds the very `TwoTowerCore` towers and `TwoTowerModel`
(from a catalogue-only `PreparedData`: items, users, vocabularies and
training counts, no interaction frames), reads the shards with parallel
interleave, block shuffle, batch-then-parse, and trains with
`fit_with_validation` (checkpoints, resume, NaN guard, early stopping).

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
from typing import Any, Callable, Dict, List, Optional, Sequence

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
from tfrec_music.models.two_tower.config import TwoTowerConfig
from tfrec_music.models.two_tower.core import TwoTowerCore
from tfrec_music.models.two_tower.materialize import TRAIN
from tfrec_music.models.two_tower.materialize import load_npy
from tfrec_music.models.two_tower.materialize import read_bytes
from tfrec_music.models.two_tower.materialize import read_manifest
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.pipeline.tfrecord import read_shards
from tfrec_music.prepare.prepared import PrepareConfig
from tfrec_music.prepare.prepared import PreparedData
from tfrec_music.prepare.prepared import mark_warm
from tfrec_music.prepare.vocabulary import build_vocabularies
from tfrec_music.prepare.vocabulary import load_vocabularies


@dataclasses.dataclass
class StreamData:
  """What training needs besides the shards: catalogue, vocabularies and index maps.

  Attributes:
    prepared: Catalogue-only `PreparedData` (empty interaction frames) for
      `TwoTowerCore`.
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
  counts = load_npy(io.join(shard_dir, "item_train_counts.npy")).astype(np.int64)
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
  eval_arrays = dict(np.load(_pyio.BytesIO(read_bytes(io.join(shard_dir, "eval.npz"))),
                             allow_pickle=False))
  serving = load_npy(io.join(shard_dir, "serving_history.npy"))
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

  The towers and training model are `TwoTowerCore`'s, built from the
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
  family = TwoTowerCore(config, data.prepared)
  family.compile(n_train)  # the catalogue-only `prepared` has no rows to size an epoch by
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


def stream_export(family: TwoTowerCore, data: StreamData, directory: str) -> Dict[str, str]:
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
  family.exclude_seen_rows = False  # the stored history is all a streamed export knows of
  return family.save(directory)
