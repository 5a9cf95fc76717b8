"""File helpers over `tf.io.gfile`, so `gs://` and `ram://` paths work too.

TensorFlow is imported lazily: loaders and the synthetic generator work on
local paths without paying TensorFlow's import time.
"""

import os


def _is_local(path: str) -> bool:
  return "://" not in str(path)


def _write(path: str, data, mode: str) -> None:
  path = str(path)
  if _is_local(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, mode, encoding=None if "b" in mode else "utf-8") as f:
      f.write(data)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, mode) as f:
    f.write(data)


def _read(path: str, mode: str):
  path = str(path)
  if _is_local(path):
    with open(path, mode, encoding=None if "b" in mode else "utf-8") as f:
      return f.read()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, mode) as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path`, creating parent folders."""
  _write(path, text, "w")


def read_text(path: str) -> str:
  """Reads a UTF-8 text file from any local or `tf.io.gfile` path."""
  return _read(path, "r")


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path`, creating parent folders."""
  _write(path, data, "wb")


def read_bytes(path: str) -> bytes:
  """Reads a whole file as bytes from any local or `tf.io.gfile` path."""
  return _read(path, "rb")


def exists(path: str) -> bool:
  """True if `path` exists (local or `tf.io.gfile`)."""
  path = str(path)
  if _is_local(path):
    return os.path.exists(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.exists(path)


def makedirs(path: str) -> None:
  """Creates `path` and its parents (local or `tf.io.gfile`)."""
  path = str(path)
  if _is_local(path):
    os.makedirs(path, exist_ok=True)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(path)


def join(*parts: str) -> str:
  """Joins path parts with `/` (valid for local and remote paths)."""
  return os.path.join(*[str(p) for p in parts])
