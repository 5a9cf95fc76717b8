"""User-to-user taste similarity (`--model user_similarity`): "people with your taste".

The recommender idea: a user's taste vector is the centroid (mean) of the
vectors of the tracks they played; two users are alike when their centroids
are close. The score of a pair is `1 / (||u - v|| + epsilon)` (Euclidean; a
distance of 0 gives the finite score `1 / epsilon`), or the cosine of the two
centroids (`metric="cosine"`). Track vectors come from the two-tower track
tower, from text through word vectors, or from a precomputed column
(`tfrec_music.models.track_vectors`). Pseudo-users work the same way: an
artist's centroid over their tracks, so similar artists come out similar.
Distances within float rounding of 0 count as 0 (see `ROUNDING`). Tastes
drift, so the centroid may be taken over each user's most recent tracks
(`recent_share`; the `default` preset uses the recent half, 1.0 is the plain
centroid over every track).

There are no labels for taste similarity, so validation uses friendships
(`user_links`): friend pairs against random non-friend pairs (AUC), the share
of users whose 10 most similar users include a friend, and on synthetic data
the rank correlation with the generator's true taste similarity
(`tfrec_music.evaluation.similarity`).

Export (`saved_models/user_similarity/<version>/`):
- `serving_default(user_id [B])` -> `user_ids [B, k]`, `scores [B, k]`,
  `known [B]` (the most similar other users; unknown ids get `known = False`,
  empty ids and zero scores).
- `similar_to_tracks(track_ids [B, T])` (padded with "") -> the same, for a
  new user given the tracks they played (unknown tracks are skipped).
- `scann/`: the same signatures over a ScaNN index (the exact index is what
  stock TF Serving loads).
- Fallbacks: there is no one to compare an unknown user (or a new user with
  no known track, or an empty [B, 0] track list) with, so those rows answer
  `known = False` with empty ids and zero scores rather than strangers.
  `k` (`top_k`) is clamped to the number of users less one; a user never
  comes back as its own neighbour; duplicated tracks count twice in a new
  user's centroid (as repeated plays); identical rows give identical
  outputs (`tests/test_serving_fallbacks_playlist.py`).
- `vectors/users`, `vectors/artists`, `vectors/tracks`: the vectors, read by
  `UserSimilarity.load` and `python -m trainer.similar`.
"""

import argparse
import dataclasses
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.evaluation.similarity import similarity_metrics
from tfrec_music.export.projector import write_projector
from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.track_vectors import DEFAULT_TEXT_COLUMNS
from tfrec_music.models.track_vectors import SOURCES
from tfrec_music.models.track_vectors import TrackVectors
from tfrec_music.models.track_vectors import track_vectors as make_track_vectors
from tfrec_music.prepare.prepared import PreparedData

METRICS = ("euclidean", "cosine")
# Squared distances below this share of ||u||^2 + ||v||^2 are float rounding of
# `||u||^2 + ||v||^2 - 2 u.v` and count as 0 (score 1 / epsilon), so equal
# tastes score the same in numpy (float64) and in the export (float32).
ROUNDING = 1e-5
SIMILARITY_TABLE_KEYS = ("test/all/friend_auc", "test/all/friend_in_top10",
                         "test/all/oracle_spearman")


@dataclasses.dataclass(frozen=True)
class UserSimilarityConfig:
  """User-similarity settings.

  Attributes:
    track_vectors: Source of track vectors: `two_tower`, `text` or `column`.
    word_vectors: For `text`: `colisten`, `cooccurrence` or a GloVe file path.
    word_dim: Size of learned word vectors.
    text_columns: Item text columns used by `text`.
    vector_column: Items column read by `column`.
    two_tower_preset: Preset of the two-tower trained for `two_tower`.
    two_tower_export: A two-tower version folder to read track vectors from
      instead of training one.
    two_tower_features: `all` (content features) or `ids` for that two-tower.
    recent_share: Share of each user's most recent tracks (by timestamp)
      their centroid is taken over; 1.0 = every track (the plain centroid).
      Tastes drift, and friendships follow the current taste.
    metric: `euclidean` (score 1 / (distance + epsilon)) or `cosine`.
    epsilon: Added to the distance so identical tastes get a finite score.
    top_k: Similar users per request in the export.
    heatmap_size: Users and artists in the heatmaps written at fit time.
    seed: Seed of evaluation draws and SVDs.
  """

  track_vectors: str = "two_tower"
  word_vectors: str = "colisten"
  word_dim: int = 32
  text_columns: Tuple[str, ...] = DEFAULT_TEXT_COLUMNS
  vector_column: str = "text_vector"
  two_tower_preset: str = "default"
  two_tower_export: str = ""
  two_tower_features: str = "all"
  recent_share: float = 1.0
  metric: str = "euclidean"
  epsilon: float = 1e-6
  top_k: int = 10
  heatmap_size: int = 20
  seed: int = 0

  def __post_init__(self):
    check_choices(self, {"track_vectors": SOURCES, "metric": METRICS})
    check_shares(self, ("recent_share",), zero=False)
    check_numbers(self, ("epsilon",), positive=True)
    check_ints(self, ("top_k", "word_dim"))
    object.__setattr__(self, "text_columns", tuple(self.text_columns))


