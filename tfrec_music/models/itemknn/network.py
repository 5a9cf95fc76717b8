"""Item-based k-nearest neighbours: cosine neighbours and their scoring (both in the shared
`tfrec_music.models.neighbours`, which `playlist_mf` uses too).

sim(a, b) = x_a . x_b / (|x_a| |x_b| + shrink) over the items' user columns;
each item keeps its `k` most similar other items, and a user's score of
item j is the sum of sim(i, j) over their history items i that have j
among their neighbours (weighted by x_ui).
"""

from tfrec_music.models.neighbours import NeighbourProduct  # noqa: F401  (the family's)
from tfrec_music.models.neighbours import cosine_neighbours  # noqa: F401
from tfrec_music.models.neighbours import neighbour_matrix  # noqa: F401
