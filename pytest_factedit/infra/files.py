"""Files this package writes, reports and caches alike: replaced atomically, with the modes the umask gives."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def _regular_files(folder: Path) -> dict[str, os.stat_result]:
    """Every regular file under `folder` (links not followed), with its lstat."""
    found = {}
    for parent, _folders, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                found[path] = info
    return found


@contextmanager
def umask_modes(folder: Path) -> Iterator[None]:
    """Files the block writes under `folder` (new, replaced or rewritten) get the mode the umask gives.

    Libraries that write through a private temp file (safetensors, under peft's save_pretrained too) leave
    0600 files; a saved edit is shipped like a report, so it gets the same modes. Files the block leaves
    alone, and links, are not this run's to change.
    """
    before = {path: (info.st_ino, info.st_mtime_ns) for path, info in _regular_files(folder).items()}
    yield
    mode = default_mode()
    for path, info in _regular_files(folder).items():
        if before.get(path) != (info.st_ino, info.st_mtime_ns) and stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)
