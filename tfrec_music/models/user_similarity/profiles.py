"""User taste vectors from listening rows: the `lsa`, `als` and `centroid` parts and their blend.

`lsa` is the truncated SVD of the users' log(1 + plays) x idf profiles, `als`
the implicit ALS user factors, `centroid` the mean of the user's track
vectors. Several parts are blended so that the cosine of two users is the
mean of the parts' cosines, each in units of its spread over random pairs
(`part_weights`). `TasteParts` places a new user from their tracks the same way.
"""

import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse import linalg as sparse_linalg

from tfrec_music import io
from tfrec_music.models.als import ALSConfig
from tfrec_music.models.als import ALSFit
from tfrec_music.models.als import ALSParams
from tfrec_music.models.als import fit_als
from tfrec_music.models.als import fold_in_numpy
from tfrec_music.models.track_vectors import TrackVectors
from tfrec_music.models.user_similarity.index import load_array
from tfrec_music.models.user_similarity.index import save_array

# Random user pairs the part weights are measured on.
WEIGHT_PAIRS = 20_000


def unit_rows(vectors: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (zero rows stay zero)."""
  vectors = np.asarray(vectors, np.float64)
  return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def lsa_part(users: np.ndarray, items: np.ndarray, plays: np.ndarray, n_users: int,
             n_items: int, dim: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Truncated SVD of the users' unit tf-idf profiles.

  Args:
    users: [N] user rows.
    items: [N] catalogue rows.
    plays: [N] play counts (repeated pairs are summed).
    n_users: Users.
    n_items: Catalogue size.
    dim: SVD size (clamped below min(n_users, n_items)).
    seed: Start vector of the solver.

  Returns:
    (user vectors [n_users, k], track vectors [n_items, k]): a user's
    vector is the sum over their tracks of log(1 + plays) x the track vector,
    up to a positive scale (a track's vector is idf x its right singular row).
  """
  profile = sp.csr_matrix((np.asarray(plays, np.float64), (users, items)),
                          shape=(n_users, n_items))
  profile.sum_duplicates()
  played = np.bincount(profile.indices, minlength=n_items)
  idf = np.log(n_users / np.maximum(played, 1))
  profile.data = np.log1p(profile.data) * idf[profile.indices]
  norms = np.sqrt(np.asarray(profile.multiply(profile).sum(1)).ravel())
  profile = (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ profile).tocsr()
  k = max(1, min(int(dim), min(n_users, n_items) - 1))
  start = np.random.default_rng(seed).uniform(-1, 1, min(profile.shape))
  left, values, right = sparse_linalg.svds(profile, k=k, v0=start)
  return ((left * values).astype(np.float32),
          (idf[:, None] * right.T).astype(np.float32))


def als_part(users: np.ndarray, items: np.ndarray, plays: np.ndarray, n_users: int,
             n_items: int, rank: int, reg: float, alpha: float, seed: int = 0) -> ALSFit:
  """Implicit ALS on play counts (confidence 1 + alpha log(1 + plays)); returns the fit."""
  params = ALSConfig(alpha=float(alpha), weight="log1p", seed=int(seed)).params(rank, reg)
  return fit_als(np.asarray(users), np.asarray(items), np.asarray(plays, np.float64), n_users,
                 n_items, params)


def part_weights(parts: Sequence[np.ndarray], seed: int = 0,
                 n_pairs: int = WEIGHT_PAIRS) -> np.ndarray:
  """[P] block scales w_p = (spread of part p's cosines over random user pairs)^-1/2.

  One part gets weight 1 (its vectors are used as they are).
  """
  if len(parts) == 1:
    return np.ones(1)
  n = len(parts[0])
  rng = np.random.default_rng(seed)
  a, b = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
  a, b = a[a != b], b[a != b]
  spreads = []
  for vectors in parts:
    unit = unit_rows(vectors)
    spreads.append(float(np.std((unit[a] * unit[b]).sum(1))) if len(a) else 1.0)
  return 1.0 / np.sqrt(np.maximum(spreads, 1e-12))


def blend(parts: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
  """[N, sum d_p] user vectors: a single part as is, else the weighted unit parts side by side."""
  if len(parts) == 1:
    return np.asarray(parts[0], np.float32)
  return np.concatenate([w * unit_rows(p) for w, p in zip(weights, parts)],
                        axis=1).astype(np.float32)


def distinct_counts(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(distinct catalogue rows, how often each occurs) of one user's track list."""
  cols, counts = np.unique(np.asarray(rows, np.int64), return_counts=True)
  return cols, counts.astype(np.float64)


@dataclasses.dataclass
class TasteParts:
  """What places a new user (a list of played tracks) among the indexed users.

  Attributes:
    item_ids: [n_items] catalogue track ids.
    names: The parts, in the order their blocks are concatenated.
    weights: [P] block scales (see `part_weights`).
    usable: [n_items] bool, tracks some part knows (a new user with none is unknown).
    tracks: Track vectors of the `centroid` part (None without it).
    lsa_tracks: [n_items, k] track vectors of the `lsa` part (None without it).
    als: The ALS fit of the `als` part (None without it; user factors not kept).
  """

  item_ids: np.ndarray
  names: Tuple[str, ...]
  weights: np.ndarray
  usable: np.ndarray
  tracks: Optional[TrackVectors] = None
  lsa_tracks: Optional[np.ndarray] = None
  als: Optional[ALSFit] = None

  def rows(self, track_ids: Sequence[str]) -> np.ndarray:
    """Catalogue row of each track id (-1 for unknown ids)."""
    return pd.Index(np.asarray(self.item_ids).astype(str)).get_indexer(
        pd.Series(track_ids, dtype=object).astype(str))

  def queries(self, histories: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """([B, D] user vectors, [B] known) of new users from their catalogue rows.

    A track listed n times counts as n plays (the centroid, like an indexed
    user's, counts each track once); rows < 0 (unknown tracks) are skipped.
    """
    histories = [np.asarray(h, np.int64) for h in histories]
    histories = [h[(h >= 0)] for h in histories]
    histories = [h[self.usable[h]] for h in histories]
    blocks: List[np.ndarray] = []
    for name in self.names:
      if name == "centroid":
        block = np.zeros((len(histories), self.tracks.dim))
        for row, h in enumerate(histories):
          h = np.unique(h[self.tracks.has_vector[h]])
          if len(h):
            block[row] = self.tracks.vectors[h].astype(np.float64).mean(0)
      elif name == "lsa":
        block = np.zeros((len(histories), self.lsa_tracks.shape[1]))
        for row, h in enumerate(histories):
          cols, counts = distinct_counts(h)
          block[row] = np.log1p(counts) @ self.lsa_tracks[cols].astype(np.float64)
      else:
        block = fold_in_numpy(self.als, [distinct_counts(h) for h in histories])[0]
      blocks.append(block)
    known = np.array([len(h) > 0 for h in histories], bool)
    return blend(blocks, self.weights), known

  def save(self, directory: str) -> None:
    """Writes `parts.json`, `item_ids.txt` and the arrays (`usable`, `lsa_tracks`, `als_items`)."""
    io.makedirs(directory)
    io.write_text(io.join(directory, "item_ids.txt"), "".join(f"{i}\n" for i in self.item_ids))
    meta = {"names": list(self.names), "weights": [float(w) for w in self.weights]}
    save_array(io.join(directory, "usable.npy"), self.usable.astype(bool))
    if self.lsa_tracks is not None:
      save_array(io.join(directory, "lsa_tracks.npy"), self.lsa_tracks)
    if self.als is not None:
      save_array(io.join(directory, "als_items.npy"), self.als.item_factors)
      meta["als_params"] = dataclasses.asdict(self.als.params)
    io.write_text(io.join(directory, "parts.json"), json.dumps(meta, indent=2) + "\n")

  @classmethod
  def load(cls, directory: str, tracks: Optional[TrackVectors]) -> "TasteParts":
    """Reads what `save` wrote; `tracks` are the centroid part's track vectors."""
    meta = json.loads(io.read_text(io.join(directory, "parts.json")))
    lsa = (load_array(io.join(directory, "lsa_tracks.npy"))
           if "lsa" in meta["names"] else None)
    als = None
    if "als" in meta["names"]:
      items = load_array(io.join(directory, "als_items.npy"))
      zeros = np.zeros(len(items), np.float32)
      als = ALSFit(np.zeros((0, items.shape[1]), np.float32), items,
                   ALSParams(**meta["als_params"]), 0.0, zeros[:0], zeros, [])
    item_ids = np.asarray(io.read_text(io.join(directory, "item_ids.txt")).split("\n")[:-1])
    return cls(item_ids, tuple(meta["names"]), np.asarray(meta["weights"], np.float64),
               load_array(io.join(directory, "usable.npy")), tracks, lsa, als)


def fit_parts(names: Sequence[str], rows: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]],
              n_users: int, item_ids: np.ndarray, tracks: Optional[TrackVectors], *, lsa_dim: int,
              als_rank: int, als_reg: float, als_alpha: float, seed: int
              ) -> Tuple[np.ndarray, np.ndarray, TasteParts, Dict[str, np.ndarray]]:
  """Fits every part and blends them.

  Args:
    names: Parts to fit (`lsa`, `als`, `centroid`).
    rows: `"all"` -> (user rows [N], catalogue rows [N], plays [N]) for `lsa`
      and `als`; `"centroid"` -> the same for the centroid's rows.
    n_users: Users (rows of the outputs).
    item_ids: [n_items] catalogue track ids.
    tracks: The centroid part's track vectors (None without it).
    lsa_dim, als_rank, als_reg, als_alpha: See `UserSimilarityConfig`.
    seed: Seed of the SVD, ALS and the part weights.

  Returns:
    ([n_users, D] blended vectors, [n_users] bool users some part could place,
    the `TasteParts`, part name -> [n_users, d] part vectors).
  """
  n_items = len(item_ids)
  vectors: Dict[str, np.ndarray] = {}
  placed = np.zeros(n_users, bool)
  usable = np.zeros(n_items, bool)
  lsa_tracks, als = None, None
  for name in names:
    users, items, plays = rows["centroid" if name == "centroid" else "all"]
    if name == "centroid":
      ok = tracks.has_vector[items]
      pairs = np.unique(users[ok].astype(np.int64) * n_items + items[ok])  # each track once
      users, items = pairs // n_items, pairs % n_items
      total = np.zeros((n_users, tracks.dim))
      np.add.at(total, users, tracks.vectors[items].astype(np.float64))
      counts = np.bincount(users, minlength=n_users)
      vectors[name] = (total / np.maximum(counts, 1)[:, None]).astype(np.float32)
      usable |= tracks.has_vector
    elif name == "lsa":
      vectors[name], lsa_tracks = lsa_part(users, items, plays, n_users, n_items, lsa_dim, seed)
      usable[items] = True
    else:
      als = als_part(users, items, plays, n_users, n_items, als_rank, als_reg, als_alpha, seed)
      vectors[name] = als.user_factors.astype(np.float32)
      usable[items] = True
    placed[users] = True
  parts = [vectors[name] for name in names]
  weights = part_weights([p[placed] for p in parts], seed)
  taste = TasteParts(np.asarray(item_ids), tuple(names), weights, usable,
                     tracks if "centroid" in names else None, lsa_tracks, als)
  return blend(parts, weights), placed, taste, vectors
