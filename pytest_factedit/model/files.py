"""Files this package writes, reports and caches alike: replaced atomically, with the modes the umask gives."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_mode(folder: bool = False) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under the process umask.

    tempfile makes files 0600 and folders 0700; reports and caches get the usual modes instead, so a
    CI artifact collector running as another user can read them.
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), default_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
