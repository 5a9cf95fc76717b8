"""Loaders from source files and data sets into validated canonical tables."""

from tfrec_music.data.loaders.canonical import load_canonical
from tfrec_music.data.loaders.lastfm_loved import load_lastfm_loved
from tfrec_music.data.loaders.tfds_source import load_tfds
