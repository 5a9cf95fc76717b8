"""EASE, the closed-form item x item autoencoder (`--model ease`)."""

from tfrec_music.models.ease.config import EASEConfig
from tfrec_music.models.ease.family import EASEFamily
from tfrec_music.models.ease.network import DenseProduct
from tfrec_music.models.ease.network import EASESolver
from tfrec_music.models.ease.network import check_catalogue
