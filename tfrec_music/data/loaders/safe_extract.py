"""Zip extraction that never writes outside its target folder.

A data set archive is input from outside: a member named `../../.bashrc`,
`/etc/passwd`, `C:\\x` or a symbolic link would otherwise let extraction
overwrite files anywhere the process can write ("zip slip"). Every member is
checked before anything is written, so a bad archive leaves nothing behind.
"""

import os
import stat
import zipfile
from typing import List, Optional

# Uncompressed bytes one archive may expand to (a guard against zip bombs).
DEFAULT_MAX_BYTES = 4 << 30


class UnsafeArchiveError(ValueError):
  """An archive member would leave the target folder (or the archive is too big)."""


def _member_target(name: str, root: str) -> Optional[str]:
  """The real path a member would be written to, or None if it leaves `root`."""
  normalized = name.replace("\\", "/")
  if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
    return None
  parts = [p for p in normalized.split("/") if p not in ("", ".")]
  if any(p == ".." for p in parts):
    return None
  target = os.path.realpath(os.path.join(root, *parts)) if parts else root
  if os.path.commonpath([root, target]) != root:
    return None
  return target


def safe_extract(archive: str, target_dir: str, max_bytes: int = DEFAULT_MAX_BYTES
                 ) -> List[str]:
  """Extracts a zip archive into `target_dir`, refusing members that leave it.

  Example:
    >>> safe_extract("hetrec2011-lastfm-2k.zip", "/tmp/hetrec")
    ['/tmp/hetrec/artists.dat', ...]

  Args:
    archive: Path of the zip file (or a binary file object).
    target_dir: Folder to extract into (created if missing).
    max_bytes: Largest total uncompressed size accepted.

  Returns:
    Paths of the extracted files.

  Raises:
    UnsafeArchiveError: a member has an absolute path, a drive letter, a `..`
      component or is a symbolic link, or the archive expands beyond
      `max_bytes`. Nothing is extracted then.
    zipfile.BadZipFile: the file is not a zip archive.
  """
  os.makedirs(target_dir, exist_ok=True)
  root = os.path.realpath(target_dir)
  with zipfile.ZipFile(archive) as zf:
    members = zf.infolist()
    total = 0
    plan = []
    for info in members:
      mode = info.external_attr >> 16
      if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(
            f"archive member {info.filename!r} of {archive} is a symbolic link; links are "
            "refused because they can point outside the target folder. Fix: use the "
            "original release archive, or extract it yourself and pass the folder.")
      target = _member_target(info.filename, root)
      if target is None:
        raise UnsafeArchiveError(
            f"archive member {info.filename!r} of {archive} would be written outside "
            f"{target_dir} (absolute path or '..'); nothing was extracted. Fix: use the "
            "original release archive, or extract it yourself and pass the folder.")
      total += info.file_size
      plan.append((info, target))
    if total > max_bytes:
      raise UnsafeArchiveError(
          f"{archive} expands to {total} bytes, more than the {max_bytes} accepted; nothing "
          "was extracted. Fix: extract it yourself and pass the folder.")
    written = []
    for info, target in plan:
      if info.is_dir():
        os.makedirs(target, exist_ok=True)
        continue
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with zf.open(info) as src, open(target, "wb") as dst:
        while True:
          block = src.read(1 << 20)
          if not block:
            break
          dst.write(block)
      written.append(target)
  return written
