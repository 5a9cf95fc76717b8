"""The catalogue streamed to a sharded canonical Parquet folder (`write_large`)."""

import json
import logging
import os
import time
from typing import List

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.data.synthetic.card import build_data_card
from tfrec_music.data.synthetic.config import resolve_config
from tfrec_music.data.synthetic.generator import Generator


def _open_binary(path: str):
  if "://" not in path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, "wb")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.GFile(path, "wb")


class _ShardWriter:
  """Appends row batches to `prefix-0000k-of-000NN.parquet`, `shard_rows` per file."""

  def __init__(self, out_dir: str, prefix: str, n_shards: int, shard_rows: int, schema):
    self.out_dir, self.prefix = out_dir, prefix
    self.n_shards, self.shard_rows, self.schema = n_shards, shard_rows, schema
    self.shard = -1
    self.rows_in_shard = 0
    self.writer = self.handle = None
    self.files: List[str] = []

  def _next(self):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    self.close()
    self.shard += 1
    name = f"{self.prefix}-{self.shard:05d}-of-{self.n_shards:05d}.parquet"
    self.files.append(name)
    self.handle = _open_binary(io.join(self.out_dir, name))
    self.writer = pq.ParquetWriter(self.handle, self.schema)
    self.rows_in_shard = 0

  def write(self, frame: pd.DataFrame) -> None:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    start = 0
    while start < len(frame):
      if self.writer is None or self.rows_in_shard >= self.shard_rows:
        self._next()
      take = min(len(frame) - start, self.shard_rows - self.rows_in_shard)
      part = frame.iloc[start:start + take]
      self.writer.write_table(pa.Table.from_pandas(part, schema=self.schema,
                                                   preserve_index=False))
      self.rows_in_shard += take
      start += take

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.handle.close()
      logging.info("wrote %s", self.files[-1])
    self.writer = self.handle = None


def _write_parquet(frame: pd.DataFrame, path: str) -> None:
  with _open_binary(path) as f:
    frame.to_parquet(f, index=False)


def write_large(out_dir: str, preset: str = "large", seed: int = 0,
                shard_rows: int = 1_000_000, **overrides) -> dict:
  """Streams a catalogue to a canonical parquet folder without holding it in memory.

  Writes `items.parquet`, `users.parquet`, `user_links.parquet`,
  `playlists.parquet`, `oracle.npz`, `data_card.json` and the interactions
  as `interactions-00000-of-000NN.parquet` shards. Users are drawn in chunks
  of `user_chunk`; each chunk's rows are appended to the current shard, and a
  shard is closed once it holds `shard_rows` rows. The rows equal
  `generate(preset, seed, **overrides)`'s (before validation typing).

  Args:
    out_dir: Destination folder (local or `gs://`).
    preset: One of `PRESETS` (any preset can be streamed).
    seed: Seed of every random stream.
    shard_rows: Interaction rows per shard file.
    **overrides: `SyntheticConfig` fields to change.

  Returns:
    The data card, plus `files` (names written) and `seconds` (wall time).

  Raises:
    ValueError: unknown preset or override, or `shard_rows` < 1.
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  if not isinstance(shard_rows, (int, np.integer)) or isinstance(shard_rows, bool) \
      or shard_rows < 1:
    raise ValueError("`shard_rows` should be a positive integer. "
                     f"Received: `shard_rows` = {shard_rows!r}.")
  t0 = time.time()
  config = resolve_config(preset, seed, **overrides)
  out_dir = str(out_dir)
  io.makedirs(out_dir)
  gen = Generator(config)
  files = []
  _write_parquet(gen.items, io.join(out_dir, "items.parquet"))
  _write_parquet(gen.users, io.join(out_dir, "users.parquet"))
  links = gen.user_links()
  _write_parquet(links, io.join(out_dir, "user_links.parquet"))
  n_links = len(links)
  del links
  files += ["items.parquet", "users.parquet", "user_links.parquet"]

  total = int(gen.n_interactions.sum())
  n_shards = max(1, -(-total // shard_rows))
  schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                      ("timestamp", pa.int64()), ("rating", pa.float32()),
                      ("weight", pa.float32())])
  writer = _ShardWriter(out_dir, "interactions", n_shards, shard_rows, schema)
  item_degree = np.zeros(config.n_items, dtype=np.int64)
  rating_counts = np.zeros(5, dtype=np.int64)
  for k in range(gen.n_chunks()):
    chunk = gen.interaction_chunk(k)
    item_degree += np.bincount(chunk["item"], minlength=config.n_items)
    rating_counts += np.bincount(chunk["rating"].astype(np.int64), minlength=6)[1:6]
    writer.write(gen.interaction_frame(chunk))
    if (k + 1) % 50 == 0:
      logging.info("users %d/%d", min((k + 1) * config.user_chunk, config.n_users),
                   config.n_users)
  writer.close()
  files += writer.files

  playlist_schema = pa.schema([("playlist_id", pa.string()), ("user_id", pa.string()),
                               ("item_id", pa.string()), ("pos", pa.int64()),
                               ("name", pa.string()), ("timestamp", pa.int64()),
                               ("theme_genre", pa.string()), ("theme_mood", pa.string())])
  n_playlist_rows = 0
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  with _open_binary(io.join(out_dir, "playlists.parquet")) as f:
    with pq.ParquetWriter(f, playlist_schema) as pw:
      for frame in gen.playlist_chunks():
        n_playlist_rows += len(frame)
        pw.write_table(pa.Table.from_pandas(frame, schema=playlist_schema,
                                            preserve_index=False))
  files.append("playlists.parquet")
  gen.oracle().save(io.join(out_dir, "oracle.npz"))
  files.append("oracle.npz")

  card = build_data_card(config, preset, gen.n_interactions, item_degree, rating_counts,
                    n_links, n_playlist_rows)
  card["files"] = files + ["data_card.json"]
  io.write_text(io.join(out_dir, "data_card.json"), json.dumps(card, indent=2) + "\n")
  card["seconds"] = time.time() - t0
  return card
