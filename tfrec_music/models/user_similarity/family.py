"""`--model user_similarity` in the pipeline: fit, friend-pair evaluation, outputs, export."""

import logging
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.evaluation.similarity import similarity_metrics
from tfrec_music.export.projector import write_projector
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.track_vectors import track_vectors as make_track_vectors
from tfrec_music.models.user_similarity import config as config_lib
from tfrec_music.models.user_similarity.config import SIMILARITY_TABLE_KEYS
from tfrec_music.models.user_similarity.config import UserSimilarityConfig
from tfrec_music.models.user_similarity.index import SimilarityIndex
from tfrec_music.models.user_similarity.index import recent_rows
from tfrec_music.models.user_similarity.index import taste_centroids
from tfrec_music.models.user_similarity.model import UserSimilarity
from tfrec_music.models.user_similarity.profiles import fit_parts
from tfrec_music.models.user_similarity.serving import SimilarUsersModule
from tfrec_music.models.user_similarity.serving import save_similar_users_module
from tfrec_music.prepare.prepared import PreparedData


class UserSimilarityFamily(ModelFamily):
  """User-to-user taste similarity plugged into the training pipeline."""

  name = "user_similarity"
  config_class = UserSimilarityConfig
  config_module = config_lib
  table_keys = SIMILARITY_TABLE_KEYS
  # Every user is indexed: no users are held out of the interactions.
  prepare_overrides = {"cold_user_share": 0.0}
  objective = ("valid/all/friend_auc", "max")



  def __init__(self, config: UserSimilarityConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    self.model: Optional[UserSimilarity] = None
    self.fit_summary: Dict[str, Any] = {}
    # Every row of every split: similarity is not scored on held-out tracks.
    self.history = pd.concat([prepared.train, prepared.valid, prepared.test])
    self.recent_history = recent_rows(self.history, config.recent_share)

  def _rows(self, frame: pd.DataFrame, users: pd.Index
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user rows, catalogue rows, play counts) of a frame's catalogue rows."""
    items = self.prepared.item_index(frame["item_id"])
    rows = users.get_indexer(frame["user_id"].astype(str))
    plays = (pd.to_numeric(frame["weight"], errors="coerce").fillna(1.0).clip(lower=0.0)
             .to_numpy(np.float64) if "weight" in frame.columns else np.ones(len(frame)))
    keep = (items >= 0) & (rows >= 0)
    return rows[keep], items[keep], plays[keep]

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Fits the parts (track vectors first for `centroid`); writes heatmaps and projector."""
    config, prepared = self.config, self.prepared
    tracks, summary = None, {"parts": list(config.parts)}
    start = time.perf_counter()
    if "centroid" in config.parts:
      tracks = make_track_vectors(
          prepared, config.track_vectors, job_dir=job_dir, word_vectors=config.word_vectors,
          word_dim=config.word_dim, text_columns=config.text_columns,
          vector_column=config.vector_column, two_tower_preset=config.two_tower_preset,
          two_tower_export=config.two_tower_export,
          two_tower_overrides={"features": config.two_tower_features}, seed=config.seed)
      summary.update({"track_vectors": tracks.source, "dim": tracks.dim,
                      "tracks_with_vectors": int(tracks.has_vector.sum()),
                      "track_vectors_seconds": time.perf_counter() - start})
    start = time.perf_counter()
    user_ids = np.unique(self.history["user_id"].astype(str).to_numpy()).astype(object)
    index = pd.Index(user_ids)
    rows = {"all": self._rows(self.history, index),
            "centroid": self._rows(self.recent_history, index)}
    vectors, placed, parts, by_part = fit_parts(
        config.parts, rows, len(user_ids), prepared.item_ids, tracks, lsa_dim=config.lsa_dim,
        als_rank=config.als_rank, als_reg=config.als_reg, als_alpha=config.als_alpha,
        seed=config.seed)
    users = SimilarityIndex(user_ids[placed], vectors[placed], config.metric, config.epsilon,
                            "user")
    artists = None
    if tracks is not None and "artist" in prepared.items.columns:
      names = prepared.items["artist"].fillna("").astype(str).to_numpy()
      named = names != ""
      artist_ids, artist_vectors, _ = taste_centroids(names[named], np.flatnonzero(named), tracks)
      artists = SimilarityIndex(artist_ids, artist_vectors, config.metric, config.epsilon,
                                "artist")
    self.model = UserSimilarity(users, artists, tracks, parts)
    counts = np.bincount(rows["all"][0], minlength=len(user_ids))
    summary.update({
        "part_weights": {n: float(w) for n, w in zip(parts.names, parts.weights)},
        "part_dims": {n: int(v.shape[1]) for n, v in by_part.items()},
        "parts_seconds": time.perf_counter() - start,
        "users_indexed": len(users), "users_without_vectors": int((~placed).sum()),
        "artists_indexed": len(artists) if artists is not None else 0,
        "median_tracks_per_user": float(np.median(counts)) if len(counts) else 0.0})
    self.fit_summary = summary
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
    if model.tracks is None:
      raise ValueError("The track scorer compares the taste centroid with each track: fit with "
                       f"'centroid' in `parts`. Received: `parts` = {self.config.parts!r}.")
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
    return {kind: SimilarUsersModule(model.users.ids, model.users.vectors, model.parts,
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
                                 "scores, known (a new user placed by the same parts)",
            "scann/": "the same signatures over a ScaNN index (needs ScaNN ops)",
            "vectors/": "users/, artists/ (ids.txt, vectors.npy, index.json), tracks/ "
                        "(with the centroid part), parts/ (parts.json, item_ids.txt, the "
                        "lsa and als track arrays)"}
