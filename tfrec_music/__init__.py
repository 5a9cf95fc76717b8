"""tfrec-music: TensorFlow Recommenders training package for music.

Importing this package sets `TF_USE_LEGACY_KERAS=1` (TFRS needs Keras 2), so
import it before TensorFlow.
"""

from tfrec_music._env import configure_tensorflow_environment

configure_tensorflow_environment()

__version__ = "0.1.0"
