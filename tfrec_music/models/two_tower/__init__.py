"""Two-tower retrieval (`--model two_tower`): user tower x track tower.

The recommender idea: embed users (id, country, the tracks they played
recently) and tracks (id plus content: artist, album, genre, tags, title and
lyrics text, audio features) in one space and recommend the nearest tracks.
Training is in-batch softmax (`tfrs.tasks.Retrieval`) with sampling-bias
(logQ) correction from training item frequencies, accidental-hit removal, a
temperature and optional extra uniform negatives (mixed negatives). Content
features let never-played tracks be placed near similar ones; history lets
users never seen in training get personal recommendations.

Modules: `config` (hyperparameters, presets, search space), `network` (the
`tfrs.Model`, the query encoder, the optimizer), `serving` (the export: query
model, retrieval SavedModels, towers), `core` (the family in memory: fit,
scoring, save), `materialize` (training rows as TFRecord shards, one pass over
Parquet), `stream` (training from those shards) and `family` (`TwoTowerFamily`,
`core` plus `--stream`). Imports go one way: `family` -> `stream` -> `core`.
"""

from tfrec_music.models.two_tower.config import TwoTowerConfig
from tfrec_music.models.two_tower.config import USER_FEATURES
from tfrec_music.models.two_tower.core import TwoTowerCore
from tfrec_music.models.two_tower.family import TwoTowerFamily
from tfrec_music.models.two_tower.network import QueryEncoder
from tfrec_music.models.two_tower.network import TwoTowerModel
from tfrec_music.models.two_tower.network import optimizer

__all__ = [
    "QueryEncoder",
    "TwoTowerConfig",
    "TwoTowerCore",
    "TwoTowerFamily",
    "TwoTowerModel",
    "USER_FEATURES",
    "optimizer",
]
