"""Heatmap PNGs of pairwise similarity (users or artists).

With matplotlib installed the image has labelled axes and a colour bar.
Without it, a small built-in PNG writer (zlib + the PNG chunk format, no
other dependency) draws the same matrix as coloured cells and writes the
row/column labels beside it (`<name>.labels.txt`), so the feature works in
the minimal install too.
"""

import struct
import zlib
from typing import List, Optional, Sequence

import numpy as np

from tfrec_music import io

# Viridis anchors (matplotlib's colormap sampled at 0, 0.25, 0.5, 0.75, 1).
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                     [253, 231, 37]], np.float64)


def colorize(values: np.ndarray) -> np.ndarray:
  """[H, W] values -> [H, W, 3] uint8 viridis colours (min -> purple, max -> yellow).

  NaNs are drawn grey; a constant matrix is drawn at the middle colour.
  """
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  lo = values[finite].min() if finite.any() else 0.0
  hi = values[finite].max() if finite.any() else 1.0
  t = (values - lo) / (hi - lo) if hi > lo else np.full(values.shape, 0.5)
  t = np.clip(np.where(finite, t, 0.0), 0.0, 1.0) * (len(_VIRIDIS) - 1)
  left = np.minimum(np.floor(t).astype(int), len(_VIRIDIS) - 2)
  frac = (t - left)[..., None]
  rgb = _VIRIDIS[left] * (1 - frac) + _VIRIDIS[left + 1] * frac
  rgb[~finite] = 128
  return np.round(rgb).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
  """PNG bytes of an [H, W, 3] uint8 image (8-bit truecolour, no filtering)."""
  rgb = np.ascontiguousarray(rgb, np.uint8)
  if rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"`rgb` should be [H, W, 3]. Received shape {rgb.shape}.")
  height, width = rgb.shape[:2]
  raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(height))

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray:
  """Reads back what `encode_png` writes ([H, W, 3] uint8; filter type 0 only)."""
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError("Not a PNG file.")
  pos, idat, width, height = 8, b"", 0, 0
  while pos < len(data):
    length = struct.unpack(">I", data[pos:pos + 4])[0]
    kind = data[pos + 4:pos + 8]
    body = data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
      width, height = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
      idat += body
    pos += 12 + length
  rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
  if rows[:, 0].any():
    raise ValueError("Only unfiltered PNG rows are supported.")
  return rows[:, 1:].reshape(height, width, 3).copy()


def similarity_heatmap(matrix: np.ndarray, labels: Sequence[str], path: str,
                       title: str = "similarity", cell: int = 16,
                       use_matplotlib: Optional[bool] = None) -> List[str]:
  """Writes a heatmap PNG of a square similarity matrix.

  Args:
    matrix: [n, n] similarities (larger = more alike).
    labels: [n] names of the rows/columns.
    path: Output `.png` path (local or `tf.io.gfile`).
    title: Figure title (matplotlib only).
    cell: Pixels per cell (built-in writer).
    use_matplotlib: Force (True) or skip (False) matplotlib; None: use it if
      installed.

  Returns:
    The files written (the PNG, and the labels file of the built-in writer).
  """
  matrix = np.asarray(matrix, np.float64)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(labels):
    raise ValueError("`matrix` should be [n, n] with n = len(labels). Received: "
                     f"{matrix.shape} and {len(labels)} labels.")
  if use_matplotlib is None:
    try:
      import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      use_matplotlib = True
    except ImportError:
      use_matplotlib = False
  if use_matplotlib:
    import io as pyio  # pylint: disable=g-import-not-at-top
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    size = max(4.0, 0.3 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    shown = np.where(np.isfinite(matrix), matrix, np.nan)
    image = ax.imshow(shown, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels=list(labels), rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels=list(labels), fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buffer = pyio.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _write_bytes(path, buffer.getvalue())
    return [path]
  rgb = np.repeat(np.repeat(colorize(matrix), cell, axis=0), cell, axis=1)
  _write_bytes(path, encode_png(rgb))
  labels_path = path.rsplit(".", 1)[0] + ".labels.txt"
  io.write_text(labels_path, f"# {title}: rows and columns of {path}, top to bottom\n"
                + "".join(f"{i}\t{name}\n" for i, name in enumerate(labels)))
  return [path, labels_path]


def _write_bytes(path: str, data: bytes) -> None:
  """Writes `data` through `tf.io.gfile` (local, `gs://`), creating the folder."""
  import os  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder = os.path.dirname(path)
  if folder:
    tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)
