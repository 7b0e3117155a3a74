"""ftlens's cache directory, and directories written into it atomically.

``<cache>`` is ``$FTLENS_CACHE_DIR`` when set, else the user cache dir
(``platformdirs.user_cache_dir("ftlens")``, e.g. ``~/.cache/ftlens``). A cached
directory is valid while its marker file (:data:`MARKER`, JSON) equals the
fingerprint of its source; :func:`atomic_dir` writes the marker last and renames a
finished temporary sibling into place, so an interrupted write never leaves a
half-written cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

__all__ = ["cache_dir"]

MARKER = "ftlens-cache.json"
CACHE_FORMAT = 1  # bump to invalidate caches written by older ftlens versions


def cache_dir() -> Path:
    """Root of ftlens's cache: ``$FTLENS_CACHE_DIR``, else the user cache dir."""
    env = os.environ.get("FTLENS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("ftlens", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftlens"


def source_fingerprint(source: Path) -> dict[str, Any]:
    """Marker of a directory derived from the file ``source``: cache format, name, size."""
    return {"format": CACHE_FORMAT, "source": source.name, "source_bytes": source.stat().st_size}


def is_valid_cache(path: Path, fingerprint: dict[str, Any]) -> bool:
    """``path`` holds a marker equal to ``fingerprint``."""
    try:
        return json.loads((path / MARKER).read_text()) == fingerprint
    except (OSError, ValueError):
        return False


def atomic_dir(target: Path, write: Callable[[Path], None], marker: dict[str, Any]) -> Path:
    """Create directory ``target`` atomically: ``write(tmp)`` fills a temporary sibling,
    the marker file is written last, then the sibling is renamed to ``target``.

    A crash inside ``write`` leaves no ``target`` and no temporary directory. If
    another process renamed its own copy into place first, that copy is kept.
    A stale ``target`` (wrong or missing marker) is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # (not mkdtemp: that makes it 0700, and it becomes the cache dir)
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists() and not is_valid_cache(target, marker):
            stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(OSError):
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not is_valid_cache(target, marker):  # lost a race to a broken writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
