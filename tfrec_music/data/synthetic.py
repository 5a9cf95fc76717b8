"""The embedded synthetic music catalogue: the package's default data.

A seeded generator with the structure of real music data, so every model can
be trained and evaluated with no download, and measured against the truth:

- A latent taste space (`latent_dim`, default 20). A 3-level genre hierarchy
  like Yahoo! Music's (6 parent genres, 3 genres each, 6 level-3 subgenres);
  each node's vector lies near its parent's. Artists have a primary genre
  (artist = genre + noise), albums belong to artists (album = artist + smaller
  noise), tracks to albums (track = album + mood + noise). Six moods add a
  component that cuts across genres.
- Content carries the latent signal: genre, parent genre, artist, album, mood
  and tags name the track's place in the hierarchy; titles and lyrics-like
  `text` are drawn from genre- and mood-specific vocabularies; the audio
  features are a fixed random linear map of the track vector plus noise,
  squashed into realistic ranges.
- Users have a sparse taste mixture over 1-3 genres (biased by their
  country), a mood tilt and personal noise, and their taste drifts: the early
  half of their history follows the early taste, the late half a taste moved
  part-way toward another genre.
- Interactions: power-law user activity; power-law item popularity through an
  additive log-popularity bias. Affinity logits are
  `item_vectors @ taste / temperature + item_bias`; each user's distinct items
  are drawn by the Gumbel-top-k trick (sampling without replacement).
  Ratings are bimodal like real explicit ratings; play counts heavy-tailed.
- Friendships link users with similar tastes (plus some random links);
  themed playlists (`"chill indie rock 3"`) are drawn from their theme.
- The `Oracle` holds the true scores: the ceiling no model can beat.

Every draw comes from `np.random.default_rng` streams seeded by
`(seed, stream)`, and interactions are drawn per fixed chunk of
`user_chunk` users with a `(seed, stream, chunk)` stream, so `generate` and
the streaming `write_large` produce the same rows bit for bit.

Example:
  >>> from tfrec_music.data import synthetic
  >>> catalog = synthetic.generate("tiny", seed=0)
  >>> print(synthetic.format_data_card(catalog.data_card()))

Command line (the `large` preset is streamed to sharded parquet files):
  python -m tfrec_music.data.synthetic --preset large --out /tmp/large
"""

import argparse
import dataclasses
import io as _pyio
import json
import logging
import math
import os
import resource
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

from tfrec_music import io
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables

# --------------------------------------------------------------------------
# Fixed vocabularies: the genre tree, moods and words.
# --------------------------------------------------------------------------

# (name, parent name or None). Level 1 nodes first, then level 2, then 3.
GENRE_TREE: Tuple[Tuple[str, Optional[str]], ...] = (
    ("rock", None), ("pop", None), ("hip hop", None), ("electronic", None),
    ("jazz", None), ("folk", None),
    ("indie rock", "rock"), ("metal", "rock"), ("classic rock", "rock"),
    ("synth pop", "pop"), ("dance pop", "pop"), ("k-pop", "pop"),
    ("trap", "hip hop"), ("boom bap", "hip hop"), ("r&b", "hip hop"),
    ("house", "electronic"), ("techno", "electronic"), ("ambient", "electronic"),
    ("bebop", "jazz"), ("smooth jazz", "jazz"), ("blues", "jazz"),
    ("indie folk", "folk"), ("country", "folk"), ("singer-songwriter", "folk"),
    ("shoegaze", "indie rock"), ("post-punk", "indie rock"),
    ("doom metal", "metal"), ("deep house", "house"),
    ("lo-fi hip hop", "boom bap"), ("bluegrass", "country"),
)

MOODS = ("chill", "energetic", "melancholic", "happy", "dark", "romantic")

# Words of each parent genre's lyrics and titles.
PARENT_WORDS = {
    "rock": "guitar riff highway thunder rebel stone fire wild electric amplifier "
            "road scream chains steel roll",
    "pop": "dance baby party sugar shine star crush glitter radio bubble kiss summer "
           "tonight dream sparkle",
    "hip hop": "street flow hustle block money crew beat rhyme mic grind city gold "
               "corner bounce real",
    "electronic": "synth pulse bass circuit neon laser signal loop wave frequency "
                  "digital machine strobe drop echo",
    "jazz": "swing saxophone smoke velvet blue trumpet lounge martini cool brushes "
            "groove moon cafe piano improvise",
    "folk": "river mountain cabin harvest whiskey banjo porch valley wagon meadow "
            "fiddle hometown dust creek lantern",
}
# A few signature words of each level-2 and level-3 genre.
NODE_WORDS = {
    "indie rock": "fuzz garage basement", "metal": "doom abyss iron",
    "classic rock": "vinyl stadium legend", "synth pop": "retro chrome arcade",
    "dance pop": "club floor remix", "k-pop": "idol seoul stage",
    "trap": "808 drip flex", "boom bap": "cipher crate sample", "r&b": "silk slow touch",
    "house": "jack warehouse diva", "techno": "berlin industrial minimal",
    "ambient": "drift haze horizon", "bebop": "changes bird solo",
    "smooth jazz": "sunset breeze satin", "blues": "crossroads delta mojo",
    "indie folk": "woods cardigan attic", "country": "truck boots rodeo",
    "singer-songwriter": "diary letter coffee", "shoegaze": "reverb blur",
    "post-punk": "concrete angular", "doom metal": "funeral monolith",
    "deep house": "sunrise terrace", "lo-fi hip hop": "study tape",
    "bluegrass": "holler mandolin",
}
MOOD_WORDS = {
    "chill": "calm slow easy lazy float gentle soft still cozy mellow",
    "energetic": "run jump power rush fast loud alive burn go higher",
    "melancholic": "tears rain lonely gone grey goodbye empty cold fading ghost",
    "happy": "sunshine smile bright golden free laugh good sweet hello yes",
    "dark": "shadow night blood black fear grave storm witch void midnight",
    "romantic": "love heart darling forever kiss hold desire tender rose yours",
}
FILLER_WORDS = ("the and i you me my we a to in of it on your all oh yeah just like "
                "know feel when never now this that one time way so got can be with "
                "for up down out here there").split()
