"""Deep & Cross Network v2 ranking (`--model dcn`): predicted rating of a (user, track) pair.

The recommender idea: a rating depends on crossings of features (this user's
taste x this track's genre, artist x audio), which a plain MLP learns slowly.
DCN v2 (Wang et al., WWW 2021) feeds the concatenated embeddings x0 of the
user (id, country) and the track (id, album, artist, genre, parent genre,
genre level, mood, normalized audio features) to cross layers
`x_{l+1} = x0 * (W x_l + b) + x_l` (optionally low-rank: W = U V) and a deep
network, stacked or in parallel, then one output unit.

Modules: `config` (hyperparameters, presets, flags, search space), `features`
(raw feature columns and vocabularies), `network` (encoder, ranker, the
`tfrs.Model`), `serving` (the export and its fallbacks), `family` (fit,
evaluate, score, save) and `stream` (training from Parquet shards).
"""

from tfrec_music.models.dcn.config import DCNConfig
from tfrec_music.models.dcn.family import DCNFamily
from tfrec_music.models.dcn.features import RankingFeatureSpec
from tfrec_music.models.dcn.features import raw_signature
from tfrec_music.models.dcn.network import DCNModel
from tfrec_music.models.dcn.network import DCNRanker
from tfrec_music.models.dcn.network import RankingEncoder
from tfrec_music.models.dcn.network import build_ranker
from tfrec_music.models.dcn.network import optimizer
from tfrec_music.models.dcn.serving import DCNServingModule
from tfrec_music.models.dcn.serving import FallbackBiases
from tfrec_music.models.dcn.serving import save_serving_module
from tfrec_music.models.dcn.stream import StreamedDCN
from tfrec_music.models.dcn.stream import stream_train

__all__ = [
    "DCNConfig",
    "DCNFamily",
    "DCNModel",
    "DCNRanker",
    "DCNServingModule",
    "FallbackBiases",
    "RankingEncoder",
    "RankingFeatureSpec",
    "StreamedDCN",
    "build_ranker",
    "optimizer",
    "raw_signature",
    "save_serving_module",
    "stream_train",
]
