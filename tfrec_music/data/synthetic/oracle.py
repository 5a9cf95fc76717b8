"""The generator's true scores (`Oracle`) and the affinity formula it shares with the sampler."""

import io as _pyio
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from tfrec_music import io


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
      return affinity(self.user_taste(user_ids), vectors, bias, self.temperature)
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
    io.write_bytes(path, buf.getvalue())

  @classmethod
  def load(cls, path: str) -> "Oracle":
    """Reads an oracle written by `save`."""
    with np.load(_pyio.BytesIO(io.read_bytes(path)), allow_pickle=False) as data:
      return cls(user_ids=data["user_ids"], user_taste=data["user_taste"],
                 item_ids=data["item_ids"], item_vectors=data["item_vectors"],
                 item_bias=data["item_bias"], temperature=float(data["temperature"]),
                 playlist_ids=data["playlist_ids"], playlist_taste=data["playlist_taste"])

  def __repr__(self) -> str:
    return (f"Oracle(users={len(self.user_ids)}, playlists={len(self.playlist_ids)}, "
            f"items={len(self.item_ids)}, temperature={self.temperature})")


def affinity(taste: np.ndarray, vectors: np.ndarray, bias: np.ndarray,
              temperature: float) -> np.ndarray:
  """[B, I] logits; the one formula the sampler and the oracle share."""
  out = taste @ vectors.T
  out /= np.float32(temperature)
  out += bias
  return out
