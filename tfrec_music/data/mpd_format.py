"""Synthetic slices in the Million Playlist Dataset's JSON format (the MPD loader's twin).

The recommender idea behind the fake data: playlists are themed, so a
playlist's tracks come mostly from a few artists of one theme (and from their
albums), the structure that playlist continuation and the same-artist /
same-album baselines exploit. Each theme owns a block of artists, each artist
a few albums, each album a few tracks; a playlist draws a theme, 1-4 of its
artists and then tracks (70% from those artists, 30% from the whole theme),
without repeats.

`write_slices` streams slices to a folder one at a time (slice `i` depends
only on the seed and `i`), so writing 100 slices needs the memory of one.
The files follow the published layout: `mpd.slice.<a>-<b>.json` with
`{"info": {...}, "playlists": [...]}`, `collaborative` as `"true"` /
`"false"` strings and tracks with `pos`, `track_uri`, `artist_uri`,
`album_uri`, names and `duration_ms`.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["MPDFormatConfig", "playlist_record", "slice_name", "write_slice", "write_slices",
           "generate_slice"]


@dataclasses.dataclass(frozen=True)
class MPDFormatConfig:
  """Size of the synthetic MPD catalogue and slices.

  Attributes:
    playlists_per_slice: Playlists per slice (the MPD has 1,000).
    n_themes: Themes (each owns `artists_per_theme` artists).
    artists_per_theme: Artists per theme.
    albums_per_artist: Albums per artist.
    tracks_per_album: Tracks per album.
    min_tracks: Shortest playlist.
    max_tracks: Longest playlist.
    seed: Seed of every slice.
  """

  playlists_per_slice: int = 1000
  n_themes: int = 40
  artists_per_theme: int = 25
  albums_per_artist: int = 3
  tracks_per_album: int = 8
  min_tracks: int = 5
  max_tracks: int = 80
  seed: int = 0

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if not isinstance(value, int) or isinstance(value, bool) or (value <= 0 and f.name != "seed"):
        raise ValueError(f"`{f.name}` should be a positive integer. Received: `{f.name}` = "
                         f"{value!r}.")
    if not self.min_tracks <= self.max_tracks:
      raise ValueError("`min_tracks` should be <= `max_tracks`. Received: "
                       f"{self.min_tracks} and {self.max_tracks}.")

  @property
  def n_artists(self) -> int:
    return self.n_themes * self.artists_per_theme

  @property
  def n_tracks(self) -> int:
    return self.n_artists * self.albums_per_artist * self.tracks_per_album


THEME_WORDS = ("chill", "workout", "party", "road trip", "study", "rainy day", "summer",
               "throwback", "sleep", "focus", "country", "indie", "hip hop", "jazz")


def _track(config: MPDFormatConfig, track: int, pos: int) -> Dict[str, Any]:
  per_artist = config.albums_per_artist * config.tracks_per_album
  artist, album = track // per_artist, track // config.tracks_per_album
  return {"pos": pos,
          "artist_name": f"Artist {artist}",
          "track_uri": f"spotify:track:t{track:07d}",
          "artist_uri": f"spotify:artist:a{artist:06d}",
          "track_name": f"Song {track}",
          "album_uri": f"spotify:album:l{album:06d}",
          "duration_ms": 120_000 + (track * 7919) % 240_000,
          "album_name": f"Album {album % config.albums_per_artist}"}


def playlist_record(config: MPDFormatConfig, pid: int, tracks: List[int], name: str,
                    collaborative: bool, modified_at: int,
                    description: Optional[str] = None) -> Dict[str, Any]:
  """One playlist as the MPD writes it (counts derived from `tracks`).

  Args:
    config: Catalogue layout (maps a track index to its artist and album).
    pid: Playlist id.
    tracks: Track indices in playlist order.
    name: Playlist name.
    collaborative: Written as the string "true" / "false".
    modified_at: Unix seconds.
    description: Optional description.
  """
  rows = [_track(config, t, i) for i, t in enumerate(tracks)]
  record = {"name": name, "collaborative": "true" if collaborative else "false", "pid": pid,
            "modified_at": int(modified_at), "num_tracks": len(rows),
            "num_albums": len({r["album_uri"] for r in rows}),
            "num_followers": 1 + pid % 7, "tracks": rows, "num_edits": 1 + pid % 11,
            "duration_ms": int(sum(r["duration_ms"] for r in rows)),
            "num_artists": len({r["artist_uri"] for r in rows})}
  if description is not None:
    record["description"] = description
  return record


def generate_slice(config: MPDFormatConfig, index: int) -> Dict[str, Any]:
  """Slice `index` (playlists `index * n` .. `(index + 1) * n - 1`) as a JSON-ready dict."""
  rng = np.random.default_rng([config.seed, index])
  n = config.playlists_per_slice
  per_artist = config.albums_per_artist * config.tracks_per_album
  per_theme = config.artists_per_theme * per_artist
  playlists = []
  for j in range(n):
    pid = index * n + j
    theme = int(rng.integers(config.n_themes))
    length = int(rng.integers(config.min_tracks, config.max_tracks + 1))
    core = theme * config.artists_per_theme + rng.choice(
        config.artists_per_theme, size=int(rng.integers(1, 5)), replace=False)
    core_tracks = (core[:, None] * per_artist + np.arange(per_artist)).ravel()
    theme_tracks = theme * per_theme + np.arange(per_theme)
    # Popular tracks (low index within an artist) are drawn more often;
    # Gumbel top-k draws without replacement in one step.
    log_w = -np.log1p(np.arange(per_theme) % per_artist)
    n_core = min(int(rng.binomial(length, 0.7)), len(core_tracks))
    core_keys = log_w[core_tracks - theme * per_theme] + rng.gumbel(size=len(core_tracks))
    picked = core_tracks[np.argsort(-core_keys)[:n_core]]
    rest = np.setdiff1d(theme_tracks, picked)
    rest_keys = log_w[rest - theme * per_theme] + rng.gumbel(size=len(rest))
    picked = np.concatenate([picked, rest[np.argsort(-rest_keys)[:length - n_core]]])
    chosen = [int(t) for t in rng.permutation(picked)]
    name = f"{THEME_WORDS[theme % len(THEME_WORDS)]} {theme}"
    playlists.append(playlist_record(
        config, pid, chosen, name, collaborative=bool(rng.random() < 0.1),
        modified_at=1_400_000_000 + int(rng.integers(0, 100_000_000)),
        description="synthetic" if rng.random() < 0.2 else None))
  first, last = index * n, (index + 1) * n - 1
  return {"info": {"generated_on": "synthetic", "slice": f"{first}-{last}",
                   "version": "v1"}, "playlists": playlists}


def slice_name(config: MPDFormatConfig, index: int) -> str:
  """`mpd.slice.<a>-<b>.json` of slice `index`."""
  n = config.playlists_per_slice
  return f"mpd.slice.{index * n}-{(index + 1) * n - 1}.json"


def write_slice(path: str, document: Dict[str, Any]) -> None:
  """Writes one slice (indented like the MPD's files)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(document, f, indent=4)


def write_slices(out_dir: str, n_slices: int,
                 config: MPDFormatConfig = MPDFormatConfig()) -> List[str]:
  """Writes slices 0 .. n_slices - 1 into `out_dir`, one at a time; returns their paths."""
  if not isinstance(n_slices, int) or n_slices <= 0:
    raise ValueError(f"`n_slices` should be a positive integer. Received: `n_slices` = "
                     f"{n_slices!r}.")
  paths = []
  for index in range(n_slices):
    path = os.path.join(out_dir, slice_name(config, index))
    write_slice(path, generate_slice(config, index))
    paths.append(path)
  return paths
