"""The trace file format: versioned JSON (exact float32 round trip), and its checks.

A file is refused with :class:`~ftlens.errors.SchemaError` when it is not an ftlens
trace, is of a newer schema, or makes no sense: shapes that disagree, an unknown method,
negative shares, mass not conserved, roles that contradict the spans (method §10).
The layout is documented in ``docs/cli.md`` (file format).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import SchemaError
from .fileio import atomic_write_bytes
from .options import METHODS
from .records import HopRecord
from .spans import ROLES

#: Version of the JSON layout written by :func:`save`; readers refuse newer ones.
SCHEMA_VERSION = 1
#: The ``format`` field of every saved trace.
FORMAT_NAME = "ftlens.trace"


def encode(self: Any) -> dict[str, Any]:
    """A JSON-ready dict; tensors become nested lists of float32 values.

    Each value is the float32 number written with the fewest decimal digits that
    read back to the same float32 (``0.012345679``, not ``0.012345678918361664``),
    so a JSON round trip is exact and the file ~40% smaller.  Layout: see
    ``docs/cli.md`` (file format).
    """
    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "ftlens_version": self.version,
        "model": self.model,
        "method": self.method,
        "params": self.params,
        "ids": list(self.ids),
        "tokens": list(self.tokens),
        "roles": list(self.roles),
        "output": list(self.output),
        "reasoning": list(self.reasoning) if self.reasoning is not None else None,
        "scores": _tolist(self.scores),
        "output_mass": self.output_mass,
        "unresolved": self.unresolved,
        "row_scores": _tolist(self.row_scores) if self.row_scores is not None else None,
        "timings": dict(self.timings),
        "hops": [
            {
                "weight": h.weight,
                "norm": h.norm,
                "thinking_ratio": h.thinking_ratio,
                "scores": _tolist(h.scores),
                "heads": _tolist(h.heads),
                "residual": _tolist(h.residual),
                "bias": _tolist(h.bias),
                "mlp": _tolist(h.mlp),
                "completeness_gap": _tolist(h.gap) if h.gap is not None else None,
                "pending": _tolist(h.pending) if h.pending is not None else None,
            }
            for h in self.hops
        ],
    }


def decode(d: Any, cls: type) -> Any:
    """Rebuild a Trace; raises :class:`SchemaError` on an unknown schema or bad content."""
    if not isinstance(d, dict) or "schema_version" not in d:
        raise SchemaError("not an ftlens trace (no schema_version field); pass a JSON file written by ftlens")
    if d.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise SchemaError(f"not an ftlens trace (format {d.get('format')!r}); pass a JSON file written by ftlens")
    ver = d["schema_version"]
    if not isinstance(ver, int) or isinstance(ver, bool) or ver < 1:
        raise SchemaError(f"bad schema_version {ver!r} (expected an integer >= 1); is this an ftlens trace?")
    if ver > SCHEMA_VERSION:
        raise SchemaError(
            f"trace schema_version {ver} is newer than this ftlens understands ({SCHEMA_VERSION}); "
            "upgrade ftlens (pip install -U ftlens)"
        )
    try:
        hops = [HopRecord(**fields) for fields in _hop_fields(_list(d["hops"]), len(_list(d["tokens"])))]
        trace = cls(
            model=_str(d["model"]),
            method=_str(d["method"]),
            params=dict(_dict(d["params"])),
            ids=[_int(i) for i in _list(d["ids"])],
            tokens=[_str(t) for t in _list(d["tokens"])],
            roles=[_str(r) for r in _list(d["roles"])],
            output=_pair(d["output"]),
            reasoning=_pair(d["reasoning"]) if d["reasoning"] is not None else None,
            scores=_tensor(d["scores"], 1),
            hops=hops,
            output_mass=_float(d["output_mass"]),
            unresolved=_float(d["unresolved"]),
            row_scores=_tensor(d["row_scores"], 2) if d.get("row_scores") is not None else None,
            timings={_str(k): _float(v) for k, v in _dict(d.get("timings", {})).items()},
            version=_str(d.get("ftlens_version", "")),
        )
    except SchemaError:
        raise
    except KeyError as exc:
        raise SchemaError(f"corrupt ftlens trace: field {exc} is missing; re-create the file with ftlens") from None
    except (TypeError, ValueError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
        raise SchemaError(f"corrupt ftlens trace ({type(exc).__name__}: {exc}); re-create the file with ftlens") from None
    _check_consistent(trace)
    return trace


def save(self: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (temp file in the same folder, then rename).

    A name ending in ``.gz`` is gzip-compressed (about 3x smaller).  An existing file
    at ``path`` is replaced only once the new one is complete.
    """
    try:
        text = json.dumps(encode(self), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise SchemaError("the trace holds NaN or infinite numbers and cannot be saved as JSON") from None
    data = text.encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)