NOISE_TAGS = ("favorites", "seen live", "love", "awesome", "00s", "90s", "10s",
              "female vocalists", "male vocalists", "instrumental", "cover", "remix",
              "live", "classic", "underrated", "beautiful", "catchy", "summer")
COUNTRIES = ("US", "UK", "DE", "BR", "JP", "FR", "SE", "MX", "CA", "AU", "KR", "ES")
COUNTRY_WEIGHTS = (0.24, 0.10, 0.08, 0.09, 0.07, 0.06, 0.04, 0.07, 0.05, 0.04, 0.06, 0.10)
USERNAME_A = ("blue", "lazy", "wild", "quiet", "neon", "lucky", "cosmic", "velvet",
              "rusty", "silver", "sleepy", "happy", "dark", "golden", "tiny", "brave")
USERNAME_B = ("fox", "owl", "wolf", "cat", "otter", "raven", "tiger", "panda", "moth",
              "heron", "lynx", "crow", "bear", "hare", "seal", "finch")
AUDIO_COLUMNS = ("danceability", "energy", "loudness", "speechiness", "acousticness",
                 "valence", "tempo")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "weight")
PLAYLIST_COLUMNS = ("playlist_id", "user_id", "item_id", "pos", "name", "timestamp",
                    "theme_genre", "theme_mood")

# Independent random streams: changing one part of the generator (say the
# playlists) leaves every other table as it was.
_STREAM_CATALOGUE = 1
_STREAM_USERS = 2
_STREAM_LINKS = 3
_STREAM_INTERACTIONS = 4
_STREAM_PLAYLISTS = 5

# Rating cut points on `percentile + item quality + user bias + noise`: wide
# outer bands, narrow 2 and 3 bands, so ratings pile up at 1 and at 4-5 as in
# Yahoo! Music and Netflix data.
_RATING_CUTS = np.array([0.30, 0.38, 0.50, 0.74], dtype=np.float64)


# --------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------


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
_STREAM_ONLY_PRESETS = ("large",)


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


# --------------------------------------------------------------------------
# The oracle.
# --------------------------------------------------------------------------


class Oracle:
  """The generator's true scores: the ceiling no recommender can beat.

  A user's score for a track is the affinity logit the generator drew the
  user's late (final) history from: `taste @ item_vector / temperature +
  item_bias`, where `item_bias` is the log-popularity bias. Playlists are
  known too (their theme vector is their taste), so the playlist model has a
  ceiling as well.

  Args:
    user_ids: [U] user ids.
    user_taste: [U, d] final (late) unit taste vectors.
    item_ids: [I] item ids.
    item_vectors: [I, d] item latent vectors.
    item_bias: [I] additive log-popularity bias.
    temperature: Divides the dot product.
    playlist_ids: [P] playlist ids (optional).
    playlist_taste: [P, d] playlist theme vectors (optional).
  """

  def __init__(self, user_ids: Sequence[str], user_taste: np.ndarray,
               item_ids: Sequence[str], item_vectors: np.ndarray, item_bias: np.ndarray,
               temperature: float, playlist_ids: Optional[Sequence[str]] = None,
               playlist_taste: Optional[np.ndarray] = None):
    self.user_ids = np.asarray(user_ids).astype(str)
    self.item_ids = np.asarray(item_ids).astype(str)
    self.playlist_ids = (np.asarray(playlist_ids).astype(str) if playlist_ids is not None
                         else np.zeros(0, dtype="<U1"))
    self._user_taste = np.asarray(user_taste, dtype=np.float32)
    d = self._user_taste.shape[1]
    self._playlist_taste = (np.asarray(playlist_taste, dtype=np.float32)
                            if playlist_taste is not None else np.zeros((0, d), np.float32))
    self.item_vectors = np.asarray(item_vectors, dtype=np.float32)
    self.item_bias = np.asarray(item_bias, dtype=np.float32)
    self.temperature = float(temperature)
    if len(self.user_ids) != len(self._user_taste):
      raise ValueError("`user_ids` and `user_taste` must have the same length. Received: "
                       f"{len(self.user_ids)} and {len(self._user_taste)}.")
    if len(self.playlist_ids) != len(self._playlist_taste):
      raise ValueError("`playlist_ids` and `playlist_taste` must have the same length. "
                       f"Received: {len(self.playlist_ids)} and {len(self._playlist_taste)}.")
    if not len(self.item_ids) == len(self.item_vectors) == len(self.item_bias):
      raise ValueError("`item_ids`, `item_vectors` and `item_bias` must have the same "
                       f"length. Received: {len(self.item_ids)}, {len(self.item_vectors)} "
                       f"and {len(self.item_bias)}.")
    # Users and playlists share one lookup: the playlist model treats
    # playlist ids as users.
    self._taste = np.concatenate([self._user_taste, self._playlist_taste])
    self._taste_index = pd.Index(np.concatenate([self.user_ids, self.playlist_ids]))
    self._item_index = pd.Index(self.item_ids)

  @staticmethod
  def _lookup(index: pd.Index, ids: Sequence[str], arg: str, kind: str) -> np.ndarray:
    ids = np.asarray(ids).astype(str).reshape(-1)
    pos = index.get_indexer(ids)
    if (pos < 0).any():
      bad = ids[int(np.argmax(pos < 0))]
      raise ValueError(f"`{arg}` contains an id the oracle does not know: {bad!r} "
                       f"({int((pos < 0).sum())} unknown). The oracle knows the "
                       f"generated {kind}, e.g. {index[0]!r}.")
    return pos

  def user_taste(self, user_ids: Sequence[str]) -> np.ndarray:
    """[len(user_ids), d] final unit taste vectors (users or playlists)."""
    return self._taste[self._lookup(self._taste_index, user_ids, "user_ids",
                                    "users and playlists")]

  def scores(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """True affinity logits.

    Args:
      user_ids: [U] user (or playlist) ids.
      item_ids: [I] item ids.

    Returns:
      [U, I] float32 logits.

    Raises:
      ValueError: an id is unknown (the message names it).
    """
    return self.score_fn(item_ids)(user_ids)

  def score_fn(self, item_ids: Sequence[str]) -> Callable[[Sequence[str]], np.ndarray]:
    """A batched scorer over a fixed catalogue order, for the evaluation library.

    Args:
      item_ids: [I] catalogue ids in index order.

    Returns:
      `score(user_ids [B]) -> [B, I] float32` true logits.
    """
    pos = self._lookup(self._item_index, item_ids, "item_ids", "items")
    vectors = self.item_vectors[pos]
    bias = self.item_bias[pos]

    def _score(user_ids):
      return _affinity(self.user_taste(user_ids), vectors, bias, self.temperature)
    return _score

  def taste_similarity(self, user_ids_a: Sequence[str],
                       user_ids_b: Sequence[str]) -> np.ndarray:
    """Cosine of the final tastes of pairs `(user_ids_a[n], user_ids_b[n])`.

    Args:
      user_ids_a: [N] ids.
      user_ids_b: [N] ids (pairs are elementwise).

    Returns:
      [N] cosine similarities in [-1, 1].
    """
    a = self.user_taste(user_ids_a)
    b = self.user_taste(user_ids_b)
    if len(a) != len(b):
      raise ValueError("`user_ids_a` and `user_ids_b` should have the same length (pairs). "
                       f"Received: {len(a)} and {len(b)}.")
    num = np.einsum("nd,nd->n", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)

  def save(self, path: str) -> None:
    """Writes the oracle to `path` as an `.npz` (ids as unicode arrays, no pickles)."""
    buf = _pyio.BytesIO()
    np.savez(buf, user_ids=self.user_ids, user_taste=self._user_taste,
             playlist_ids=self.playlist_ids, playlist_taste=self._playlist_taste,
             item_ids=self.item_ids, item_vectors=self.item_vectors,
             item_bias=self.item_bias, temperature=np.float64(self.temperature))
    _write_bytes(path, buf.getvalue())

  @classmethod
  def load(cls, path: str) -> "Oracle":
    """Reads an oracle written by `save`."""
    with np.load(_pyio.BytesIO(_read_bytes(path)), allow_pickle=False) as data:
      return cls(user_ids=data["user_ids"], user_taste=data["user_taste"],
                 item_ids=data["item_ids"], item_vectors=data["item_vectors"],
                 item_bias=data["item_bias"], temperature=float(data["temperature"]),
                 playlist_ids=data["playlist_ids"], playlist_taste=data["playlist_taste"])

  def __repr__(self) -> str:
    return (f"Oracle(users={len(self.user_ids)}, playlists={len(self.playlist_ids)}, "
            f"items={len(self.item_ids)}, temperature={self.temperature})")


def _affinity(taste: np.ndarray, vectors: np.ndarray, bias: np.ndarray,
              temperature: float) -> np.ndarray:
  """[B, I] logits; the one formula the sampler and the oracle share."""
  out = taste @ vectors.T
  out /= np.float32(temperature)
  out += bias
  return out


def _write_bytes(path: str, data: bytes) -> None:
  path = str(path)
  if "://" not in path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)


