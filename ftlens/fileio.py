"""Atomic file writing: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def _new_file_mode() -> int:
    """Mode of a freshly created file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Readers see the old file or the new one, never a half-written one; on any error
    (including KeyboardInterrupt) the temp file is removed and the old file is untouched.
    The new file keeps the old file's permissions (or gets the umask default).
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; pass a file name", str(path))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except FileExistsError:  # mkdir: a parent of path is a file
        raise NotADirectoryError(errno.ENOTDIR, "a parent folder of it is a file", str(path)) from None
    except OSError as exc:  # name the caller's path, not the parent or the temp file
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        mode = p.stat().st_mode & 0o7777
    except OSError:
        mode = _new_file_mode()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
