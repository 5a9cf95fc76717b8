"""Playlist continuation baselines: same artist, same album, global popularity.

Each is a `PlaylistScorer` for `tfrec_music.evaluation.playlist`: seeds in,
one score per catalogue track out. Popularity is the number of training
playlists holding the track.

- `popularity`: the most frequent training tracks, whatever the seeds.
- `same_artist`: tracks by the seed tracks' artists first, ordered by how
  many seeds share the track's artist, then by popularity; the remaining
  catalogue follows by popularity (so 500 recommendations always exist).
- `same_album`: the same with albums.

Without seeds (a name-only playlist) the artist and album baselines are the
popularity baseline.
"""

from typing import Dict, Sequence

import numpy as np
import pandas as pd

from tfrec_music.evaluation.playlist import PlaylistQueries
from tfrec_music.evaluation.playlist import PlaylistScorer

__all__ = ["popularity_scorer", "same_group_scorer", "playlist_baselines"]


def _popularity(counts: np.ndarray) -> np.ndarray:
  # log1p keeps the order of counts and values in a modest, positive range.
  return np.log1p(np.asarray(counts, dtype=np.float64))


def popularity_scorer(item_train_counts: np.ndarray) -> PlaylistScorer:
  """Global popularity: the same ranking for every playlist.

  Args:
    item_train_counts: [n_items] training playlists per track.
  """
  scores = _popularity(item_train_counts)

  def score(queries: PlaylistQueries) -> np.ndarray:
    return np.broadcast_to(scores, (len(queries), len(scores)))
  return score


def same_group_scorer(groups: Sequence, item_train_counts: np.ndarray) -> PlaylistScorer:
  """Tracks sharing a group (artist, album) with the seeds, by popularity.

  score = (seeds in the track's group) * (max popularity + 1) + popularity, so
  every track of a seed group ranks above every other track, groups holding
  more seeds first.

  Args:
    groups: [n_items] group label of each track (None / NaN / "" = none).
    item_train_counts: [n_items] training playlists per track.
  """
  labels = pd.Series(list(groups), dtype=object)
  labels = labels.where(labels.notna() & (labels.astype(str) != ""), None)
  codes, uniques = pd.factorize(labels, use_na_sentinel=True)
  codes = codes.astype(np.int64)
  n_groups = len(uniques)
  popularity = _popularity(item_train_counts)
  scale = float(popularity.max()) + 1.0
  has_group = codes >= 0
  safe = np.where(has_group, codes, 0)

  def score(queries: PlaylistQueries) -> np.ndarray:
    per_group = np.zeros((len(queries), max(n_groups, 1)))
    for row, seed in enumerate(queries.seeds):
      seed_codes = codes[np.asarray(seed, dtype=np.int64)]
      seed_codes = seed_codes[seed_codes >= 0]
      if seed_codes.size:
        per_group[row] = np.bincount(seed_codes, minlength=per_group.shape[1])
    shared = np.where(has_group[np.newaxis, :], per_group[:, safe], 0.0)
    return shared * scale + popularity[np.newaxis, :]
  return score


def playlist_baselines(items: pd.DataFrame,
                       item_train_counts: np.ndarray) -> Dict[str, PlaylistScorer]:
  """The baselines the catalogue allows: `popularity`, and `same_artist` /
  `same_album` when the items table has those columns.

  Args:
    items: Catalogue in index order (`artist`, `album` optional).
    item_train_counts: [n_items] training playlists per track.
  """
  out = {"popularity": popularity_scorer(item_train_counts)}
  if "artist" in items.columns:
    out["same_artist"] = same_group_scorer(items["artist"].to_numpy(), item_train_counts)
  if "album" in items.columns:
    # Album titles repeat across artists ("Greatest Hits"): group by both.
    album = items["album"]
    if "artist" in items.columns:
      album = album.where(album.isna(), items["artist"].astype(str) + "\x1f" + album.astype(str))
    out["same_album"] = same_group_scorer(album.to_numpy(), item_train_counts)
  return out