def load(path: str | os.PathLike, cls: type) -> Any:
    """Read a trace written by :meth:`save`; :class:`SchemaError` if it is not one."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SchemaError(f"trace file {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise SchemaError(f"{p} is a folder, not a trace file; pass the path of a .json trace") from None
    except OSError as exc:
        raise SchemaError(f"cannot read trace file {p}: {exc.strerror}") from None
    return loads(raw, cls, source=str(p))


def loads(raw: bytes | str, cls: type, source: str = "trace") -> Any:
    """Parse a saved trace from bytes/text (gzip detected by its magic bytes)."""
    if isinstance(raw, bytes) and raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise SchemaError(f"{source} is a truncated or corrupt gzip file; re-create it with ftlens") from None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaError(f"{source} is not UTF-8 text; pass an ftlens JSON trace") from None
    if not raw.strip():
        raise SchemaError(f"{source} is empty (an interrupted copy?); re-create it with ftlens")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"{source} is not valid JSON (truncated or corrupt? {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}); re-create it with ftlens"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{source} is not valid JSON ({type(exc).__name__}); re-create it with ftlens") from None
    return decode(data, cls)


def _hop_fields(hops: list, n: int) -> list[dict[str, Any]]:
    """Each hop's fields as tensors, their shapes checked before a record is built."""
    out = []
    for h in hops:
        f = {
            "weight": _float(h["weight"]),
            "norm": _float(h["norm"]),
            "thinking_ratio": _float(h["thinking_ratio"]),
            "scores": _tensor(h["scores"], 1),
            "heads": _tensor(h["heads"], 3),
            "residual": _tensor(h["residual"], 1),
            "bias": _tensor(h["bias"], 1),
            "mlp": _tensor(h["mlp"], 1),
            "gap": _tensor(h["completeness_gap"], 1) if h.get("completeness_gap") is not None else None,
            "pending": _tensor(h["pending"], 1) if h.get("pending") is not None else None,
        }
        n_layers = f["heads"].shape[0]
        per_layer = [f[k] for k in ("residual", "bias", "mlp", "gap") if f[k] is not None]
        per_pos = [f[k] for k in ("scores", "pending") if f[k] is not None]
        if f["heads"].shape[-1] != n or any(t.numel() != n for t in per_pos):
            raise SchemaError("corrupt ftlens trace: hop tensors do not match the number of tokens; re-create the file with ftlens")
        if any(t.numel() != n_layers for t in per_layer):
            raise SchemaError("corrupt ftlens trace: hop per-layer tensors have the wrong length; re-create the file with ftlens")
        out.append(f)
    return out


def _tolist(t: Tensor) -> Any:
    """Nested lists of Python floats, each the shortest decimal of its float32 value."""
    a = t.detach().to("cpu", torch.float32).numpy()
    if a.size == 0:
        return a.tolist()
    return np.vectorize(float, otypes=[object])(a.astype(str)).tolist()


def _tensor(data: Any, ndim: int) -> Tensor:
    if not isinstance(data, list):
        raise SchemaError(f"corrupt ftlens trace: expected a {ndim}-d array, got {type(data).__name__}; re-create the file with ftlens")
    t = torch.tensor(data, dtype=torch.float32)
    if t.ndim != ndim and not (t.numel() == 0 and ndim >= 1):
        raise SchemaError(f"corrupt ftlens trace: expected a {ndim}-d array, got {t.ndim}-d; re-create the file with ftlens")
    if not bool(torch.isfinite(t).all()):
        raise SchemaError("corrupt ftlens trace: non-finite numbers in an array; re-create the file with ftlens")
    return t


def _list(x: Any) -> list:
    if not isinstance(x, list):
        raise TypeError(f"expected a list, got {type(x).__name__}")
    return x


def _dict(x: Any) -> dict:
    if not isinstance(x, dict):
        raise TypeError(f"expected an object, got {type(x).__name__}")
    return x


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, got {type(x).__name__}")
    return x


