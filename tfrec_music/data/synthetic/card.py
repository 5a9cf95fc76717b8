"""The data card: counts, sparsity, degree quantiles and the rating histogram."""

import dataclasses
from typing import Dict

import numpy as np

from tfrec_music.data.synthetic.config import SyntheticConfig


def _quantiles(degrees: np.ndarray) -> Dict[str, float]:
  if len(degrees) == 0:
    return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
  q = np.quantile(degrees, [0.5, 0.9, 0.99])
  return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]),
          "max": float(degrees.max())}


def build_data_card(config: SyntheticConfig, preset: str, user_degree: np.ndarray,
               item_degree: np.ndarray, rating_counts: np.ndarray, n_links: int,
               n_playlist_rows: int) -> dict:
  """The data card of a catalogue from its degrees and rating counts."""
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
    card: As returned by `SyntheticCatalogue.data_card` or `write_large`.

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