# --------------------------------------------------------------------------
# Centroids and the numpy index (the library API).
# --------------------------------------------------------------------------


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
  """The most recent `share` of each user's rows (at least one; all rows when share = 1).

  Order is by `timestamp` when present, else the frame's order.
  """
  if share >= 1.0 or not len(frame):
    return frame
  if "timestamp" in frame.columns:
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
  else:
    frame = frame.sort_values("user_id", kind="stable")
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
    with tf.io.gfile.GFile(io.join(directory, "vectors.npy"), "wb") as f:
      np.save(f, self.vectors, allow_pickle=False)
    io.write_text(io.join(directory, "index.json"),
                  json.dumps({"metric": self.metric, "epsilon": self.epsilon,
                              "kind": self.kind}) + "\n")

  @classmethod
  def load(cls, directory: str) -> "SimilarityIndex":
    """Reads what `save` wrote."""
    meta = json.loads(io.read_text(io.join(directory, "index.json")))
    ids = io.read_text(io.join(directory, "ids.txt")).split("\n")[:-1]
    with tf.io.gfile.GFile(io.join(directory, "vectors.npy"), "rb") as f:
      vectors = np.load(f, allow_pickle=False)
    return cls(ids, vectors, meta["metric"], meta["epsilon"], meta["kind"])


@dataclasses.dataclass
class UserSimilarity:
  """The fitted model: user and artist indexes over one set of track vectors.

  Attributes:
    users: Index of user taste centroids.
    artists: Index of artist centroids (None without an `artist` column).
    tracks: The track vectors.
  """

  users: SimilarityIndex
  artists: Optional[SimilarityIndex]
  tracks: TrackVectors

  def most_similar_users(self, user: str, k: int = 10) -> pd.DataFrame:
    """The `k` users most similar to `user` (rank, user, score)."""
    return self.users.most_similar(user, k)

  def most_similar_artists(self, artist: str, k: int = 10) -> pd.DataFrame:
    """The `k` artists most similar to `artist` (an artist's centroid over their tracks)."""
    if self.artists is None:
      raise ValueError("This model has no artist index (the items table had no `artist`).")
    return self.artists.most_similar(artist, k)

  def similar_to_tracks(self, track_ids: Sequence[str], k: int = 10) -> pd.DataFrame:
    """Users most similar to a new user who played `track_ids` (unknown ids skipped).

    Raises:
      KeyError: none of the tracks has a vector.
    """
    pos = pd.Index(self.tracks.item_ids.astype(str)).get_indexer(pd.Series(track_ids).astype(str))
    pos = pos[pos >= 0]
    pos = pos[self.tracks.has_vector[pos]]
    if not len(pos):
      raise KeyError(f"None of the {len(track_ids)} tracks is known to the model.")
    ids, scores = self.users.top_k(self.tracks.vectors[pos].mean(0, keepdims=True), k)
    return pd.DataFrame({"rank": np.arange(1, ids.shape[1] + 1), "user": ids[0],
                         "score": scores[0]})

  def save(self, directory: str) -> None:
    """Writes `users/`, `artists/` and `tracks/` under `directory`."""
    self.users.save(io.join(directory, "users"))
    if self.artists is not None:
      self.artists.save(io.join(directory, "artists"))
    self.tracks.save(io.join(directory, "tracks"))

  @classmethod
  def load(cls, directory: str) -> "UserSimilarity":
    """Reads `save`'s folder, a version folder (its `vectors/`) or a model folder (latest)."""
    from tfrec_music.export.saved_model import latest_version_path  # pylint: disable=g-import-not-at-top
    if not io.exists(io.join(directory, "users", "ids.txt")):
      if io.exists(io.join(directory, "vectors", "users", "ids.txt")):
        directory = io.join(directory, "vectors")
      else:
        directory = io.join(latest_version_path(directory), "vectors")
    artists = (SimilarityIndex.load(io.join(directory, "artists"))
               if io.exists(io.join(directory, "artists", "ids.txt")) else None)
    return cls(SimilarityIndex.load(io.join(directory, "users")), artists,
               TrackVectors.load(io.join(directory, "tracks")))