def _read_bytes(path: str) -> bytes:
  path = str(path)
  if "://" not in path:
    with open(path, "rb") as f:
      return f.read()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


# --------------------------------------------------------------------------
# The generator.
# --------------------------------------------------------------------------


def _ids(prefix: str, n: int) -> np.ndarray:
  width = max(5, len(str(max(n - 1, 0))))
  return np.array([f"{prefix}{i:0{width}d}" for i in range(n)])


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _gumbel_top_k(rng: np.random.Generator, logits: np.ndarray, ks: np.ndarray,
                  exclude: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> List[np.ndarray]:
  """Samples `ks[b]` distinct columns of row `b` without replacement.

  The Gumbel-top-k trick: the top k of `logits + Gumbel noise` are a sample
  without replacement from `softmax(logits)` (in draw order).

  Args:
    rng: Random stream.
    logits: [B, N] float32 logits (not modified).
    ks: [B] sample sizes (< N).
    exclude: (rows, cols) entries that may not be drawn.

  Returns:
    B index arrays, each in draw order.
  """
  # -Gumbel = log(Exponential); keep negated keys so argpartition needs no copy.
  neg = rng.standard_exponential(size=logits.shape, dtype=np.float32)
  with np.errstate(divide="ignore"):
    np.log(neg, out=neg)
  neg -= logits
  if exclude is not None:
    neg[exclude] = np.inf
  kmax = int(ks.max())
  if kmax == 0:
    return [np.zeros(0, np.int64) for _ in ks]
  part = np.argpartition(neg, kmax - 1, axis=1)[:, :kmax]
  order = np.argsort(np.take_along_axis(neg, part, axis=1), axis=1, kind="stable")
  top = np.take_along_axis(part, order, axis=1)
  return [top[b, :int(k)] for b, k in enumerate(ks)]


class _Generator:
  """Builds the catalogue and users up front; draws interactions in chunks."""

  def __init__(self, config: SyntheticConfig):
    self.config = config
    self._build_catalogue()
    self._build_users()
    self.playlist_ids = _ids("p", config.n_playlists)
    self.plan = self._playlist_plan()

  # -- catalogue ------------------------------------------------------------

  def _build_catalogue(self):
    c = self.config
    rng = np.random.default_rng([c.seed, _STREAM_CATALOGUE])
    d = c.latent_dim
    # Per-dimension scale 1/sqrt(d) keeps node vectors near unit norm at any d.
    s = 1.0 / math.sqrt(d)
    names = [n for n, _ in GENRE_TREE]
    index = {n: i for i, n in enumerate(names)}
    parent = np.array([index[p] if p is not None else -1 for _, p in GENRE_TREE])
    level = np.ones(len(names), dtype=np.int64)
    top = np.arange(len(names))
    for g in range(len(names)):
      while parent[top[g]] >= 0:
        top[g] = parent[top[g]]
        level[g] += 1
    node_vec = np.zeros((len(names), d))
    for g in range(len(names)):  # parents come before children in GENRE_TREE
      if parent[g] < 0:
        node_vec[g] = rng.normal(0, s, d)
      else:
        node_vec[g] = node_vec[parent[g]] + rng.normal(0, (0.6 if level[g] == 2 else 0.4) * s, d)
    # A mood moves a track by about `mood_strength` (genre nodes sit ~1 apart).
    mood_vec = rng.normal(0, c.mood_strength * s, (len(MOODS), d))
    self.genre_names = np.array(names)
    self.genre_parent, self.genre_level, self.genre_top = parent, level, top
    self.node_vec, self.mood_vec = node_vec, mood_vec

    # Artists: a primary genre (level-2 nodes most common), a mood profile
    # leaning on their parent genre's, and a log-popularity.
    node_weight = np.where(level == 1, 0.25, np.where(level == 2, 1.0, 0.6))
    artist_genre = rng.choice(len(names), size=c.n_artists, p=node_weight / node_weight.sum())
    artist_vec = node_vec[artist_genre] + rng.normal(0, 0.6 * s, (c.n_artists, d))
    parent_mood = rng.dirichlet(np.ones(len(MOODS)), size=6)
    artist_mood_p = np.stack([rng.dirichlet(3.0 * parent_mood[top[g]] + 0.2)
                              for g in artist_genre])
    artist_pop = rng.normal(0, c.popularity_sigma, c.n_artists)

    # Albums: every artist has one; the rest go to artists by a heavy tail.
    album_artist = np.concatenate([
        np.arange(c.n_artists),
        rng.choice(c.n_artists, size=c.n_albums - c.n_artists,
                   p=_heavy_weights(rng, c.n_artists))])
    album_vec = artist_vec[album_artist] + rng.normal(0, 0.35 * s, (c.n_albums, d))
    album_mood = np.array([rng.choice(len(MOODS), p=artist_mood_p[a]) for a in album_artist])

    # Tracks: every album has one; the rest go to albums by a heavy tail.
    item_album = np.concatenate([
        np.arange(c.n_albums),
        rng.choice(c.n_albums, size=c.n_items - c.n_albums,
                   p=_heavy_weights(rng, c.n_albums))])
    item_album = np.sort(item_album, kind="stable")  # tracks of an album are adjacent
    item_artist = album_artist[item_album]
    keep_album_mood = rng.random(c.n_items) < 0.75
    own_mood = np.array([rng.choice(len(MOODS), p=artist_mood_p[a]) for a in item_artist])
    item_mood = np.where(keep_album_mood, album_mood[item_album], own_mood)
    item_vec = (album_vec[item_album] + mood_vec[item_mood]
                + rng.normal(0, c.track_noise * s, (c.n_items, d)))
    item_pop = artist_pop[item_artist] + rng.normal(0, c.track_popularity_noise, c.n_items)

    self.item_vec = item_vec.astype(np.float32)
    self.item_bias = (c.popularity_strength * item_pop).astype(np.float32)
    self.item_pop = item_pop
    self.item_genre = artist_genre[item_artist]
    self.item_mood = item_mood
    self.item_album, self.item_artist = item_album, item_artist
    self.album_artist = album_artist
    self.item_ids = _ids("t", c.n_items)
    self._build_item_table(rng, artist_genre)

  def _build_item_table(self, rng: np.random.Generator, artist_genre: np.ndarray):
    c = self.config
    vocab, node_p, mood_p, filler_p = _word_distributions(self)
    vocab_arr = np.array(vocab, dtype=object)

    artist_word = rng.choice(len(vocab), size=c.n_artists, p=0.5 * node_p[artist_genre].mean(0)
                             + 0.5 * mood_p.mean(0))
    artist_names = np.array([f"a{i:0{max(4, len(str(c.n_artists - 1)))}d} {vocab[w]}"
                             for i, w in enumerate(artist_word)])
    album_words = rng.choice(len(vocab), size=(c.n_albums, 2),
                             p=0.5 * node_p.mean(0) + 0.5 * mood_p.mean(0))
    album_names = np.array([f"al{i:0{max(5, len(str(c.n_albums - 1)))}d} "
                            f"{vocab[w[0]]} {vocab[w[1]]}" for i, w in enumerate(album_words)])

    # Titles and lyrics: words from the track's genre node, its mood and
    # filler; each (genre, mood) mixture is built once, then drawn by
    # inverse CDF for all its tracks at once.
    n_words = rng.integers(20, 41, size=c.n_items)
    n_title = rng.integers(1, 5, size=c.n_items)
    texts: List[str] = [""] * c.n_items
    titles: List[str] = [""] * c.n_items
    combo = self.item_genre * len(MOODS) + self.item_mood
    for key in np.unique(combo):
      members = np.flatnonzero(combo == key)
      g, m = divmod(int(key), len(MOODS))
      text_cdf = np.cumsum(0.32 * node_p[g] + 0.2 * mood_p[m] + 0.48 * filler_p)
      title_cdf = np.cumsum(0.6 * node_p[g] + 0.4 * mood_p[m])
      draws = rng.random((len(members), 40 + 4))
      words = np.minimum(np.searchsorted(text_cdf, draws[:, :40] * text_cdf[-1]),
                         len(vocab) - 1)
      twords = np.minimum(np.searchsorted(title_cdf, draws[:, 40:] * title_cdf[-1]),
                          len(vocab) - 1)
      # An artist's own word now and then: text also tells artists apart.
      own = rng.random((len(members), 40)) < 0.04
      words = np.where(own, artist_word[self.item_artist[members]][:, None], words)
      for row, i in enumerate(members):
        texts[i] = " ".join(vocab_arr[words[row, :n_words[i]]])
        titles[i] = " ".join(vocab_arr[twords[row, :n_title[i]]]).title()

    genre = self.genre_names[self.item_genre]
    parent = self.genre_names[self.genre_top[self.item_genre]]
    tags = []
    noise_n = rng.integers(0, 3, size=c.n_items)
    wrong_genre = rng.random(c.n_items) < 0.05
    for i in range(c.n_items):
      t = [genre[i]]
      if parent[i] != genre[i]:
        t.append(parent[i])
      t.append(MOODS[self.item_mood[i]])
      if wrong_genre[i]:  # mislabelled tags, as on Last.fm
        t.append(self.genre_names[rng.integers(len(self.genre_names))])
      t.extend(NOISE_TAGS[j] for j in rng.choice(len(NOISE_TAGS), noise_n[i], replace=False))
      tags.append(list(dict.fromkeys(t)))

    # Audio: a fixed random linear map of the track vector plus noise,
    # standardized, then squashed into each feature's real range.
    w = rng.normal(0, 1, (c.latent_dim, len(AUDIO_COLUMNS)))
    raw = self.item_vec.astype(np.float64) @ w
    raw = (raw - raw.mean(0)) / np.maximum(raw.std(0), 1e-12)
    raw = 0.9 * raw + rng.normal(0, 0.45, raw.shape)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    audio = {
        "danceability": sig(0.9 * raw[:, 0] + 0.3),
        "energy": sig(raw[:, 1] + 0.4),
        "loudness": -60.0 + 60.0 * sig(0.8 * raw[:, 2] + 2.4),
        "speechiness": sig(1.2 * raw[:, 3] - 2.2),
        "acousticness": sig(1.3 * raw[:, 4] - 0.5),
        "valence": sig(raw[:, 5]),
        "tempo": 60.0 + 140.0 * sig(0.8 * raw[:, 6]),
    }
    frame = {
        "item_id": self.item_ids,
        "title": titles,
        "artist": artist_names[self.item_artist],
        "album": album_names[self.item_album],
        "tags": tags,
        "genre": genre,
        "parent_genre": parent,
        "genre_level": self.genre_level[self.item_genre].astype(np.int64),
        "mood": np.array(MOODS)[self.item_mood],
        "text": texts,
    }
    frame.update({k: v.astype(np.float32) for k, v in audio.items()})
    self.items = pd.DataFrame(frame)

  # -- users ----------------------------------------------------------------

  def _build_users(self):
    c = self.config
    rng = np.random.default_rng([c.seed, _STREAM_USERS])
    n, d = c.n_users, c.latent_dim
    s = 1.0 / math.sqrt(d)
    n_nodes = len(self.genre_names)
    cw = np.array(COUNTRY_WEIGHTS) / np.sum(COUNTRY_WEIGHTS)
    country = rng.choice(len(COUNTRIES), size=n, p=cw)
    # Each country prefers some parent genres; a genre node's weight is its
    # parent genre's times a level prior.
    country_pref = rng.dirichlet(0.7 * np.ones(6), size=len(COUNTRIES))
    level_prior = np.where(self.genre_level == 1, 0.3, np.where(self.genre_level == 2, 1.0, 0.6))
    node_p = country_pref[:, self.genre_top] * level_prior  # [countries, nodes]
    node_p /= node_p.sum(1, keepdims=True)
    n_genres = rng.choice([1, 2, 3], size=n, p=[0.45, 0.35, 0.2])
    # Sparse mixture: Gumbel-top-k over the country's genre prior, then
    # Dirichlet weights over the chosen genres.
    keys = np.log(node_p[country]) + rng.gumbel(size=(n, n_nodes))
    chosen = np.argsort(-keys, axis=1)[:, :3]
    weights = rng.dirichlet(np.ones(3), size=n)
    weights[np.arange(3)[None, :] >= n_genres[:, None]] = 0.0
    weights /= weights.sum(1, keepdims=True)
    user_mood = rng.choice(len(MOODS), size=n)
    early = (np.einsum("nk,nkd->nd", weights, self.node_vec[chosen])
             + 0.5 * self.mood_vec[user_mood] + rng.normal(0, c.taste_noise * s, (n, d)))
    # Drift toward a genre the user did not hold: the 4th-8th of their keys.
    alt = np.argsort(-keys, axis=1)[:, 3:8]
    drift_genre = alt[np.arange(n), rng.integers(0, alt.shape[1], size=n)]
    share = rng.uniform(c.drift_min, c.drift_max, size=n)
    late = (1 - share[:, None]) * early + share[:, None] * self.node_vec[drift_genre]
    self.user_genres, self.user_weights = chosen, weights
    self.user_country = country
    self.user_mood = user_mood
    self.early_taste = _unit(early)
    self.late_taste = _unit(late)
    self.user_bias = rng.normal(0, 0.12, n)

    # Power-law activity: min + Lomax, scaled to the target mean, capped.
    x = rng.pareto(c.activity_shape, size=n)
    mean_lomax = 1.0 / (c.activity_shape - 1.0) if c.activity_shape > 1 else np.mean(x)
    extra = (c.mean_interactions - c.min_interactions) * x / mean_lomax
    self.n_interactions = np.clip(c.min_interactions + np.floor(extra).astype(np.int64),
                                  c.min_interactions, c.max_interactions)
    # Each user is active over a part of the window that ends after it starts.
    span = c.window_days * 86_400
    start = rng.uniform(0, 0.7, n) * span
    length = rng.uniform(0.15, 1.0, n) * (span - start)
    self.user_start = (c.start_time + start).astype(np.int64)
    self.user_span = np.maximum(length.astype(np.int64), 4 * self.n_interactions)
    self.user_ids = _ids("u", n)
    self.users = pd.DataFrame({
        "user_id": self.user_ids,
        "country": np.array(COUNTRIES)[country],
        "username": [f"{USERNAME_A[a]}{USERNAME_B[b]}{k}" for a, b, k in zip(
            rng.integers(len(USERNAME_A), size=n), rng.integers(len(USERNAME_B), size=n),
            rng.integers(1, 1000, size=n))],
    })

  # -- friendships ----------------------------------------------------------

  def user_links(self) -> pd.DataFrame:
    """Friendships, listed both ways (`a, b` and `b, a`), like Last.fm HetRec."""
    c = self.config
    rng = np.random.default_rng([c.seed, _STREAM_LINKS])
    n = c.n_users
    taste = self.late_taste
    n_cand = min(c.link_candidates, n - 1)
    pairs = []
    for lo in range(0, n, 8192):
      hi = min(n, lo + 8192)
      users = np.arange(lo, hi)
      # Candidates are other users (shift past self).
      cand = rng.integers(0, n - 1, size=(hi - lo, n_cand))
      cand += cand >= users[:, None]
      sim = np.einsum("bd,bcd->bc", taste[users], taste[cand])
      # Friends are drawn among the candidates in proportion to exp(8 cos).
      keys = 8.0 * sim + rng.gumbel(size=sim.shape)
      k = rng.integers(1, max(c.links_per_user, 1) + 1, size=hi - lo)
      if c.links_per_user == 0:
        k[:] = 0
      best = np.argsort(-keys, axis=1)[:, :max(c.links_per_user, 1)]
      mask = np.arange(best.shape[1])[None, :] < k[:, None]
      src = np.repeat(users, mask.sum(1))
      dst = np.take_along_axis(cand, best, axis=1)[mask]
      pairs.append(np.stack([src, dst], 1))
      rand = rng.random(hi - lo) < c.random_link_rate
      other = rng.integers(0, n - 1, size=hi - lo)
      other += other >= users
      pairs.append(np.stack([users[rand], other[rand]], 1))
    pairs = np.concatenate(pairs)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    return pd.DataFrame({"user_id": self.user_ids[both[:, 0]],
                         "other_user_id": self.user_ids[both[:, 1]]})

  # -- interactions ---------------------------------------------------------

  def n_chunks(self) -> int:
    return -(-self.config.n_users // self.config.user_chunk)

  def interaction_chunk(self, chunk: int) -> Dict[str, np.ndarray]:
    """Interactions of users `[chunk * user_chunk, ...)` as index arrays."""
    c = self.config
    rng = np.random.default_rng([c.seed, _STREAM_INTERACTIONS, chunk])
    lo = chunk * c.user_chunk
    hi = min(c.n_users, lo + c.user_chunk)
    users = np.arange(lo, hi)
    n_u = self.n_interactions[users]
    k_early = n_u // 2
    k_late = n_u - k_early
    early_logits = _affinity(self.early_taste[users], self.item_vec, self.item_bias,
                             c.temperature)
    early = _gumbel_top_k(rng, early_logits, k_early)
    del early_logits
    rows = np.repeat(np.arange(len(users)), k_early)
    cols = np.concatenate(early) if len(early) else np.zeros(0, np.int64)
    late_logits = _affinity(self.late_taste[users], self.item_vec, self.item_bias,
                            c.temperature)
    late = _gumbel_top_k(rng, late_logits, k_late, exclude=(rows, cols))
    del late_logits

    out_items, out_time, out_rating, out_weight = [], [], [], []
    for b, u in enumerate(users):
      # Within a half, the order in time is random (not the draw order), so
      # the held-out last item is a typical late item.
      e_items = rng.permutation(early[b])
      l_items = rng.permutation(late[b])
      items = np.concatenate([e_items, l_items])
      # Affinity under the taste that drew the item; its percentile among
      # the user's items drives the rating and the play count.
      aff = np.concatenate([self.item_vec[e_items] @ self.early_taste[u],
                            self.item_vec[l_items] @ self.late_taste[u]])
      pct = (np.argsort(np.argsort(aff, kind="stable"), kind="stable") + 0.5) / len(items)
      n = len(items)
      gaps = rng.standard_exponential(n + 1)
      frac = np.cumsum(gaps)[:n] / gaps.sum()
      times = self.user_start[u] + np.floor(frac * (self.user_span[u] - n)).astype(np.int64)
      times += np.arange(n)  # strictly increasing
      score = (pct + 0.06 * self.item_pop[items] + self.user_bias[u]
               + rng.normal(0, 0.2, n))
      rating = 1.0 + np.searchsorted(_RATING_CUTS, score)
      weight = 1.0 + np.floor(np.exp(rng.normal(2.0 * pct - 0.3, 1.0)))
      out_items.append(items)
      out_time.append(times)
      out_rating.append(rating)
      out_weight.append(weight)
    return {
        "user": np.repeat(users, n_u),
        "item": np.concatenate(out_items).astype(np.int64),
        "timestamp": np.concatenate(out_time).astype(np.int64),
        "rating": np.concatenate(out_rating).astype(np.float32),
        "weight": np.concatenate(out_weight).astype(np.float32),
    }

  def interaction_frame(self, chunk: Dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": self.user_ids[chunk["user"]],
        "item_id": self.item_ids[chunk["item"]],
        "timestamp": chunk["timestamp"],
        "rating": chunk["rating"],
        "weight": chunk["weight"],
    })

  # -- playlists ------------------------------------------------------------

  def _playlist_plan(self):
    """Owner, theme and length of every playlist (small; built up front)."""
    c = self.config
    rng = np.random.default_rng([c.seed, _STREAM_PLAYLISTS])
    p = c.n_playlists
    # Heavier listeners make more playlists.
    act = np.sqrt(self.n_interactions.astype(np.float64))
    owner = rng.choice(c.n_users, size=p, p=act / act.sum())
    slot = np.array([rng.choice(3, p=self.user_weights[o]) for o in owner], dtype=np.int64)
    genre = self.user_genres[owner, slot]
    own_mood = rng.random(p) < 0.5
    mood = np.where(own_mood, self.user_mood[owner], rng.integers(0, len(MOODS), size=p))
    theme = _unit(self.node_vec[genre] + 1.5 * self.mood_vec[mood]
                  + 0.25 * self.late_taste[owner] / math.sqrt(self.config.latent_dim))
    length = rng.integers(c.playlist_min_tracks, c.playlist_max_tracks + 1, size=p)
    created = (c.start_time + rng.uniform(0, 0.95, p) * c.window_days * 86_400).astype(np.int64)
    counts: Dict[str, int] = {}
    names = []
    for g, m in zip(genre, mood):
      base = f"{MOODS[m]} {self.genre_names[g]}"
      counts[base] = counts.get(base, 0) + 1
      names.append(f"{base} {counts[base]}")
    return owner, genre, mood, theme, length, created, np.array(names, dtype=object)

  def playlist_chunks(self) -> Iterator[pd.DataFrame]:
    """Playlist rows in chunks of `user_chunk` playlists."""
    c = self.config
    if c.n_playlists == 0:
      return
    owner, genre, mood, theme, length, created, names = self.plan
    pids = self.playlist_ids
    for chunk, lo in enumerate(range(0, c.n_playlists, c.user_chunk)):
      rng = np.random.default_rng([c.seed, _STREAM_PLAYLISTS, chunk + 1])
      hi = min(c.n_playlists, lo + c.user_chunk)
      sel = np.arange(lo, hi)
      logits = _affinity(theme[sel], self.item_vec, self.item_bias, c.temperature)
      drawn = _gumbel_top_k(rng, logits, length[sel])
      del logits
      items = np.concatenate([rng.permutation(x) for x in drawn])
      n = length[sel]
      rep = np.repeat(sel, n)
      pos = np.concatenate([np.arange(k) for k in n])
      ts = created[rep] + np.concatenate(
          [np.cumsum(rng.integers(30, 900, size=k)) for k in n]).astype(np.int64)
      yield pd.DataFrame({
          "playlist_id": pids[rep],
          "user_id": self.user_ids[owner[rep]],
          "item_id": self.item_ids[items],
          "pos": pos.astype(np.int64),
          "name": names[rep],
          "timestamp": ts,
          "theme_genre": self.genre_names[genre[rep]],
          "theme_mood": np.array(MOODS)[mood[rep]],
      })

  def oracle(self) -> Oracle:
    theme = self.plan[3]
    return Oracle(self.user_ids, self.late_taste, self.item_ids, self.item_vec,
                  self.item_bias, self.config.temperature,
                  playlist_ids=self.playlist_ids, playlist_taste=theme)


def _heavy_weights(rng: np.random.Generator, n: int) -> np.ndarray:
  w = rng.lognormal(0.0, 1.0, n)
  return w / w.sum()


def _word_distributions(gen: "_Generator"):
  """Global vocabulary and word distributions per genre node, mood and filler."""
  vocab: List[str] = []
  index: Dict[str, int] = {}

  def ids(words):
    out = []
    for w in words:
      if w not in index:
        index[w] = len(vocab)
        vocab.append(w)
      out.append(index[w])
    return np.array(out)

  parent_ids = {p: ids(w.split()) for p, w in PARENT_WORDS.items()}
  node_ids = {g: ids(w.split()) for g, w in NODE_WORDS.items()}
  mood_ids = [ids(MOOD_WORDS[m].split()) for m in MOODS]
  filler_ids = ids(FILLER_WORDS)
  v = len(vocab)
  # Fixed (seed-independent) word weights: the vocabulary is the language,
  # not part of the random draw.
  wrng = np.random.default_rng(20240501)
  node_p = np.zeros((len(gen.genre_names), v))
  for g, name in enumerate(gen.genre_names):
    parent = gen.genre_parent[g]
    if parent < 0:
      node_p[g, parent_ids[name]] = wrng.dirichlet(np.full(len(parent_ids[name]), 2.0))
    else:
      own = np.zeros(v)
      own[node_ids[name]] = 1.0 / len(node_ids[name])
      # A child shares its parent's words with its own emphasis.
      tilt = np.zeros(v)
      base = node_p[parent]
      tilt[base > 0] = wrng.dirichlet(np.full(int((base > 0).sum()), 1.0))
      node_p[g] = 0.35 * base + 0.3 * tilt + 0.35 * own
    node_p[g] /= node_p[g].sum()
  mood_p = np.zeros((len(MOODS), v))
  for m, w in enumerate(mood_ids):
    mood_p[m, w] = wrng.dirichlet(np.full(len(w), 2.0))
  filler_p = np.zeros(v)
  filler_p[filler_ids] = 1.0 / np.arange(1, len(filler_ids) + 1)  # Zipf
  filler_p /= filler_p.sum()
  return vocab, node_p, mood_p, filler_p


# --------------------------------------------------------------------------
# Data card.
# --------------------------------------------------------------------------


def _quantiles(degrees: np.ndarray) -> Dict[str, float]:
  if len(degrees) == 0:
    return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
  q = np.quantile(degrees, [0.5, 0.9, 0.99])
  return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]),
          "max": float(degrees.max())}


