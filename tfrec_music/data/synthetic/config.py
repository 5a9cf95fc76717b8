"""Sizes and knobs of the synthetic catalogue, and its named presets."""

import dataclasses
import math
from typing import Dict

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and knobs of the synthetic catalogue.

  Attributes:
    n_users: Number of listeners.
    n_items: Number of tracks.
    n_artists: Number of artists (each has a primary genre).
    n_albums: Number of albums (each belongs to one artist; >= `n_artists`).
    latent_dim: Dimension of the latent taste space.
    min_interactions: Fewest distinct tracks per user.
    mean_interactions: Target mean tracks per user (before the cap).
    max_interactions: Most tracks per user (at most half the catalogue).
    activity_shape: Lomax shape of user activity; smaller is heavier-tailed.
    temperature: Divides the taste dot product in the affinity logits;
      smaller makes users pickier (and the oracle stronger).
    popularity_strength: Scale of the additive log-popularity bias.
    popularity_sigma: Spread of artists' log-popularity (track popularity is
      its artist's plus noise).
    taste_noise: Personal deviation of a user's taste from their genre mix.
    track_noise: A track's own deviation from its album and mood (the part of
      taste that no content feature but audio can reveal).
    track_popularity_noise: Spread of a track's log-popularity around its
      artist's.
    mood_strength: Size of the mood component of track vectors.
    drift_min: Least share by which the late taste moves toward a new genre.
    drift_max: Largest such share.
    n_playlists: Number of themed playlists.
    playlist_min_tracks: Shortest playlist.
    playlist_max_tracks: Longest playlist.
    links_per_user: Most taste-driven friendships a user starts.
    random_link_rate: Chance that a user also starts one random friendship.
    link_candidates: Random users a user's friends are chosen from.
    start_time: First possible timestamp (Unix seconds).
    window_days: Length of the time window.
    user_chunk: Users drawn together; part of the random stream, so changing
      it changes the interactions.
    seed: Seed of every random stream.
  """

  n_users: int = 5000
  n_items: int = 10000
  n_artists: int = 1000
  n_albums: int = 2000
  latent_dim: int = 20
  min_interactions: int = 6
  mean_interactions: float = 65.0
  max_interactions: int = 1500
  activity_shape: float = 2.0
  temperature: float = 0.1
  popularity_strength: float = 1.0
  popularity_sigma: float = 1.5
  taste_noise: float = 0.5
  track_noise: float = 0.3
  track_popularity_noise: float = 0.5
  mood_strength: float = 0.6
  drift_min: float = 0.2
  drift_max: float = 0.5
  n_playlists: int = 1000
  playlist_min_tracks: int = 10
  playlist_max_tracks: int = 60
  links_per_user: int = 3
  random_link_rate: float = 0.2
  link_candidates: int = 50
  start_time: int = 1_577_836_800  # 2020-01-01
  window_days: int = 730
  user_chunk: int = 256
  seed: int = 0

  def __post_init__(self):
    def _check(name, ok, want):
      if not ok:
        raise ValueError(f"`{name}` should be {want}. Received: `{name}` = "
                         f"{getattr(self, name)!r}.")

    for name in ("n_users", "n_items", "n_artists", "n_albums", "latent_dim",
                 "min_interactions", "max_interactions", "playlist_min_tracks",
                 "playlist_max_tracks", "link_candidates", "user_chunk", "window_days"):
      value = getattr(self, name)
      _check(name, isinstance(value, (int, np.integer)) and not isinstance(value, bool)
             and value > 0, "a positive integer")
    for name in ("n_playlists", "links_per_user", "start_time", "seed"):
      value = getattr(self, name)
      _check(name, isinstance(value, (int, np.integer)) and not isinstance(value, bool)
             and value >= 0, "a non-negative integer")
    for name in ("temperature", "activity_shape", "mean_interactions"):
      _check(name, _is_real(getattr(self, name)) and getattr(self, name) > 0,
             "a positive number")
    for name in ("popularity_strength", "popularity_sigma", "taste_noise", "track_noise",
                 "track_popularity_noise", "mood_strength"):
      _check(name, _is_real(getattr(self, name)) and getattr(self, name) >= 0,
             "a non-negative number")
    for name in ("drift_min", "drift_max", "random_link_rate"):
      _check(name, _is_real(getattr(self, name)) and 0 <= getattr(self, name) <= 1,
             "a number in [0, 1]")
    _check("n_users", self.n_users >= 2, "at least 2 (friendships need two users)")
    _check("n_albums", self.n_albums >= self.n_artists,
           f"at least `n_artists` = {self.n_artists} (every artist has an album)")
    _check("n_items", self.n_items >= self.n_albums,
           f"at least `n_albums` = {self.n_albums} (every album has a track)")
    _check("max_interactions", self.min_interactions <= self.max_interactions
           <= self.n_items // 2,
           f"between `min_interactions` = {self.min_interactions} and half the "
           f"catalogue ({self.n_items // 2})")
    _check("mean_interactions", self.mean_interactions >= self.min_interactions,
           f"at least `min_interactions` = {self.min_interactions}")
    _check("drift_max", self.drift_max >= self.drift_min,
           f"at least `drift_min` = {self.drift_min}")
    _check("playlist_max_tracks", self.playlist_min_tracks <= self.playlist_max_tracks
           <= self.n_items, "between `playlist_min_tracks` and `n_items`")


def _is_real(value) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, bool) and math.isfinite(float(value)))


PRESETS: Dict[str, SyntheticConfig] = {
    # Unit tests and smoke runs: about 4k interactions in well under 2 s.
    "tiny": SyntheticConfig(
        n_users=200, n_items=500, n_artists=60, n_albums=120, min_interactions=8,
        mean_interactions=20.0, max_interactions=120, n_playlists=40,
        playlist_max_tracks=40, link_candidates=40),
    # The package default: about 300k interactions.
    "default": SyntheticConfig(),
    # Scale tests: about 5.5M interactions; stream it with `write_large`.
    "large": SyntheticConfig(
        n_users=100_000, n_items=25_000, n_artists=2500, n_albums=5000,
        mean_interactions=56.0, max_interactions=2000, n_playlists=10_000),
}

# Presets `generate` refuses to hold in memory.
STREAM_ONLY_PRESETS = ("large",)


def resolve_config(preset: str = "default", seed: int = 0, **overrides) -> SyntheticConfig:
  """The preset's config with `seed` and `overrides` applied.

  Args:
    preset: One of `PRESETS`.
    seed: Seed of every random stream.
    **overrides: `SyntheticConfig` fields to change (e.g. `n_users=300`).

  Returns:
    The resolved, validated config.

  Raises:
    ValueError: unknown preset, unknown override, or an invalid value.
  """
  if preset not in PRESETS:
    raise ValueError(f"`preset` should be one of {sorted(PRESETS)}. "
                     f"Received: `preset` = {preset!r}.")
  fields = [f.name for f in dataclasses.fields(SyntheticConfig)]
  unknown = [k for k in overrides if k not in fields or k == "seed"]
  if unknown:
    raise ValueError(f"overrides should be `SyntheticConfig` fields other than `seed` "
                     f"(pass `seed=` directly): {fields}. Received: `{unknown[0]}`.")
  return dataclasses.replace(PRESETS[preset], seed=seed, **overrides)