# --------------------------------------------------------------------------
# Serving.
# --------------------------------------------------------------------------


class SimilarUsersModule(tf.Module):
  """User id (or a new user's track ids) -> the k most similar users and scores.

  Args:
    user_ids: [U] indexed users.
    user_vectors: [U, d] their centroids.
    item_ids: [I] catalogue track ids.
    track_vectors: [I, d] track vectors.
    has_vector: [I] bool, tracks usable in a centroid.
    metric: `euclidean` or `cosine`.
    epsilon: Distance offset of the euclidean score.
    k: Results per request (clamped to U - 1).
    index_kind: `exact` (brute force) or `scann`.
    scann_options: See `tfrec_music.export.retrieval.make_scann_index`.
  """

  def __init__(self, user_ids: np.ndarray, user_vectors: np.ndarray, item_ids: np.ndarray,
               track_vectors: np.ndarray, has_vector: np.ndarray, metric: str, epsilon: float,
               k: int, index_kind: str = "exact",
               scann_options: Optional[Dict[str, int]] = None):
    super().__init__()
    if index_kind not in ("exact", "scann"):
      raise ValueError("`index_kind` should be 'exact' or 'scann'. "
                       f"Received: `index_kind` = {index_kind!r}.")
    if len(user_ids) < 2:
      raise ValueError(f"Need at least 2 users to export similar users. Received: {len(user_ids)}.")
    self.metric, self.index_kind = metric, index_kind
    self.epsilon = float(epsilon)
    self.k = max(1, min(int(k), len(user_ids) - 1))
    ids = np.asarray(user_ids).astype(str).astype(object)
    vectors = np.asarray(user_vectors, np.float32)
    if metric == "cosine":
      vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    self.user_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="user_ids")
    self.user_vectors = tf.Variable(vectors, trainable=False, name="user_vectors")
    self.user_sq_norm = tf.Variable((vectors.astype(np.float64) ** 2).sum(1).astype(np.float32),
                                    trainable=False, name="user_sq_norm")
    self.user_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                            tf.range(len(ids), dtype=tf.int64)), default_value=-1)
    items = np.asarray(item_ids).astype(str).astype(object)
    self.track_vectors = tf.Variable(np.asarray(track_vectors, np.float32), trainable=False,
                                     name="track_vectors")
    self.has_vector = tf.Variable(np.asarray(has_vector, bool), trainable=False, name="has_vector")
    self.track_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(items, tf.string),
                                            tf.range(len(items), dtype=tf.int64)), default_value=-1)
    if index_kind == "scann":
      from tfrec_music.export.retrieval import make_scann_index  # pylint: disable=g-import-not-at-top
      self.fetch_k = min(len(ids), self.k + 1)
      self.index = make_scann_index(self._augmented(vectors), ids, self.fetch_k, scann_options)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      rows = self.user_table.lookup(user_id)
      known = rows >= 0
      queries = tf.gather(self.user_vectors, tf.maximum(rows, 0))
      return self._answer(queries, known, exclude=tf.where(known, rows, -1))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="track_ids")])
    def similar_to_tracks(track_ids):
      rows = self.track_table.lookup(track_ids)
      usable = (rows >= 0) & tf.gather(self.has_vector, tf.maximum(rows, 0))
      weights = tf.cast(usable, tf.float32)[..., tf.newaxis]
      total = tf.reduce_sum(tf.gather(self.track_vectors, tf.maximum(rows, 0)) * weights, axis=1)
      count = tf.reduce_sum(weights, axis=1)
      queries = total / tf.maximum(count, 1.0)
      if self.metric == "cosine":
        queries = tf.math.l2_normalize(queries, axis=1)
      known = count[:, 0] > 0
      return self._answer(queries, known,
                          exclude=tf.fill([tf.shape(track_ids)[0]], tf.constant(-1, tf.int64)))

    self.serve = serve
    self.similar_to_tracks = similar_to_tracks

  def _augmented(self, vectors: np.ndarray) -> np.ndarray:
    """Candidates for a dot-product index whose order is the metric's order.

    Euclidean: `[2 v, -||v||^2] . [q, 1] = ||q||^2 - ||q - v||^2`.
    """
    if self.metric == "cosine":
      return vectors
    sq = (vectors.astype(np.float64) ** 2).sum(1, keepdims=True)
    return np.concatenate([2.0 * vectors, -sq], axis=1).astype(np.float32)

  def _to_score(self, dots, queries):
    """Index dot products [B, n] -> the metric's scores."""
    if self.metric == "cosine":
      return dots
    q_sq = tf.reduce_sum(queries * queries, axis=1, keepdims=True)
    sq = q_sq - dots
    # ||v||^2 = ||q||^2 - sq + ... is not at hand here; ||q||^2 bounds the scale.
    sq = tf.where(sq <= ROUNDING * 2.0 * q_sq, tf.zeros_like(sq), sq)
    return 1.0 / (tf.sqrt(sq) + self.epsilon)

  def _answer(self, queries, known, exclude):
    if self.index_kind == "exact":
      if self.metric == "cosine":
        dots = tf.matmul(queries, self.user_vectors, transpose_b=True)
      else:
        dots = 2.0 * tf.matmul(queries, self.user_vectors, transpose_b=True) \
            - self.user_sq_norm[tf.newaxis, :]
      n = tf.shape(self.user_vectors)[0]
      is_self = tf.equal(tf.range(n, dtype=tf.int64)[tf.newaxis, :], exclude[:, tf.newaxis])
      dots = tf.where(is_self, tf.constant(-np.inf, tf.float32), dots)
      top_dots, top = tf.math.top_k(dots, k=self.k)
      ids = tf.gather(self.user_ids, top)
    else:
      augmented = tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1) \
          if self.metric == "euclidean" else queries
      dots, fetched = self.index(augmented, k=self.fetch_k)
      self_ids = tf.gather(self.user_ids, tf.maximum(exclude, 0))
      is_self = tf.equal(fetched, self_ids[:, tf.newaxis]) & (exclude >= 0)[:, tf.newaxis]
      dots = tf.where(is_self, tf.constant(-np.inf, dots.dtype), dots)
      top_dots, top = tf.math.top_k(dots, k=self.k)
      ids = tf.gather(fetched, top, batch_dims=1)
    scores = self._to_score(top_dots, queries)
    use = known[:, tf.newaxis]
    return {"user_ids": tf.where(use, ids, tf.fill(tf.shape(ids), "")),
            "scores": tf.where(use, scores, tf.zeros_like(scores)),
            "known": known}

  def signatures(self) -> Dict[str, Callable]:
    """Signatures for `tf.saved_model.save`."""
    return {"serving_default": self.serve, "similar_to_tracks": self.similar_to_tracks}