def _data_card(config: SyntheticConfig, preset: str, user_degree: np.ndarray,
               item_degree: np.ndarray, rating_counts: np.ndarray, n_links: int,
               n_playlist_rows: int) -> dict:
  n_inter = int(user_degree.sum())
  return {
      "name": "synthetic",
      "preset": preset,
      "seed": int(config.seed),
      "n_users": int(config.n_users),
      "n_items": int(config.n_items),
      "n_interactions": n_inter,
      "n_playlists": int(config.n_playlists),
      "n_playlist_rows": int(n_playlist_rows),
      "n_user_links": int(n_links),
      "sparsity": float(1.0 - n_inter / (config.n_users * config.n_items)),
      "items_never_played": int((item_degree == 0).sum()),
      "user_degree": _quantiles(user_degree),
      "item_degree": _quantiles(item_degree),
      "rating_histogram": {str(r): int(rating_counts[r - 1]) for r in range(1, 6)},
      "config": dataclasses.asdict(config),
  }


def format_data_card(card: dict) -> str:
  """A printable summary of a data card.

  Args:
    card: As returned by `SyntheticCatalog.data_card` or `write_large`.

  Returns:
    A few aligned lines.
  """
  hist = card["rating_histogram"]
  total = max(sum(hist.values()), 1)
  q = lambda d: "  ".join(f"{k} {d[k]:g}" for k in ("p50", "p90", "p99", "max"))  # noqa: E731
  lines = [
      f"synthetic catalogue: preset {card['preset']!r}, seed {card['seed']}",
      f"  users         {card['n_users']:>12,}",
      f"  items         {card['n_items']:>12,}  ({card['items_never_played']:,} never played)",
      f"  interactions  {card['n_interactions']:>12,}  (sparsity {card['sparsity']:.5f})",
      f"  playlists     {card['n_playlists']:>12,}  ({card['n_playlist_rows']:,} rows)",
      f"  user links    {card['n_user_links']:>12,}  (both directions)",
      f"  user degree   {q(card['user_degree'])}",
      f"  item degree   {q(card['item_degree'])}",
      "  ratings       " + "  ".join(f"{k}: {100.0 * v / total:.1f}%" for k, v in hist.items()),
  ]
  return "\n".join(lines)


