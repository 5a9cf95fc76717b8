"""Process set-up that must happen before TensorFlow is imported.

TFRS 0.7.7 is written for Keras 2, so TensorFlow has to resolve `tf.keras` to
tf-keras. That choice is made once, when TensorFlow is first imported, from the
`TF_USE_LEGACY_KERAS` variable; this module sets it and checks that nobody
imported TensorFlow with Keras 3 before us.
"""

import os
import sys


def configure_tensorflow_environment() -> None:
  """Sets `TF_USE_LEGACY_KERAS=1` and silences TensorFlow's C++ logging (override with TF_CPP_MIN_LOG_LEVEL).

  Raises:
    ImportError: TensorFlow was already imported with Keras 3 as `tf.keras`.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    tf = sys.modules["tensorflow"]
    keras_version = ""
    try:
      keras_version = str(getattr(tf.keras, "__version__", ""))
    except Exception:  # pylint: disable=broad-except
      pass
    if not keras_version.startswith("2."):
      raise ImportError(
          "TensorFlow was imported with Keras 3 before tfrec_music, but "
          "TensorFlow Recommenders needs Keras 2 (tf-keras). Set the "
          "environment variable `TF_USE_LEGACY_KERAS=1` before TensorFlow is "
          "imported (e.g. `export TF_USE_LEGACY_KERAS=1`, or in a notebook "
          "`import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'` in the first "
          "cell), or import tfrec_music before tensorflow, then restart the "
          "process.")
  os.environ["TF_USE_LEGACY_KERAS"] = "1"
