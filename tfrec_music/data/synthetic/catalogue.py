"""The synthetic catalogue generated in memory (`generate`)."""

import dataclasses
from typing import List, Sequence

import numpy as np
import pandas as pd

from tfrec_music.data.report import DataReport
from tfrec_music.data.synthetic.card import build_data_card
from tfrec_music.data.synthetic.config import STREAM_ONLY_PRESETS
from tfrec_music.data.synthetic.config import SyntheticConfig
from tfrec_music.data.synthetic.config import resolve_config
from tfrec_music.data.synthetic.generator import Generator
from tfrec_music.data.synthetic.lexicon import PLAYLIST_COLUMNS
from tfrec_music.data.synthetic.oracle import Oracle
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables


@dataclasses.dataclass
class SyntheticCatalogue:
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
    return build_data_card(self.config, self.preset, user_degree, item_degree, rating_counts,
                      n_links, len(self.playlists))


def generate(preset: str = "default", seed: int = 0, **overrides) -> SyntheticCatalogue:
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
  if preset in STREAM_ONLY_PRESETS and not overrides:
    raise ValueError(f"`preset` = {preset!r} does not fit in memory comfortably: stream it "
                     "to files with `synthetic.write_large(out_dir)` (or `python -m "
                     "tfrec_music.data.synthetic --preset large --out DIR`) and load the "
                     "folder with `--data parquet`.")
  gen = Generator(config)
  interactions = pd.concat([gen.interaction_frame(gen.interaction_chunk(k))
                            for k in range(gen.n_chunks())], ignore_index=True)
  playlists = _concat_or_empty(list(gen.playlist_chunks()), PLAYLIST_COLUMNS)
  tables = Tables(interactions=interactions, items=gen.items, users=gen.users,
                  user_links=gen.user_links(),
                  sources={t: f"synthetic:{preset}/{t}" for t in
                           ("interactions", "items", "users", "user_links")},
                  name="synthetic")
  tables = validate_tables(tables, report=DataReport())
  return SyntheticCatalogue(tables=tables, playlists=playlists, oracle=gen.oracle(),
                          config=config, preset=preset)


def _concat_or_empty(frames: List[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
  if frames:
    return pd.concat(frames, ignore_index=True)
  return pd.DataFrame({c: [] for c in columns})
