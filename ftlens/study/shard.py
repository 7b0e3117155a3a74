"""Which shard of the records this process does: from ``--shard i/n`` or the launcher's environment.

Order of precedence: an explicit ``(i, n)``; ``torchrun`` / ``torch.distributed`` launchers
(``RANK`` and ``WORLD_SIZE``); Slurm job arrays (``SLURM_ARRAY_TASK_ID`` and
``SLURM_ARRAY_TASK_COUNT``, the id taken relative to ``SLURM_ARRAY_TASK_MIN``, so
``--array=1-8`` works); else ``(0, 1)``.  Shard ``i`` of ``n`` does the records at 1-based
input lines ``L`` with ``(L - 1) % n == i`` (:func:`ftlens.jsonl.read_records`' rule), so
``n`` shards cover every record exactly once.
"""

from __future__ import annotations

import os
from typing import Mapping

from ..errors import SpanError

__all__ = ["shard_from_env", "in_shard"]


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise SpanError(f"environment variable {name}={env[name]!r} is not an integer") from None


def shard_from_env(explicit: tuple[int, int] | None = None,
                   env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(i, n)`` for this process (see the module docstring); :class:`SpanError` if inconsistent."""
    env = os.environ if env is None else env
    if explicit is not None:
        i, n = explicit
    elif "RANK" in env and "WORLD_SIZE" in env:
        i, n = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        lo = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        i, n = _int(env, "SLURM_ARRAY_TASK_ID") - lo, _int(env, "SLURM_ARRAY_TASK_COUNT")
    else:
        i, n = 0, 1
    if not 0 <= i < n:
        raise SpanError(f"shard {i}/{n} is out of range; need 0 <= i < n (check --shard, RANK/WORLD_SIZE or "
                        "SLURM_ARRAY_TASK_ID/COUNT; a Slurm array with gaps needs --shard)")
    return i, n


def in_shard(line: int, shard: tuple[int, int]) -> bool:
    """Whether the record at 1-based ``line`` belongs to ``shard``."""
    return (line - 1) % shard[1] == shard[0]
