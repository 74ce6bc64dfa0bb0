"""Writing a file of the user's: whole or not at all, and never through a link."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, content: bytes, replace: bool = True) -> None:
  """content as the file path: written to ``.<name>.tmp`` (O_NOFOLLOW: a link at that name is
  an error, never written through), then renamed over path (replace) or linked to it (not
  replace: FileExistsError if path exists, nothing replaced). The temporary file is gone either
  way, so a failed write (a full disk) leaves no partial file; an OSError names path."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with os.fdopen(os.open(tmp, flags, 0o666), "wb") as f:
      f.write(content)
    if replace:
      os.replace(tmp, path)
    else:
      os.link(tmp, path)
  except OSError as e:  # Named by the file (a write's error names no file; the rename's, two).
    raise type(e)(e.errno, e.strerror, str(path)) from None
  finally:
    if tmp.is_file() and not tmp.is_symlink():
      tmp.unlink()