# --------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class SyntheticCatalog:
  """One generated catalogue.

  Attributes:
    tables: Validated canonical tables (`name="synthetic"`).
    playlists: Playlist rows: `playlist_id`, `user_id` (owner), `item_id`,
      `pos` (0..n-1), `name`, `timestamp`, `theme_genre`, `theme_mood`.
    oracle: The generator's true scorer.
    config: The resolved config.
    preset: The preset name.
  """

  tables: Tables
  playlists: pd.DataFrame
  oracle: Oracle
  config: SyntheticConfig
  preset: str = "default"

  def data_card(self) -> dict:
    """Counts, sparsity, degree quantiles and the rating histogram."""
    inter = self.tables.interactions
    user_degree = inter.groupby("user_id", sort=False).size().to_numpy()
    item_degree = (inter["item_id"].value_counts()
                   .reindex(self.tables.items["item_id"], fill_value=0).to_numpy())
    rating_counts = np.bincount(inter["rating"].to_numpy().astype(np.int64), minlength=6)[1:6]
    n_links = 0 if self.tables.user_links is None else len(self.tables.user_links)
    return _data_card(self.config, self.preset, user_degree, item_degree, rating_counts,
                      n_links, len(self.playlists))


def generate(preset: str = "default", seed: int = 0, **overrides) -> SyntheticCatalog:
  """Generates the synthetic catalogue in memory.

  Args:
    preset: `"tiny"` (~200 users, 500 tracks, ~4k interactions) or
      `"default"` (5,000 users, 10,000 tracks, ~300k interactions). The
      `"large"` preset is streamed to files by `write_large`.
    seed: Seed of every random stream; the same seed gives identical tables.
    **overrides: `SyntheticConfig` fields to change (e.g. `n_users=300`).

  Returns:
    The catalogue: validated tables, playlists, oracle and config.

  Raises:
    ValueError: unknown preset or override, invalid value, or `"large"`.
  """
  config = resolve_config(preset, seed, **overrides)
  if preset in _STREAM_ONLY_PRESETS and not overrides:
    raise ValueError(f"`preset` = {preset!r} does not fit in memory comfortably: stream it "
                     "to files with `synthetic.write_large(out_dir)` (or `python -m "
                     "tfrec_music.data.synthetic --preset large --out DIR`) and load the "
                     "folder with `--data parquet`.")
  gen = _Generator(config)
  interactions = pd.concat([gen.interaction_frame(gen.interaction_chunk(k))
                            for k in range(gen.n_chunks())], ignore_index=True)
  playlists = _concat_or_empty(list(gen.playlist_chunks()), PLAYLIST_COLUMNS)
  tables = Tables(interactions=interactions, items=gen.items, users=gen.users,
                  user_links=gen.user_links(),
                  sources={t: f"synthetic:{preset}/{t}" for t in
                           ("interactions", "items", "users", "user_links")},
                  name="synthetic")
  tables = validate_tables(tables, report=DataReport())
  return SyntheticCatalog(tables=tables, playlists=playlists, oracle=gen.oracle(),
                          config=config, preset=preset)


