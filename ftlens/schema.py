"""The trace file format: versioned JSON (exact float32 round trip), and its checks.

A file is refused with :class:`~ftlens.errors.SchemaError` when it is not an ftlens
trace, is of a newer schema, or makes no sense: shapes that disagree, an unknown method,
negative shares, mass not conserved, roles that contradict the spans (method §10).
The layout is documented in ``docs/cli.md`` (file format); what all result files share
(reading, writing, typed values) is :mod:`ftlens.jsonfile`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import jsonfile as jf
from .errors import SchemaError
from .jsonfile import as_dict, as_float, as_list, as_str, tolist
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
        "scores": tolist(self.scores),
        "output_mass": self.output_mass,
        "unresolved": self.unresolved,
        "row_scores": tolist(self.row_scores) if self.row_scores is not None else None,
        "timings": dict(self.timings),
        "hops": [
            {
                "weight": h.weight,
                "norm": h.norm,
                "thinking_ratio": h.thinking_ratio,
                "scores": tolist(h.scores),
                "heads": tolist(h.heads),
                "residual": tolist(h.residual),
                "bias": tolist(h.bias),
                "mlp": tolist(h.mlp),
                "completeness_gap": tolist(h.gap) if h.gap is not None else None,
                "pending": tolist(h.pending) if h.pending is not None else None,
            }
            for h in self.hops
        ],
    }


def decode(d: Any, cls: type) -> Any:
    """Rebuild a Trace; raises :class:`SchemaError` on an unknown schema or bad content."""
    jf.check_header(d, FORMAT_NAME, SCHEMA_VERSION, default_format=FORMAT_NAME)
    with jf.fields_of("trace"):
        hops = [HopRecord(**fields) for fields in _hop_fields(as_list(d["hops"]), len(as_list(d["tokens"])))]
        trace = cls(
            **jf.sequence_fields(d),
            method=as_str(d["method"]),
            params=dict(as_dict(d["params"])),
            scores=_array(d["scores"], 1),
            hops=hops,
            output_mass=as_float(d["output_mass"]),
            unresolved=as_float(d["unresolved"]),
            row_scores=_array(d["row_scores"], 2) if d.get("row_scores") is not None else None,
            timings={as_str(k): as_float(v) for k, v in as_dict(d.get("timings", {})).items()},
            version=as_str(d.get("ftlens_version", "")),
        )
    _check_consistent(trace)
    return trace


def save(self: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (temp file in the same folder, then rename).

    A name ending in ``.gz`` is gzip-compressed (about 3x smaller).  An existing file
    at ``path`` is replaced only once the new one is complete.
    """
    return jf.write(encode(self), path, "trace")


def load(path: str | os.PathLike, cls: type) -> Any:
    """Read a trace written by :meth:`save`; :class:`SchemaError` if it is not one."""
    return loads(jf.read(path, "trace"), cls, source=str(Path(path)))


def loads(raw: bytes | str, cls: type, source: str = "trace") -> Any:
    """Parse a saved trace from bytes/text (gzip detected by its magic bytes)."""
    return decode(jf.parse(raw, source, "trace"), cls)


def _hop_fields(hops: list, n: int) -> list[dict[str, Any]]:
    """Each hop's fields as tensors, their shapes checked before a record is built."""
    out = []
    for h in hops:
        f = {
            "weight": as_float(h["weight"]),
            "norm": as_float(h["norm"]),
            "thinking_ratio": as_float(h["thinking_ratio"]),
            "scores": _array(h["scores"], 1),
            "heads": _array(h["heads"], 3),
            "residual": _array(h["residual"], 1),
            "bias": _array(h["bias"], 1),
            "mlp": _array(h["mlp"], 1),
            "gap": _array(h["completeness_gap"], 1) if h.get("completeness_gap") is not None else None,
            "pending": _array(h["pending"], 1) if h.get("pending") is not None else None,
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


def _array(data: Any, ndim: int) -> Any:
    return jf.tensor(data, ndim, "trace")


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
