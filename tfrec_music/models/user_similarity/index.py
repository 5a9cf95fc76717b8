"""Taste vectors and exact similarity search over them (the numpy library API)."""

import io as _bytes_io
import json
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.models.track_vectors import TrackVectors

METRICS = ("euclidean", "cosine")
# Squared distances below this share of ||u||^2 + ||v||^2 are float rounding of
# `||u||^2 + ||v||^2 - 2 u.v` and count as 0 (score 1 / epsilon), so equal
# tastes score the same in numpy (float64) and in the export (float32).
ROUNDING = 1e-5


def save_array(path: str, array: np.ndarray) -> None:
  """Writes one array as `.npy` (no pickles; local or `gs://`)."""
  buffer = _bytes_io.BytesIO()
  np.save(buffer, np.asarray(array), allow_pickle=False)
  io.write_bytes(path, buffer.getvalue())


def load_array(path: str) -> np.ndarray:
  """Reads what `save_array` wrote."""
  return np.load(_bytes_io.BytesIO(io.read_bytes(path)), allow_pickle=False)

def taste_centroids(keys: Sequence[str], item_index: np.ndarray,
                    vectors: TrackVectors) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Centroid of the track vectors of each key (user, artist, ...).

  Args:
    keys: [N] owner of each row (user id, artist name).
    item_index: [N] catalogue index of each row's track (-1 rows are skipped).
    vectors: Track vectors; tracks without a vector are skipped.

  Returns:
    (ids [K] sorted, centroids [K, d] float32, track counts [K]); keys with
    no usable track are left out.
  """
  keys = np.asarray(keys).astype(str)
  item_index = np.asarray(item_index, np.int64)
  ok = item_index >= 0
  ok[ok] = vectors.has_vector[item_index[ok]]
  frame_keys, frame_items = keys[ok], item_index[ok]
  ids, rows = np.unique(frame_keys, return_inverse=True)
  total = np.zeros((len(ids), vectors.dim), np.float64)
  np.add.at(total, rows, vectors.vectors[frame_items].astype(np.float64))
  counts = np.bincount(rows, minlength=len(ids))
  return ids.astype(object), (total / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


def recent_rows(frame: pd.DataFrame, share: float) -> pd.DataFrame:
  """The most recent `share` of each user's rows by `timestamp` (at least one).

  Every row is kept when share = 1 or the frame has no `timestamp` column
  (without times there is no recency to go by).
  """
  if share >= 1.0 or not len(frame) or "timestamp" not in frame.columns:
    return frame
  frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
  position = frame.groupby("user_id").cumcount().to_numpy()
  size = frame.groupby("user_id")["user_id"].transform("size").to_numpy()
  keep = position >= np.minimum(np.floor(size * (1.0 - share)), size - 1)
  return frame[keep]


class SimilarityIndex:
  """Exact similarity search over taste vectors (users or pseudo-users).

  Args:
    ids: [N] ids.
    vectors: [N, d] centroids.
    metric: `euclidean` (1 / (distance + epsilon)) or `cosine`.
    epsilon: See `UserSimilarityConfig.epsilon`.
    kind: What the ids are (`user`, `artist`), for messages.
  """

  def __init__(self, ids: Sequence[str], vectors: np.ndarray, metric: str = "euclidean",
               epsilon: float = 1e-6, kind: str = "user"):
    if metric not in METRICS:
      raise ValueError(f"`metric` should be one of {METRICS}. Received: `metric` = {metric!r}.")
    self.ids = np.asarray(ids).astype(str).astype(object)
    self.vectors = np.asarray(vectors, np.float32)
    if len(self.ids) != len(self.vectors):
      raise ValueError(f"`ids` and `vectors` should have the same length. Received: "
                       f"{len(self.ids)} and {len(self.vectors)}.")
    self.metric, self.epsilon, self.kind = metric, float(epsilon), kind
    self.position = pd.Index(self.ids)
    self._unit = self.vectors / np.maximum(np.linalg.norm(self.vectors, axis=1,
                                                          keepdims=True), 1e-12)
    self._sq_norm = (self.vectors.astype(np.float64) ** 2).sum(1)

  def __len__(self) -> int:
    return len(self.ids)

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    """Row of each id.

    Raises:
      KeyError: an id is unknown (the message names it).
    """
    rows = self.position.get_indexer(pd.Series(ids).astype(str))
    if (rows < 0).any():
      bad = str(np.asarray(ids)[rows < 0][0])
      raise KeyError(f"Unknown {self.kind} {bad!r}: it has no tracks with vectors in this "
                     f"model ({len(self.ids)} {self.kind}s known, e.g. {self.ids[0]!r}).")
    return rows

  def score_vectors(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise similarity of vector pairs a [N, d], b [N, d]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if self.metric == "cosine":
      den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
      return (a * b).sum(1) / np.maximum(den, 1e-12)
    return 1.0 / (np.linalg.norm(a - b, axis=1) + self.epsilon)

  def score_pairs(self, ids_a: Sequence[str], ids_b: Sequence[str]) -> np.ndarray:
    """[N] similarity of the pairs (ids_a[n], ids_b[n])."""
    return self.score_vectors(self.vectors[self.rows(ids_a)], self.vectors[self.rows(ids_b)])

  def scores(self, queries: np.ndarray) -> np.ndarray:
    """[B, N] similarity of query vectors [B, d] to every indexed vector."""
    queries = np.asarray(queries, np.float64)
    if self.metric == "cosine":
      unit = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
      return unit @ self._unit.T.astype(np.float64)
    norms = (queries ** 2).sum(1)[:, None] + self._sq_norm[None, :]
    sq = norms - 2.0 * queries @ self.vectors.T.astype(np.float64)
    return 1.0 / (np.sqrt(np.where(sq <= ROUNDING * norms, 0.0, sq)) + self.epsilon)

  def top_k(self, queries: np.ndarray, k: int,
            exclude_rows: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [B, k], scores [B, k]) most similar to query vectors, best first.

    Args:
      queries: [B, d].
      k: Results per query (clamped to the index size minus exclusions).
      exclude_rows: [B] row to leave out of each query's results (itself), or -1.
    """
    if not isinstance(k, (int, np.integer)) or k <= 0:
      raise ValueError(f"`k` should be a positive integer. Received: `k` = {k!r}.")
    scores = self.scores(queries)
    if exclude_rows is not None:
      valid = np.asarray(exclude_rows) >= 0
      scores[np.flatnonzero(valid), np.asarray(exclude_rows)[valid]] = -np.inf
    k = min(int(k), len(self.ids) - (1 if exclude_rows is not None else 0))
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return self.ids[top], np.take_along_axis(part_scores, order, axis=1)

  def top_ids(self, ids: Sequence[str], k: int) -> np.ndarray:
    """[B, k] ids of the most similar others of indexed `ids`."""
    rows = self.rows(ids)
    return self.top_k(self.vectors[rows], k, exclude_rows=rows)[0]

  def most_similar(self, key: str, k: int = 10) -> pd.DataFrame:
    """The `k` most similar others of one indexed id, as a table (rank, id, score)."""
    rows = self.rows([key])
    ids, scores = self.top_k(self.vectors[rows], k, exclude_rows=rows)
    return pd.DataFrame({"rank": np.arange(1, ids.shape[1] + 1), self.kind: ids[0],
                         "score": scores[0]})

  def pairwise(self, ids: Sequence[str]) -> np.ndarray:
    """[n, n] similarity matrix of indexed `ids` (the diagonal is the self score)."""
    rows = self.rows(ids)
    return self.scores(self.vectors[rows])[:, rows]

  def save(self, directory: str) -> None:
    """Writes `ids.txt`, `vectors.npy` and `index.json` (metric, epsilon, kind)."""
    io.makedirs(directory)
    io.write_text(io.join(directory, "ids.txt"), "".join(f"{i}\n" for i in self.ids))
    save_array(io.join(directory, "vectors.npy"), self.vectors)
    io.write_text(io.join(directory, "index.json"),
                  json.dumps({"metric": self.metric, "epsilon": self.epsilon,
                              "kind": self.kind}) + "\n")

  @classmethod
  def load(cls, directory: str) -> "SimilarityIndex":
    """Reads what `save` wrote."""
    meta = json.loads(io.read_text(io.join(directory, "index.json")))
    ids = io.read_text(io.join(directory, "ids.txt")).split("\n")[:-1]
    return cls(ids, load_array(io.join(directory, "vectors.npy")), meta["metric"],
               meta["epsilon"], meta["kind"])


