"""A tensorflow-datasets builder over the synthetic music catalogue.

Like TFDS's MovieLens (`movielens/100k-ratings`, `movielens/100k-movies`), each
config exposes one table of one preset:

- `tfrec_music_synthetic/tiny-interactions`, `.../default-interactions`: one
  example per (user, track) interaction with the user's features.
- `tfrec_music_synthetic/tiny-tracks`, `.../default-tracks`: one example per
  track with its content features.

Nothing is downloaded: the examples are generated (seed 0). Importing this
module registers the builder, so

  import tfrec_music.data.synthetic_tfds  # registers the builder
  ds = tfds.load("tfrec_music_synthetic/tiny-interactions", split="train",
                 data_dir=tmp)

works offline.
"""

import functools
from typing import Iterator, Tuple

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from tfrec_music.data import synthetic

_PRESETS = ("tiny", "default")
_TABLES = ("interactions", "tracks")
_SEED = 0


class SyntheticBuilderConfig(tfds.core.BuilderConfig):
  """One (preset, table) of the synthetic catalogue.

  Args:
    preset: Synthetic preset (`tiny` or `default`).
    table: `interactions` or `tracks`.
    **kwargs: Forwarded to `tfds.core.BuilderConfig`.
  """

  def __init__(self, *, preset: str, table: str, **kwargs):
    if preset not in _PRESETS:
      raise ValueError(f"`preset` should be one of {list(_PRESETS)}. "
                       f"Received: `preset` = {preset!r}.")
    if table not in _TABLES:
      raise ValueError(f"`table` should be one of {list(_TABLES)}. "
                       f"Received: `table` = {table!r}.")
    super().__init__(name=f"{preset}-{table}", **kwargs)
    self.preset = preset
    self.table = table


@functools.lru_cache(maxsize=2)
def _catalogue(preset: str) -> synthetic.SyntheticCatalogue:
  # Both configs of a preset are often prepared together: generate once.
  return synthetic.generate(preset, seed=_SEED)


class TfrecMusicSynthetic(tfds.core.GeneratorBasedBuilder):
  """The embedded synthetic music catalogue as a TFDS data set (no download)."""

  name = "tfrec_music_synthetic"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      SyntheticBuilderConfig(preset=p, table=t,
                      description=f"{t} of the `{p}` synthetic preset (seed {_SEED}).")
      for p in _PRESETS for t in _TABLES
  ]

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """Path of this module (TFDS looks for a checksums file beside it).

    TFDS 4.9.10's default finds it through `importlib_resources`, which it does
    not install on Python >= 3.9 (tensorflow/datasets#11212), so preparing any
    builder defined outside TFDS fails without this override.
    """
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.table == "interactions":
      features = {
          "user_id": tf.string,
          "item_id": tf.string,
          "timestamp": tf.int64,
          "rating": tf.float32,
          "weight": tf.float32,
          "user_country": tf.string,
          "username": tf.string,
      }
    else:
      features = {
          "item_id": tf.string,
          "title": tf.string,
          "artist": tf.string,
          "album": tf.string,
          "tags": tfds.features.Sequence(tf.string),
          "genre": tf.string,
          "parent_genre": tf.string,
          "genre_level": tf.int64,
          "mood": tf.string,
          "text": tf.string,
      }
      features.update({c: tf.float32 for c in synthetic.AUDIO_COLUMNS})
    return tfds.core.DatasetInfo(
        builder=self,
        description=("A deterministic synthetic music catalogue with a latent taste "
                     "space, a genre hierarchy, moods, drifting users and power-law "
                     "activity; see tfrec_music.data.synthetic."),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # generated data: nothing to download
    return {"train": self._generate_examples()}

  def _generate_examples(self) -> Iterator[Tuple[int, dict]]:
    catalogue = _catalogue(self.builder_config.preset)
    tables = catalogue.tables
    if self.builder_config.table == "interactions":
      users = tables.users.set_index("user_id")
      frame = tables.interactions.join(users[["country", "username"]], on="user_id")
      columns = {c: frame[c].to_numpy() for c in
                 ("user_id", "item_id", "timestamp", "rating", "weight", "country",
                  "username")}
      for i in range(len(frame)):
        yield i, {
            "user_id": columns["user_id"][i],
            "item_id": columns["item_id"][i],
            "timestamp": int(columns["timestamp"][i]),
            "rating": np.float32(columns["rating"][i]),
            "weight": np.float32(columns["weight"][i]),
            "user_country": columns["country"][i],
            "username": columns["username"][i],
        }
    else:
      for i, row in enumerate(tables.items.to_dict("records")):
        example = {k: row[k] for k in ("item_id", "title", "artist", "album", "genre",
                                        "parent_genre", "mood", "text")}
        example["tags"] = list(row["tags"])
        example["genre_level"] = int(row["genre_level"])
        example.update({c: np.float32(row[c]) for c in synthetic.AUDIO_COLUMNS})
        yield i, example
