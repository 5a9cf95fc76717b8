"""The seeds' co-occurrence term of a playlist's scores.

A track's co-occurrence score for a playlist is the mean, over the playlist's
seeds, of its cosine similarity with the seed in the training playlists
(playlists x tracks, binary), each seed keeping its `k` most similar tracks
(`tfrec_music.models.neighbours`: `cosine_neighbours`, `neighbour_matrix`;
the export scores through its `NeighbourProduct`). The family adds
`weight` x that mean to the factorization's logits: the factors summarize a
playlist in `embedding_dim` numbers, while two tracks that keep appearing
together are evidence the factors smooth away.

A training playlist's own rows are in the similarities, so for its validation
questions the score would count the playlist's other tracks as co-occurring
with its seeds because they are the same playlist; `own_share` gives that
part, which the family's scorer removes for trained playlists, so validation
measures what a new playlist gets (the held-out playlists of the test slices,
and a served one, are in no similarity).
"""

from typing import Sequence

import numpy as np
import scipy.sparse as sp


def seed_matrix(seeds: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
  """[B, n_items] CSR: 1 / (number of seeds) at each query's seeds (a mean over them)."""
  counts = np.asarray([len(s) for s in seeds], np.int64)
  rows = np.repeat(np.arange(len(seeds)), counts)
  cols = np.concatenate([np.asarray(s, np.int64) for s in seeds]) if len(seeds) else []
  values = np.repeat(1.0 / np.maximum(counts, 1), counts).astype(np.float32)
  return sp.csr_matrix((values, (rows, cols)), shape=(len(seeds), n_items))


def cooccurrence_scores(seeds: Sequence[np.ndarray], neighbours: sp.csr_matrix) -> np.ndarray:
  """[B, n_items] mean over each query's seeds of the seed's neighbour similarities.

  Args:
    seeds: [B] catalogue index arrays (may be empty: a zero row).
    neighbours: [n_items, n_items] CSR (`neighbours.neighbour_matrix`).
  """
  return np.asarray((seed_matrix(seeds, neighbours.shape[0]) @ neighbours).toarray(), np.float32)


def own_share(seeds: Sequence[np.ndarray], own_rows: sp.csr_matrix, neighbours: sp.csr_matrix,
              norms: np.ndarray) -> np.ndarray:
  """[B, n_items] the part of `cooccurrence_scores` due to each query's own playlist.

  Its own row adds 1 / (|s| |j|) to the cosine of a seed s and a track j it
  holds both of (|.| the norm of a track's column), where j is among s's kept
  neighbours.

  Args:
    seeds: [B] catalogue index arrays.
    own_rows: [B, n_items] binary training row of each query's playlist (zero
      for a playlist not trained on).
    neighbours: The neighbour CSR (its pattern says which pairs are kept).
    norms: [n_items] column norms of the training matrix.
  """
  inverse = np.divide(1.0, norms, out=np.zeros(len(norms)), where=norms > 0).astype(np.float32)
  start = seed_matrix(seeds, neighbours.shape[0]).multiply(own_rows).multiply(inverse[None, :])
  pattern = neighbours.copy()
  pattern.data[:] = 1.0
  reach = np.asarray((sp.csr_matrix(start) @ pattern).toarray(), np.float32)
  return reach * np.asarray(own_rows.multiply(inverse[None, :]).toarray(), np.float32)
