"""The embedded synthetic music catalogue: the package's default data.

A seeded generator with the structure of real music data, so every model can
be trained and evaluated with no download, and measured against the truth:
a latent taste space, a 3-level genre tree, artists, albums and tracks with
content and audio features (`tracks`), users with drifting tastes,
power-law activity and popularity, friendships and themed playlists
(`generator`), and the true scores (`Oracle`), the ceiling no model can beat.

Every draw comes from `np.random.default_rng` streams seeded by
`(seed, stream)`, so `generate` and the streaming `write_large` produce the
same rows bit for bit.

Example:
  >>> from tfrec_music.data import synthetic
  >>> catalogue = synthetic.generate("tiny", seed=0)
  >>> print(synthetic.format_data_card(catalogue.data_card()))

Command line (the `large` preset is streamed to sharded parquet files):
  python -m tfrec_music.data.synthetic --preset large --out /tmp/large
"""

from tfrec_music.data.synthetic.card import format_data_card
from tfrec_music.data.synthetic.catalogue import SyntheticCatalogue
from tfrec_music.data.synthetic.catalogue import generate
from tfrec_music.data.synthetic.cli import main
from tfrec_music.data.synthetic.config import PRESETS
from tfrec_music.data.synthetic.config import SyntheticConfig
from tfrec_music.data.synthetic.config import resolve_config
from tfrec_music.data.synthetic.lexicon import AUDIO_COLUMNS
from tfrec_music.data.synthetic.lexicon import GENRE_TREE
from tfrec_music.data.synthetic.lexicon import INTERACTION_COLUMNS
from tfrec_music.data.synthetic.lexicon import MOODS
from tfrec_music.data.synthetic.lexicon import PLAYLIST_COLUMNS
from tfrec_music.data.synthetic.oracle import Oracle
from tfrec_music.data.synthetic.writer import write_large

__all__ = [
    "AUDIO_COLUMNS",
    "GENRE_TREE",
    "INTERACTION_COLUMNS",
    "MOODS",
    "Oracle",
    "PLAYLIST_COLUMNS",
    "PRESETS",
    "SyntheticCatalogue",
    "SyntheticConfig",
    "format_data_card",
    "generate",
    "main",
    "resolve_config",
    "write_large",
]
