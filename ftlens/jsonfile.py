"""Versioned JSON files of ftlens results (traces, step graphs): reading, writing, typed values.

What every result file shares: a ``format`` name and a ``schema_version`` a reader refuses when
newer; float32 tensors written as the shortest decimals that read back exactly (:func:`tolist`);
gzip for names ending in ``.gz``; atomic writes; and one-line :class:`SchemaError` messages for
files that are missing, empty, truncated, not JSON, or of another kind.  The layouts themselves
live in :mod:`ftlens.schema` (traces) and :mod:`ftlens.schema_graph` (step graphs).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from .errors import SchemaError
from .fileio import atomic_write_bytes

__all__ = ["KINDS", "tolist", "tensor", "as_list", "as_dict", "as_str", "as_int", "as_float", "as_pair",
           "fields_of", "sequence_fields", "check_header", "write", "read", "parse"]

#: Each result file's ``format`` name -> what it is and how to load it (for the message that
#: names the right loader when a file of one kind is given to another's).
KINDS = {
    "ftlens.trace": ("an ftlens trace", "ftlens.Trace.load"),
    "ftlens.step_graph": ("an ftlens step graph", "ftlens.stepgraph.StepGraph.load"),
}


def tolist(t: Tensor) -> Any:
    """Nested lists of Python floats, each the shortest decimal of its float32 value."""
    a = t.detach().to("cpu", torch.float32).numpy()
    if a.size == 0:
        return a.tolist()
    return np.vectorize(float, otypes=[object])(a.astype(str)).tolist()


def tensor(data: Any, ndim: int, what: str = "trace") -> Tensor:
    """A float32 tensor of ``ndim`` dimensions from nested lists; :class:`SchemaError` otherwise."""
    if not isinstance(data, list):
        raise SchemaError(f"corrupt ftlens {what}: expected a {ndim}-d array, got {type(data).__name__}; "
                          "re-create the file with ftlens")
    t = torch.tensor(data, dtype=torch.float32)
    if t.ndim != ndim and not (t.numel() == 0 and ndim >= 1):
        raise SchemaError(f"corrupt ftlens {what}: expected a {ndim}-d array, got {t.ndim}-d; "
                          "re-create the file with ftlens")
    if not bool(torch.isfinite(t).all()):
        raise SchemaError(f"corrupt ftlens {what}: non-finite numbers in an array; re-create the file with ftlens")
    return t


def _typed(x: Any, cls: type, noun: str) -> Any:
    if not isinstance(x, cls):
        raise TypeError(f"expected {noun}, got {type(x).__name__}")
    return x


def as_list(x: Any) -> list:
    return _typed(x, list, "a list")


def as_dict(x: Any) -> dict:
    return _typed(x, dict, "an object")


def as_str(x: Any) -> str:
    return _typed(x, str, "a string")


def as_int(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"expected an integer, got {x!r:.40}")
    return x


def as_float(x: Any) -> float:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise TypeError(f"expected a number, got {x!r:.40}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError("non-finite number")
    return v


def as_pair(x: Any) -> tuple[int, int]:
    a, b = as_list(x)
    return as_int(a), as_int(b)


def sequence_fields(d: dict[str, Any]) -> dict[str, Any]:
    """The fields every result file has about its sequence: ``model``, ``ids``, ``tokens``,
    ``roles``, ``output``, ``reasoning`` (read inside :func:`fields_of`)."""
    return {
        "model": as_str(d["model"]),
        "ids": [as_int(i) for i in as_list(d["ids"])],
        "tokens": [as_str(t) for t in as_list(d["tokens"])],
        "roles": [as_str(r) for r in as_list(d["roles"])],
        "output": as_pair(d["output"]),
        "reasoning": as_pair(d["reasoning"]) if d["reasoning"] is not None else None,
    }


@contextmanager
def fields_of(what: str) -> Iterator[None]:
    """Read a file's fields inside this: a missing field or a value of the wrong type becomes a
    one-line :class:`SchemaError` naming it (``corrupt ftlens {what}: ...``)."""
    try:
        yield
    except SchemaError:
        raise
    except KeyError as exc:
        raise SchemaError(f"corrupt ftlens {what}: field {exc} is missing; re-create the file with ftlens") from None
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
        raise SchemaError(f"corrupt ftlens {what} ({type(exc).__name__}: {exc}); re-create the file with ftlens") from None


def check_header(d: Any, format_name: str, version: int, *, default_format: str | None = None) -> None:
    """Refuse ``d`` unless it is a ``format_name`` file of a schema version <= ``version``.

    ``default_format``: the format assumed when the field is missing (trace files written before
    the field existed).  A file of another known kind is refused naming its loader.
    """
    what, _ = KINDS[format_name]
    noun = what.removeprefix("an ftlens ")
    if not isinstance(d, dict) or "schema_version" not in d:
        raise SchemaError(f"not {what} (no schema_version field); pass a JSON file written by ftlens")
    fmt = d.get("format", default_format)
    if fmt != format_name:
        if fmt in KINDS:
            other, loader = KINDS[fmt]
            raise SchemaError(f"this file is {other}, not {what}; load it with {loader}")
        raise SchemaError(f"not {what} (format {d.get('format')!r}); pass a JSON file written by ftlens")
    ver = d["schema_version"]
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise SchemaError(f"bad schema_version {ver!r} (expected an integer >= 1); is this {what}?")
    if ver > version:
        raise SchemaError(
            f"{noun} schema_version {ver} is newer than this ftlens understands ({version}); "
            "upgrade ftlens (pip install -U ftlens)"
        )


def write(obj: dict[str, Any], path: str | os.PathLike, what: str = "trace") -> Path:
    """Write ``obj`` as compact JSON, atomically (temp file in the same folder, then rename); a
    name ending in ``.gz`` is gzip-compressed.  An existing file is replaced only once the new
    one is complete."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise SchemaError(f"the {what} holds NaN or infinite numbers and cannot be saved as JSON") from None
    data = text.encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)


def read(path: str | os.PathLike, what: str = "trace") -> bytes:
    """The bytes of a result file; :class:`SchemaError` when it is missing or unreadable."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise SchemaError(f"{what} file {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise SchemaError(f"{p} is a folder, not a {what} file; pass the path of a .json {what}") from None
    except OSError as exc:
        raise SchemaError(f"cannot read {what} file {p}: {exc.strerror}") from None


def parse(raw: bytes | str, source: str, what: str = "trace") -> Any:
    """The JSON value of a result file's bytes/text (gzip detected by its magic bytes)."""
    if isinstance(raw, bytes) and raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise SchemaError(f"{source} is a truncated or corrupt gzip file; re-create it with ftlens") from None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaError(f"{source} is not UTF-8 text; pass an ftlens JSON {what}") from None
    if not raw.strip():
        raise SchemaError(f"{source} is empty (an interrupted copy?); re-create it with ftlens")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"{source} is not valid JSON (truncated or corrupt? {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}); re-create it with ftlens"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{source} is not valid JSON ({type(exc).__name__}); re-create it with ftlens") from None
