"""User-to-user taste similarity (`--model user_similarity`): "people with your taste".

The recommender idea: two users are alike when their listening is alike. A
user's taste vector is made of one or more parts (`profiles`): the truncated
SVD of their tf-idf listening profile (`lsa`), their implicit ALS factors
(`als`) and the centroid of their track vectors (`centroid`, over their
recent tracks). The score of two users is the cosine of their vectors (with
several parts, the weighted mean of the parts' cosines) or
`1 / (||u - v|| + epsilon)`. There are no labels for taste similarity, so
validation uses friendships (`tfrec_music.evaluation.similarity`).

Modules: `config` (settings, presets, flags), `index` (exact numpy search),
`profiles` (the parts and new users), `model` (the library object),
`serving` (the export's modules) and `family` (fit, evaluation, export).
"""

from tfrec_music.models.user_similarity.config import PARTS
from tfrec_music.models.user_similarity.config import SIMILARITY_TABLE_KEYS
from tfrec_music.models.user_similarity.config import UserSimilarityConfig
from tfrec_music.models.user_similarity.family import UserSimilarityFamily
from tfrec_music.models.user_similarity.index import METRICS
from tfrec_music.models.user_similarity.index import ROUNDING
from tfrec_music.models.user_similarity.index import SimilarityIndex
from tfrec_music.models.user_similarity.index import recent_rows
from tfrec_music.models.user_similarity.index import taste_centroids
from tfrec_music.models.user_similarity.model import UserSimilarity
from tfrec_music.models.user_similarity.profiles import TasteParts
from tfrec_music.models.user_similarity.profiles import fit_parts
from tfrec_music.models.user_similarity.serving import SimilarUsersModule
from tfrec_music.models.user_similarity.serving import TasteQueryModel
from tfrec_music.models.user_similarity.serving import save_similar_users_module

__all__ = [
    "METRICS",
    "PARTS",
    "ROUNDING",
    "SIMILARITY_TABLE_KEYS",
    "SimilarUsersModule",
    "SimilarityIndex",
    "TasteParts",
    "TasteQueryModel",
    "UserSimilarity",
    "UserSimilarityConfig",
    "UserSimilarityFamily",
    "fit_parts",
    "recent_rows",
    "save_similar_users_module",
    "taste_centroids",
]
