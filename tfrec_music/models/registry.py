"""Model families by CLI name."""

from typing import Dict, Type

from tfrec_music.models.family import ModelFamily


def _families() -> Dict[str, Type[ModelFamily]]:
  # Imported lazily so `--help` and data-only commands stay fast.
  from tfrec_music.models.popularity_family import PopularityFamily  # pylint: disable=g-import-not-at-top
  from tfrec_music.models.two_tower import TwoTowerFamily  # pylint: disable=g-import-not-at-top
  return {"popularity": PopularityFamily, "two_tower": TwoTowerFamily}


FAMILY_NAMES = ("two_tower", "popularity")


def get_family(name: str) -> Type[ModelFamily]:
  """Returns the family class for `--model name`.

  Raises:
    ValueError: unknown model name.
  """
  families = _families()
  if name not in families:
    raise ValueError(f"`--model` should be one of {sorted(families)}. "
                     f"Received: `--model` = {name!r}.")
  return families[name]