def save_similar_users_module(module: SimilarUsersModule, directory: str) -> None:
  """Saves the module (ScaNN variants whitelist the `Scann` op namespace)."""
  options = (tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
             if module.index_kind == "scann" else None)
  tf.saved_model.save(module, directory, signatures=module.signatures(), options=options)


# --------------------------------------------------------------------------
# The family.
# --------------------------------------------------------------------------


class UserSimilarityFamily(ModelFamily):
  """Taste-centroid user similarity plugged into the training pipeline."""

  name = "user_similarity"
  config_class = UserSimilarityConfig
  table_keys = SIMILARITY_TABLE_KEYS
  # Every user is indexed: no users are held out of the interactions.
  prepare_overrides = {"cold_user_share": 0.0}
  objective = ("valid/all/friend_auc", "max")

  @classmethod
  def presets(cls) -> Dict[str, Dict[str, Any]]:
    """`tiny` trains a tiny two-tower in seconds; `default` is the measured setting
    (centroid of each user's recent half, chosen on validation friend AUC)."""
    return {"tiny": {"two_tower_preset": "tiny", "heatmap_size": 8},
            "default": {"recent_share": 0.5}}

  @classmethod
  def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
    """User-similarity flags; each `dest` is a `UserSimilarityConfig` field."""
    group.add_argument("--track-vectors", dest="track_vectors", choices=SOURCES, default=None,
                       help="Track vectors from the two-tower track tower, from text through "
                            "word vectors, or from a precomputed items column.")
    group.add_argument("--word-vectors", dest="word_vectors", default=None,
                       help="For --track-vectors text: colisten (learned from co-listening), "
                            "cooccurrence (from the text alone) or a GloVe-format file path.")
    group.add_argument("--vector-column", dest="vector_column", default=None,
                       help="For --track-vectors column: the items column holding vectors.")
    group.add_argument("--two-tower-export", dest="two_tower_export", default=None,
                       help="For --track-vectors two_tower: read the vectors from this "
                            "two-tower version folder instead of training one.")
    group.add_argument("--recent-share", dest="recent_share", type=float, default=None,
                       help="Centroid over each user's most recent share of tracks (1: all).")
    group.add_argument("--metric", choices=METRICS, default=None,
                       help="euclidean: score 1/(distance + epsilon); cosine: cosine.")

  def __init__(self, config: UserSimilarityConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    self.model: Optional[UserSimilarity] = None
    self.fit_summary: Dict[str, Any] = {}
    self.history = recent_rows(pd.concat([prepared.train, prepared.valid, prepared.test]),
                               config.recent_share)

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Makes track vectors, then the user and artist centroids; writes heatmaps and projector."""
    config, prepared = self.config, self.prepared
    tracks = make_track_vectors(
        prepared, config.track_vectors, job_dir=job_dir, word_vectors=config.word_vectors,
        word_dim=config.word_dim, text_columns=config.text_columns,
        vector_column=config.vector_column, two_tower_preset=config.two_tower_preset,
        two_tower_export=config.two_tower_export,
        two_tower_overrides={"features": config.two_tower_features}, seed=config.seed)
    user_ids, user_vectors, counts = taste_centroids(
        self.history["user_id"], prepared.item_index(self.history["item_id"]), tracks)
    users = SimilarityIndex(user_ids, user_vectors, config.metric, config.epsilon, "user")
    artists = None
    if "artist" in prepared.items.columns:
      names = prepared.items["artist"].fillna("").astype(str).to_numpy()
      named = names != ""
      artist_ids, artist_vectors, _ = taste_centroids(
          names[named], np.flatnonzero(named), tracks)
      artists = SimilarityIndex(artist_ids, artist_vectors, config.metric, config.epsilon,
                                "artist")
    self.model = UserSimilarity(users, artists, tracks)
    n_all = self.history["user_id"].nunique()
    self.fit_summary = {"track_vectors": tracks.source, "dim": tracks.dim,
                        "tracks_with_vectors": int(tracks.has_vector.sum()),
                        "users_indexed": len(users), "users_without_vectors": int(n_all - len(users)),
                        "artists_indexed": len(artists) if artists is not None else 0,
                        "median_tracks_per_user": float(np.median(counts)) if len(counts) else 0.0}
    self.fit_summary["files"] = self._write_heatmaps(job_dir) + [self._write_projector(job_dir)]
    logging.info("user_similarity: %s", {k: v for k, v in self.fit_summary.items() if k != "files"})
    return self.fit_summary

  def _require_model(self) -> UserSimilarity:
    if self.model is None:
      raise RuntimeError("Call `fit` first.")
    return self.model

  def most_similar_users(self, user: str, k: int = 10) -> pd.DataFrame:
    """The `k` users most similar to `user`."""
    return self._require_model().most_similar_users(user, k)

  def most_similar_artists(self, artist: str, k: int = 10) -> pd.DataFrame:
    """The `k` artists most similar to `artist`."""
    return self._require_model().most_similar_artists(artist, k)

  # ---------------------------------------------------------------- outputs
  def heatmap_selection(self, index: SimilarityIndex, n: int) -> List[str]:
    """A readable selection: the first few ids plus each one's nearest neighbour."""
    rng = np.random.default_rng(self.config.seed)
    seeds = rng.choice(len(index), size=min(max(n // 2, 1), len(index)), replace=False)
    chosen: List[str] = []
    for row in seeds:
      key = index.ids[row]
      near = index.top_ids([key], 1)[0][0]
      for candidate in (key, near):
        if candidate not in chosen and len(chosen) < n:
          chosen.append(candidate)
    return chosen

  def _write_heatmaps(self, job_dir: str) -> List[str]:
    from tfrec_music.heatmap import similarity_heatmap  # pylint: disable=g-import-not-at-top
    model = self._require_model()
    files: List[str] = []
    for name, index in (("users", model.users), ("artists", model.artists)):
      if index is None or len(index) < 2 or not self.config.heatmap_size:
        continue
      chosen = self.heatmap_selection(index, self.config.heatmap_size)
      matrix = index.pairwise(chosen)
      # The self score (1 / epsilon for euclidean) would flatten every other colour.
      np.fill_diagonal(matrix, np.nan)
      files += similarity_heatmap(matrix, chosen,
                                  io.join(job_dir, f"heatmap_{name}.png"),
                                  title=f"{name}: {index.metric} similarity")
    return files

  def _write_projector(self, job_dir: str) -> str:
    """User vectors in TensorBoard's embedding projector, labelled by id and country."""
    model = self._require_model()
    users = self.prepared.users
    country = (users.set_index("user_id")["country"].reindex(model.users.ids).fillna("")
               .astype(str).to_numpy() if users is not None and "country" in users.columns
               else np.full(len(model.users), ""))
    labels = pd.DataFrame({"user_id": np.asarray(model.users.ids), "country": country})
    return write_projector(io.join(job_dir, "logs", "projector_users"), model.users.vectors,
                           labels, name="user_vectors")

  # ---------------------------------------------------------------- evaluation
  def score_fn(self):
    """Track scorer for the retrieval protocol: similarity of the user's centroid to each track.

    The centroid of a split uses only the history before it (train for
    `valid`, train + valid for `test`).
    """
    model = self._require_model()
    tracks = SimilarityIndex(self.prepared.item_ids, model.tracks.vectors, self.config.metric,
                             self.config.epsilon, "track")
    frames = {"valid": self.prepared.train,
              "test": pd.concat([self.prepared.train, self.prepared.valid])}

    def scorer(split):
      history = frames.get(split, self.prepared.train)
      ids, vectors, _ = taste_centroids(history["user_id"],
                                        self.prepared.item_index(history["item_id"]), model.tracks)
      position = pd.Index(ids)

      def _score(user_ids):
        rows = position.get_indexer(pd.Series(user_ids).astype(str))
        queries = np.where((rows >= 0)[:, None], vectors[np.maximum(rows, 0)], 0.0)
        return tracks.scores(queries)
      return _score
    return scorer

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """Friend-pair AUC, friend in top-10 and (synthetic) oracle rank correlation.

    The oracle row scores pairs by the generator's true taste cosine: the
    ceiling of what taste similarity can say about friendships.
    """
    model = self._require_model()
    oracle = getattr(context, "oracle", None)
    truth = oracle.taste_similarity if oracle is not None else None
    users = model.users
    out = {"model": similarity_metrics(users.score_pairs, users.top_ids, users.ids,
                                       self.prepared.user_links, truth=truth,
                                       seed=self.config.seed)}
    if oracle is not None:
      truth_index = SimilarityIndex(users.ids, oracle.user_taste(users.ids), "cosine",
                                    kind="user")
      out["oracle"] = similarity_metrics(truth_index.score_pairs, truth_index.top_ids,
                                         users.ids, self.prepared.user_links, truth=truth,
                                         seed=self.config.seed)
    return out

  def validation_metrics(self) -> Dict[str, float]:
    """Validation half of the friend pairs only."""
    users = self._require_model().users
    metrics = similarity_metrics(users.score_pairs, None, users.ids, self.prepared.user_links,
                                 seed=self.config.seed)
    return {k: v for k, v in metrics.items() if k.startswith("valid/")}

  # ---------------------------------------------------------------- export
  def serving_modules(self, scann_options: Optional[Dict[str, int]] = None
                      ) -> Dict[str, SimilarUsersModule]:
    """The exact and ScaNN serving modules."""
    model = self._require_model()
    return {kind: SimilarUsersModule(model.users.ids, model.users.vectors, model.tracks.item_ids,
                                     model.tracks.vectors, model.tracks.has_vector,
                                     self.config.metric, self.config.epsilon, self.config.top_k,
                                     kind, scann_options)
            for kind in ("exact", "scann")}

  def save(self, directory: str) -> Dict[str, str]:
    """Exact SavedModel, `scann/` variant and the vectors (`vectors/`)."""
    modules = self.serving_modules()
    save_similar_users_module(modules["exact"], directory)
    save_similar_users_module(modules["scann"], io.join(directory, "scann"))
    self._require_model().save(io.join(directory, "vectors"))
    k = modules["exact"].k
    return {"serving_default": f"user_id [B] -> user_ids [B, {k}], scores [B, {k}], known [B] "
                               "(the user itself excluded; unknown ids: known=False)",
            "similar_to_tracks": f"track_ids [B, T] (padded with '') -> user_ids [B, {k}], "
                                 "scores, known (a new user's centroid)",
            "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
            "vectors/": "users/, artists/ (ids.txt, vectors.npy, index.json), tracks/"}
