"""Files this package writes, reports and caches alike: replaced atomically, with the modes the umask gives;
and files it reads from data it does not trust: regular files only, read to a bound."""

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


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` (str as UTF-8, or bytes) to `path` via a temp file in the same folder and a rename:
    readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
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


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def read_regular(path: Path, limit: int) -> tuple[bytes, str]:
    """At most `limit` + 1 bytes of `path` (so a caller sees that there are more) and '', or no bytes and
    what the path is in words (a folder, a FIFO, a device) when it is not a regular file.

    Checked with stat before anything is opened (opening a FIFO blocks; a device can be endless or act on
    open), then opened non-blocking and checked again, in case it was swapped in between; the size on disk
    is not trusted. The OSError of a failed stat, open or read passes through.
    """
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        return b"", file_kind(mode)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        return (handle.read(limit + 1), "") if stat.S_ISREG(mode) else (b"", file_kind(mode))
