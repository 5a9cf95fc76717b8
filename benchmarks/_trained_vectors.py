"""Track and user vectors from a trained two-tower, for `scann_recall`.

The two-tower (`default` preset, content features on) is trained once on the
synthetic catalogue (10,000 tracks). Its candidate tower then places a larger
catalogue: the trained catalogue's own tracks followed by new tracks that the
same generator draws for the same seed, so they belong to the trained
catalogue's artists and albums (the generator draws artists and albums before
tracks; the display names carry a random word the larger draw picks
differently, so names are matched by their index prefix, `a0042 ...`). The
new tracks have ids the model never saw and are placed by content (artist,
album, genre, tags, title, lyrics, audio), as the exports place any track with
too few plays. The queries are the query tower's vectors of the real users
(their history up to the test point; held-out users from their history alone).

Vectors are cached as `.npy` under `<cache_dir>/<key>/`, so training and
encoding run once per (seed, size).
"""

import hashlib
import json
import logging
import os
import time
from typing import Dict

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import training
from tfrec_music.data import synthetic
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.models.features import encode_catalogue
from tfrec_music.models.registry import get_family

NEW_ID_PREFIX = "new"
# Part of the cache folder's name: bump it when what is cached changes.
CACHE_VERSION = "v2"


def _rename_by_prefix(values: pd.Series, names: pd.Series) -> pd.Series:
  """Replaces each `<prefix> words` name by the trained catalogue's name with that prefix."""
  by_prefix = dict(zip(names.str.split(" ", n=1).str[0], names))
  prefixes = values.str.split(" ", n=1).str[0]
  return prefixes.map(by_prefix).fillna(values)


def new_tracks(seed: int, n_new: int, trained_items: pd.DataFrame) -> pd.DataFrame:
  """`n_new` generated tracks by the trained catalogue's artists and albums, with unseen ids.

  Args:
    seed: The generator seed the model was trained with.
    n_new: Tracks to draw (at least the preset's album count, 2,000).
    trained_items: The trained catalogue's items table (for artist and album names).

  Returns:
    Items table with ids `new0000000`, ... in a seeded random order.
  """
  # Two users and no playlists: only the track table is wanted, and the
  # interaction draw scores every user against every track.
  catalogue = synthetic.generate("default", seed=seed, n_items=n_new, n_users=2,
                               n_playlists=0)
  # The generator writes an album's tracks together: shuffle, so that the
  # first n rows (a smaller benchmark size) are a sample of every album.
  order = np.random.default_rng([seed, n_new]).permutation(n_new)
  items = catalogue.tables.items.iloc[order].reset_index(drop=True)
  items["item_id"] = [f"{NEW_ID_PREFIX}{i:07d}" for i in range(len(items))]
  for column in ("artist", "album"):
    items[column] = _rename_by_prefix(items[column].astype(str),
                                      trained_items[column].astype(str))
  return items


def _tower_vectors(family, items: pd.DataFrame, batch: int = 8192) -> np.ndarray:
  """Candidate-tower vectors [n, d] of raw catalogue rows (encoder + tower)."""
  parts = []
  for start in range(0, len(items), batch):
    encoded = encode_catalogue(family.item_encoder, items.iloc[start:start + batch], batch)
    parts.append(family.candidate_tower({k: tf.constant(v) for k, v in encoded.items()}).numpy())
  return np.concatenate(parts).astype(np.float32)


def build(cache_dir: str, n_items: int, seed: int = 0) -> Dict[str, str]:
  """Trains the two-tower and writes `items.npy` [n_items, d], `queries.npy` [U, d], `info.json`.

  Args:
    cache_dir: Folder of this (seed, size)'s cache.
    n_items: Catalogue size (trained tracks first, then new ones).
    seed: Data, split and initialization seed.

  Returns:
    The written paths.
  """
  start = time.perf_counter()
  config = training.RunConfig(model="two_tower", preset="default", seed=seed,
                              job_dir=os.path.join(cache_dir, "job"), export=False)
  family_cls, model_config, loaded, prepared, _, _ = training.load_and_prepare(config)
  family = family_cls(model_config, prepared)
  summary = family.fit(config.job_dir)
  fit_s = time.perf_counter() - start
  trained = family.item_embeddings()
  if n_items < len(trained) + 2000:
    raise ValueError(f"`n_items` should be at least {len(trained) + 2000} (the trained "
                     f"catalogue plus 2,000 new tracks). Received: `n_items` = {n_items}.")
  start = time.perf_counter()
  items = new_tracks(seed, n_items - len(trained), loaded.tables.items)
  generate_s = time.perf_counter() - start
  start = time.perf_counter()
  vectors = np.concatenate([trained, _tower_vectors(family, items)])
  encode_s = time.perf_counter() - start
  users = np.concatenate([prepared.test["user_id"].astype(str).unique(),
                          prepared.cold_user_test["user_id"].astype(str).unique()])
  n_known = prepared.test["user_id"].nunique()
  queries = np.concatenate([family.query_embeddings(users[:n_known], "test"),
                            family.query_embeddings(users[n_known:], "cold_user")])
  os.makedirs(cache_dir, exist_ok=True)
  paths = {name: os.path.join(cache_dir, f"{name}.npy") for name in ("items", "queries")}
  np.save(paths["items"], vectors.astype(np.float32))
  np.save(paths["queries"], queries.astype(np.float32))
  info = {"seed": seed, "n_items": n_items, "trained_items": len(trained),
          "new_items": len(items), "queries": len(queries), "cold_user_queries":
          len(users) - n_known, "dim": int(vectors.shape[1]),
          "model_config": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in vars(model_config).items()},
          "fit": {k: v for k, v in summary.items() if k.startswith(("best_", "epochs"))},
          "seconds": {
              "fit": fit_s, "generate": generate_s, "encode": encode_s}}
  paths["info"] = os.path.join(cache_dir, "info.json")
  with open(paths["info"], "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, default=str)
  logging.info("Trained vectors: %s", info)
  return paths


def load(cache_root: str, n_items: int, seed: int = 0) -> Dict[str, np.ndarray]:
  """Cached (or newly built) trained vectors: `items` [n_items, d], `queries` [U, d], `info`.

  The cache folder is named by the seed, the size and a hash of the two-tower's
  `default` config, so a change of the model's defaults trains a new model.
  """
  config = get_family("two_tower").make_config("default", {})
  digest = hashlib.sha256(config_fingerprint(config).encode()).hexdigest()[:10]
  cache_dir = os.path.join(
      cache_root, f"{CACHE_VERSION}_two_tower_default_{digest}_seed{seed}_{n_items}")
  if not os.path.exists(os.path.join(cache_dir, "info.json")):
    build(cache_dir, n_items, seed)
  with open(os.path.join(cache_dir, "info.json"), encoding="utf-8") as f:
    info = json.load(f)
  return {"items": np.load(os.path.join(cache_dir, "items.npy")),
          "queries": np.load(os.path.join(cache_dir, "queries.npy")), "info": info}
