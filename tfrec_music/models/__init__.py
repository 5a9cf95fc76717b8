"""Model families and baselines."""

from tfrec_music.models.family import ModelFamily
from tfrec_music.models.popularity import PopularityModel
from tfrec_music.models.registry import get_family
