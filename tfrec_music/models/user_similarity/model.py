"""The fitted user-similarity model as a library object (also read back from an export)."""

import dataclasses
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from tfrec_music import io
from tfrec_music.models.track_vectors import TrackVectors
from tfrec_music.models.user_similarity.index import SimilarityIndex
from tfrec_music.models.user_similarity.profiles import TasteParts


@dataclasses.dataclass
class UserSimilarity:
  """The fitted model: a user index, an artist index and what places new users.

  Attributes:
    users: Index of user taste vectors.
    artists: Index of artist centroids over the track vectors (None without
      an `artist` column or without track vectors).
    tracks: The centroid part's track vectors (None without that part).
    parts: How a new user's vector is made from the tracks they played.
  """

  users: SimilarityIndex
  artists: Optional[SimilarityIndex]
  tracks: Optional[TrackVectors]
  parts: TasteParts

  def most_similar_users(self, user: str, k: int = 10) -> pd.DataFrame:
    """The `k` users most similar to `user` (rank, user, score)."""
    return self.users.most_similar(user, k)

  def most_similar_artists(self, artist: str, k: int = 10) -> pd.DataFrame:
    """The `k` artists most similar to `artist` (an artist's centroid over their tracks)."""
    if self.artists is None:
      raise ValueError("This model has no artist index (the items table had no `artist`, or "
                       "the model has no track vectors).")
    return self.artists.most_similar(artist, k)

  def similar_to_tracks(self, track_ids: Sequence[str], k: int = 10) -> pd.DataFrame:
    """Users most similar to a new user who played `track_ids` (unknown ids skipped).

    A track listed n times counts as n plays.

    Raises:
      KeyError: none of the tracks is known to the model.
    """
    query, known = self.parts.queries([self.parts.rows(track_ids)])
    if not known[0]:
      raise KeyError(f"None of the {len(track_ids)} tracks is known to the model.")
    ids, scores = self.users.top_k(query, k)
    return pd.DataFrame({"rank": np.arange(1, ids.shape[1] + 1), "user": ids[0],
                         "score": scores[0]})

  def save(self, directory: str) -> None:
    """Writes `users/`, `artists/`, `tracks/` (with the centroid part) and `parts/`."""
    self.users.save(io.join(directory, "users"))
    if self.artists is not None:
      self.artists.save(io.join(directory, "artists"))
    if self.tracks is not None:
      self.tracks.save(io.join(directory, "tracks"))
    self.parts.save(io.join(directory, "parts"))

  @classmethod
  def load(cls, directory: str) -> "UserSimilarity":
    """Reads `save`'s folder, a version folder (its `vectors/`) or a model folder (latest).

    Folders written before `parts/` existed read as a centroid-only model.
    """
    from tfrec_music.export.saved_model import latest_version_path  # pylint: disable=g-import-not-at-top
    if not io.exists(io.join(directory, "users", "ids.txt")):
      if io.exists(io.join(directory, "vectors", "users", "ids.txt")):
        directory = io.join(directory, "vectors")
      else:
        directory = io.join(latest_version_path(directory), "vectors")
    artists = (SimilarityIndex.load(io.join(directory, "artists"))
               if io.exists(io.join(directory, "artists", "ids.txt")) else None)
    tracks = (TrackVectors.load(io.join(directory, "tracks"))
              if io.exists(io.join(directory, "tracks", "item_ids.txt")) else None)
    if io.exists(io.join(directory, "parts", "parts.json")):
      parts = TasteParts.load(io.join(directory, "parts"), tracks)
    else:
      parts = TasteParts(tracks.item_ids, ("centroid",), np.ones(1), tracks.has_vector, tracks)
    return cls(SimilarityIndex.load(io.join(directory, "users")), artists, tracks, parts)
