"""Trace options in one place: the methods, their limits and the one check of them.

:func:`check_options` is what :func:`ftlens.trace` and the ``ftlens`` command both run
(the CLI before it loads a model), so the two accept and refuse exactly the same values.
"""

from __future__ import annotations

from typing import Any

from .errors import TraceError

#: Attribution methods (method §7, §8, §10).
METHODS = ("flashtrace", "ifr-span", "ifr-tokenwise")
#: What hop 0 explains: the answer span, or reasoning + answer (method §10).
EXPLAIN = ("output", "target")
#: What span passes do with the target's stop-token rows (``,`` ``.`` blank): trace them, or skip them.
STOP_ROWS = ("keep", "skip")
#: Where a generated target stops: auto (line for raw-text prompts, eos for chat ones), line, eos.
STOP_AT = ("auto", "line", "eos")
#: Largest ``hops`` accepted; recursion stops earlier once the pending mass is <= PENDING_TOL.
MAX_HOPS = 1000
#: Pending (reasoning) mass below which further hops change no score by more than this.
PENDING_TOL = 1e-6


def check_options(
    method: str,
    hops: int | None = None,
    threshold: float | None = None,
    explain: str = "output",
    completeness_tol: float | int | None = None,
    stop_rows: str = "keep",
    stop_at: str = "auto",
) -> int:
    """Refuse bad trace options with a one-line :class:`TraceError`; returns the hops to run.

    ``hops=None`` means 1 for ``flashtrace``; any other method makes one pass and refuses
    ``hops`` other than ``None``/0.
    """
    if method not in METHODS:
        raise TraceError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if explain not in EXPLAIN:
        raise TraceError(f"explain must be 'output' (the answer span) or 'target' (reasoning + answer), got {explain!r}")
    if stop_rows not in STOP_ROWS:
        raise TraceError(f"stop_rows must be 'keep' or 'skip' (the target's ',' '.' and blank rows), got {stop_rows!r}")
    if stop_at not in STOP_AT:
        raise TraceError(f"stop_at must be 'auto', 'line' or 'eos' (where a generated target stops), got {stop_at!r}")
    if hops is not None and (not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= MAX_HOPS):
        raise TraceError(f"hops must be an integer in [0, {MAX_HOPS}], got {hops!r}; hops=0 means no recursion")
    if hops not in (None, 0) and method != "flashtrace":
        raise TraceError(
            f"hops={hops} applies to method 'flashtrace' only ({method!r} makes one pass); "
            "drop hops or use method 'flashtrace'"
        )
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise TraceError(f"threshold must be in [0, 1), got {threshold!r}; e.g. 0.001")
    if completeness_tol is not None and not (
        isinstance(completeness_tol, (int, float)) and not isinstance(completeness_tol, bool) and completeness_tol > 0
    ):
        raise TraceError(f"completeness_tol must be a number > 0, got {completeness_tol!r}")
    if method != "flashtrace":
        return 0
    return 1 if hops is None else hops