def _concat_or_empty(frames: List[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
  if frames:
    return pd.concat(frames, ignore_index=True)
  return pd.DataFrame({c: [] for c in columns})


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
  gen = _Generator(config)
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

  card = _data_card(config, preset, gen.n_interactions, item_degree, rating_counts,
                    n_links, n_playlist_rows)
  card["files"] = files + ["data_card.json"]
  io.write_text(io.join(out_dir, "data_card.json"), json.dumps(card, indent=2) + "\n")
  card["seconds"] = time.time() - t0
  return card


def main(argv: Optional[Sequence[str]] = None) -> dict:
  """Command line: generate a preset, print its data card and timing.

  With `--out`, the catalogue is streamed to that folder by `write_large`
  (required for `--preset large`); without it, it is generated in memory.

  Args:
    argv: Arguments (default: `sys.argv[1:]`).

  Returns:
    The data card.
  """
  parser = argparse.ArgumentParser(
      prog="python -m tfrec_music.data.synthetic",
      description="Generate the synthetic music catalogue.")
  parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None,
                      help="Folder to stream the catalogue to (parquet shards).")
  parser.add_argument("--shard-rows", type=int, default=1_000_000)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  t0 = time.time()
  if args.out:
    card = write_large(args.out, preset=args.preset, seed=args.seed,
                       shard_rows=args.shard_rows)
  elif args.preset in _STREAM_ONLY_PRESETS:
    parser.error(f"--preset {args.preset} is streamed to files: pass --out DIR.")
  else:
    card = generate(args.preset, seed=args.seed).data_card()
  seconds = time.time() - t0
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  print(format_data_card(card))
  print(f"  generated in  {seconds:.2f} s, peak RSS {peak_mb:.0f} MB"
        + (f", written to {args.out}" if args.out else ""))
  return card


if __name__ == "__main__":
  main()
