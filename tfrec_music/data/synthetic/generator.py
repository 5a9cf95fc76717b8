"""The generator: users and their drifting tastes, friendships, interactions, playlists.

Users have a sparse taste mixture over 1-3 genres (biased by their country),
a mood tilt and personal noise; the early half of their history follows the
early taste, the late half a taste moved part-way toward another genre. Each
user's distinct items are drawn by the Gumbel-top-k trick from
`item_vectors @ taste / temperature + item_bias`; interactions are drawn per
fixed chunk of `user_chunk` users with a `(seed, stream, chunk)` stream, so
the in-memory and the streamed catalogues hold the same rows bit for bit.
"""

import math
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd

from tfrec_music.data.synthetic.config import SyntheticConfig
from tfrec_music.data.synthetic.lexicon import COUNTRIES
from tfrec_music.data.synthetic.lexicon import COUNTRY_WEIGHTS
from tfrec_music.data.synthetic.lexicon import MOODS
from tfrec_music.data.synthetic.lexicon import STREAM_INTERACTIONS
from tfrec_music.data.synthetic.lexicon import STREAM_LINKS
from tfrec_music.data.synthetic.lexicon import STREAM_PLAYLISTS
from tfrec_music.data.synthetic.lexicon import STREAM_USERS
from tfrec_music.data.synthetic.lexicon import USERNAME_A
from tfrec_music.data.synthetic.lexicon import USERNAME_B
from tfrec_music.data.synthetic.oracle import Oracle
from tfrec_music.data.synthetic.oracle import affinity
from tfrec_music.data.synthetic.tracks import TrackCatalogue
from tfrec_music.data.synthetic.tracks import make_ids

# Rating cut points on `percentile + item quality + user bias + noise`: wide
# outer bands, narrow 2 and 3 bands, so ratings pile up at 1 and at 4-5 as in
# Yahoo! Music and Netflix data.
_RATING_CUTS = np.array([0.30, 0.38, 0.50, 0.74], dtype=np.float64)


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


class Generator(TrackCatalogue):
  """Builds the catalogue and users up front; draws interactions in chunks."""

  def __init__(self, config: SyntheticConfig):
    super().__init__(config)
    self._build_users()
    self.playlist_ids = make_ids("p", config.n_playlists)
    self.plan = self._playlist_plan()

  # -- users ----------------------------------------------------------------

  def _build_users(self):
    c = self.config
    rng = np.random.default_rng([c.seed, STREAM_USERS])
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
    self.user_ids = make_ids("u", n)
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
    rng = np.random.default_rng([c.seed, STREAM_LINKS])
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
    """Number of user chunks the interactions are drawn in."""
    return -(-self.config.n_users // self.config.user_chunk)

  def interaction_chunk(self, chunk: int) -> Dict[str, np.ndarray]:
    """Interactions of users `[chunk * user_chunk, ...)` as index arrays."""
    c = self.config
    rng = np.random.default_rng([c.seed, STREAM_INTERACTIONS, chunk])
    lo = chunk * c.user_chunk
    hi = min(c.n_users, lo + c.user_chunk)
    users = np.arange(lo, hi)
    n_u = self.n_interactions[users]
    k_early = n_u // 2
    k_late = n_u - k_early
    early_logits = affinity(self.early_taste[users], self.item_vec, self.item_bias,
                             c.temperature)
    early = _gumbel_top_k(rng, early_logits, k_early)
    del early_logits
    rows = np.repeat(np.arange(len(users)), k_early)
    cols = np.concatenate(early) if len(early) else np.zeros(0, np.int64)
    late_logits = affinity(self.late_taste[users], self.item_vec, self.item_bias,
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
    """A chunk of `interaction_chunk` as interaction rows with string ids."""
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
    rng = np.random.default_rng([c.seed, STREAM_PLAYLISTS])
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
      rng = np.random.default_rng([c.seed, STREAM_PLAYLISTS, chunk + 1])
      hi = min(c.n_playlists, lo + c.user_chunk)
      sel = np.arange(lo, hi)
      logits = affinity(theme[sel], self.item_vec, self.item_bias, c.temperature)
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
    """The true scorer of these users and playlists (their late taste, their theme)."""
    theme = self.plan[3]
    return Oracle(self.user_ids, self.late_taste, self.item_ids, self.item_vec,
                  self.item_bias, self.config.temperature,
                  playlist_ids=self.playlist_ids, playlist_taste=theme)