def _int(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"expected an integer, got {x!r:.40}")
    return x


def _float(x: Any) -> float:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise TypeError(f"expected a number, got {x!r:.40}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError("non-finite number")
    return v


def _pair(x: Any) -> tuple[int, int]:
    a, b = _list(x)
    return _int(a), _int(b)


def _check_consistent(tr: Any) -> None:
    """Shapes and ranges agree, so every Trace method works on a loaded trace."""
    n = len(tr.tokens)

    def bad(what: str) -> SchemaError:
        return SchemaError(f"corrupt ftlens trace: {what}; re-create the file with ftlens")

    if not tr.hops:
        raise bad("no hops")
    if len(tr.roles) != n or len(tr.ids) != n or tr.scores.numel() != n:
        raise bad("tokens, roles, ids and scores differ in length")
    if any(r not in ROLES for r in tr.roles):
        raise bad(f"unknown role (expected one of {', '.join(ROLES)})")
    if not (0 <= tr.output[0] < tr.output[1] <= n):
        raise bad("output span out of range")
    if tr.reasoning is not None and not (0 <= tr.reasoning[0] < tr.reasoning[1] <= tr.output[0]):
        raise bad("reasoning span out of range")
    shape = tr.hops[0].heads.shape
    for h in tr.hops:
        if h.heads.ndim != 3 or h.heads.shape != shape or shape[-1] != n or min(shape) == 0:
            raise bad("hop head tensors do not match the number of tokens")
        per_layer = (h.residual, h.bias, h.mlp) + ((h.gap,) if h.gap is not None else ())
        if h.scores.numel() != n or any(x.numel() != shape[0] for x in per_layer):
            raise bad("hop score or per-layer tensors have the wrong length")
    if tr.row_scores is not None and (tr.row_scores.ndim != 2 or tr.row_scores.shape[1] != n):
        raise bad("row_scores do not match the number of tokens")
    _check_meaning(tr, bad)


#: Slack for sums read back from float32 JSON (scores are float32; a trace sums ~1e4 of them).
_MASS_TOL = 1e-3


def _check_meaning(tr: Any, bad: Any) -> None:
    """What a hand-edited file can break while shapes stay right (method §10 bookkeeping)."""
    if tr.method not in METHODS:
        raise bad(f"unknown method {tr.method!r} (expected one of {', '.join(METHODS)})")
    n = len(tr.tokens)
    tensors = [tr.scores] + [t for h in tr.hops for t in (h.scores, h.heads, h.residual, h.bias, h.mlp)]
    if any(float(t.min()) < 0 for t in tensors if t.numel()):
        raise bad("negative scores or shares (every IFR share is >= 0)")
    if not (0 <= tr.output_mass <= 1 + _MASS_TOL and 0 <= tr.unresolved <= 1 + _MASS_TOL):
        raise bad("output_mass and unresolved must lie in [0, 1]")
    for h in tr.hops:
        layer_sum = h.heads.sum(dim=(1, 2)) + h.residual + h.bias
        if float((layer_sum - 1).abs().max()) > _MASS_TOL:
            raise bad("a layer's head, residual and bias shares do not sum to 1")
    out = set(range(*tr.output))
    rea = set(range(*tr.reasoning)) if tr.reasoning is not None else set()
    for pos, role in enumerate(tr.roles):
        if (pos in out) != (role == "output") or (pos in rea) != (role == "reasoning"):
            raise bad(f"role {role!r} at position {pos} contradicts the output/reasoning spans")
        if role in ("prompt", "template") and pos >= (tr.reasoning or tr.output)[0]:
            raise bad(f"a {role} token at position {pos} lies after the target starts")
    if tr.method == "flashtrace":
        total = float(tr.scores.sum()) + tr.output_mass + tr.unresolved
        if abs(total - 1) > _MASS_TOL:
            raise bad(f"mass is not conserved (inputs + output + unresolved = {total:.4f}, not 1)")
        ran = tr.params.get("hops_run", tr.params.get("hops"))
        if isinstance(ran, int) and len(tr.hops) - 1 != ran:
            raise bad(f"{len(tr.hops) - 1} hops stored but the parameters say {ran}")
    elif len(tr.hops) != 1:
        raise bad(f"method {tr.method!r} stores one hop, not {len(tr.hops)}")
    if n and tr.ids and len(tr.ids) != n:
        raise bad("ids and tokens differ in length")
