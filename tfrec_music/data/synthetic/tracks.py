"""The track catalogue: genre-tree vectors, artists, albums, tracks and their content.

Drawn from the catalogue's own random stream: a node's vector lies near its
parent's, artist = genre + noise, album = artist + smaller noise, track =
album + mood + noise; titles, lyrics-like text and tags name the track's place
in the hierarchy, and the audio features are a fixed random linear map of
the track vector plus noise.
"""

import math
from typing import Dict, List

import numpy as np
import pandas as pd

from tfrec_music.data.synthetic.config import SyntheticConfig
from tfrec_music.data.synthetic.lexicon import AUDIO_COLUMNS
from tfrec_music.data.synthetic.lexicon import FILLER_WORDS
from tfrec_music.data.synthetic.lexicon import GENRE_TREE
from tfrec_music.data.synthetic.lexicon import MOOD_WORDS
from tfrec_music.data.synthetic.lexicon import MOODS
from tfrec_music.data.synthetic.lexicon import NODE_WORDS
from tfrec_music.data.synthetic.lexicon import NOISE_TAGS
from tfrec_music.data.synthetic.lexicon import PARENT_WORDS
from tfrec_music.data.synthetic.lexicon import STREAM_CATALOGUE


def make_ids(prefix: str, n: int) -> np.ndarray:
  """`n` ids `<prefix>00000`, ... zero-padded to at least 5 digits."""
  width = max(5, len(str(max(n - 1, 0))))
  return np.array([f"{prefix}{i:0{width}d}" for i in range(n)])


class TrackCatalogue:
  """The genre tree, artists, albums and tracks (vectors, popularity, the items table).

  Args:
    config: The resolved `SyntheticConfig`.
  """

  def __init__(self, config: SyntheticConfig):
    self.config = config
    self._build_catalogue()

  def _build_catalogue(self):
    c = self.config
    rng = np.random.default_rng([c.seed, STREAM_CATALOGUE])
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
    self.item_ids = make_ids("t", c.n_items)
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


def _heavy_weights(rng: np.random.Generator, n: int) -> np.ndarray:
  w = rng.lognormal(0.0, 1.0, n)
  return w / w.sum()


def _word_distributions(gen: "TrackCatalogue"):
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
