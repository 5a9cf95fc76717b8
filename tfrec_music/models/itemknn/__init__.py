"""Item-based k-nearest neighbours (`--model itemknn`)."""

from tfrec_music.models.itemknn.config import ItemKNNConfig
from tfrec_music.models.itemknn.family import ItemKNNFamily
from tfrec_music.models.itemknn.network import NeighbourProduct
from tfrec_music.models.itemknn.network import cosine_neighbours
from tfrec_music.models.itemknn.network import neighbour_matrix
