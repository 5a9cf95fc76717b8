"""Model families by CLI name.

Families are imported lazily (by module path) so `--help` and data-only
commands stay fast, and a family's heavy dependencies load only when chosen.
"""

import importlib
from typing import Dict, Tuple, Type

from tfrec_music.models.family import ModelFamily

# CLI name -> (module, class).
FAMILIES: Dict[str, Tuple[str, str]] = {
    "two_tower": ("tfrec_music.models.two_tower.family", "TwoTowerFamily"),
    "popularity": ("tfrec_music.models.popularity_family", "PopularityFamily"),
    "dcn": ("tfrec_music.models.dcn.family", "DCNFamily"),
    "two_tower_dcn": ("tfrec_music.models.cascade.family", "CascadeFamily"),
    "playlist_mf": ("tfrec_music.models.playlist_mf", "PlaylistMFFamily"),
    "als": ("tfrec_music.models.als", "ALSFamily"),
    "user_similarity": ("tfrec_music.models.user_similarity", "UserSimilarityFamily"),
    "taste_mlp": ("tfrec_music.models.taste_mlp.family", "TasteMLPFamily"),
    "itemknn": ("tfrec_music.models.itemknn.family", "ItemKNNFamily"),
    "ease": ("tfrec_music.models.ease.family", "EASEFamily"),
}

FAMILY_NAMES = tuple(FAMILIES)


def get_family(name: str) -> Type[ModelFamily]:
  """Returns the family class for `--model name`.

  Raises:
    ValueError: unknown model name.
  """
  if name not in FAMILIES:
    raise ValueError(f"`--model` should be one of {sorted(FAMILIES)}. "
                     f"Received: `--model` = {name!r}.")
  module, cls = FAMILIES[name]
  return getattr(importlib.import_module(module), cls)
