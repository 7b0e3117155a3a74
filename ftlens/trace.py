"""The :class:`Trace` result: tokens, roles, spans and attribution tensors.

Axes: ``pos`` is every position of the formatted prompt + target, ``layer`` and
``head`` index the model's attention heads.  A Trace knows nothing about models
or hooks; it answers questions (``top``, ``top_heads``, ``hop``, ``head_shares``)
and saves/loads itself as versioned JSON (exact float32 round trip).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import SchemaError, TraceError

#: Version of the JSON layout written by :meth:`Trace.save`; readers refuse newer ones.
SCHEMA_VERSION = 1
#: The ``format`` field of every saved trace.
FORMAT_NAME = "ftlens.trace"
#: Roles a position can have (same as :data:`ftlens.spans.ROLES`).
ROLES = ("template", "prompt", "reasoning", "output", "other")


@dataclass
class HopRecord:
    """One recursion hop (hop 0 is the output span itself).

    ``scores[pos]``: this hop's contribution to the final scores (``c_k * p_k`` on
    input positions); ``heads[layer, head, pos]``: the hop's normalised shares
    ``e_k``; ``residual``/``bias``/``mlp``: per-layer shares; ``weight = c_k``,
    ``norm = sum v_k``; ``thinking_ratio = |mu_k|``; ``gap[layer]``: the completeness
    guard's relative L1 gap of this hop's span at each layer (method §3; ``None`` in
    files written before ftlens recorded it).
    """

    weight: float
    norm: float
    thinking_ratio: float
    scores: Float[Tensor, " pos"]
    heads: Float[Tensor, "layer head pos"]
    residual: Float[Tensor, " layer"]
    bias: Float[Tensor, " layer"]
    mlp: Float[Tensor, " layer"]
    gap: Float[Tensor, " layer"] | None = None

    @property
    def head_share(self) -> Float[Tensor, " layer"]:
        """Per layer, the share of all heads and sources: ``sum_{h,s} e[l, h, s]``."""
        return self.heads.sum(dim=(1, 2))


@dataclass(frozen=True)
class TokenScore:
    pos: int
    token: str
    role: str
    score: float


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    score: float


@dataclass
class Trace:
    """Attribution of a target span to every position, per hop, layer and head."""

    model: str
    method: str
    params: dict[str, Any]
    ids: list[int]
    tokens: list[str]
    roles: list[str]
    output: tuple[int, int]
    reasoning: tuple[int, int] | None
    scores: Float[Tensor, " pos"]
    hops: list[HopRecord]
    output_mass: float = 0.0
    unresolved: float = 0.0
    row_scores: Float[Tensor, "row pos"] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    version: str = ""

    # ------------------------------------------------------------------ views
    @property
    def n_layers(self) -> int:
        return int(self.hops[0].heads.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.hops[0].heads.shape[1])

    @property
    def inputs_end(self) -> int:
        """Positions ``[0, inputs_end)`` are inputs: everything before the reasoning span."""
        return self.reasoning[0] if self.reasoning is not None else self.output[0]

    @property
    def prompt_positions(self) -> list[int]:
        """Positions of the user's prompt text (role ``prompt``)."""
        return [i for i, r in enumerate(self.roles) if r == "prompt"]

    @property
    def prompt_scores(self) -> Float[Tensor, " prompt"]:
        """Final scores restricted to user-prompt tokens, in order."""
        return self.scores[self.prompt_positions]

    @property
    def prompt_tokens(self) -> list[str]:
        return [self.tokens[i] for i in self.prompt_positions]

    def _input_mass(self, role: str) -> float:
        """``sum(scores[i])`` over input positions ``i < inputs_end`` whose role is ``role``."""
        keep = [i for i in range(self.inputs_end) if self.roles[i] == role]
        return float(self.scores[keep].double().sum()) if keep else 0.0

    @property
    def prompt_mass(self) -> float:
        """Final mass on the user's prompt text (role ``prompt``)."""
        return self._input_mass("prompt")

    @property
    def template_mass(self) -> float:
        """Final mass on chat-template tokens among the inputs (``<|im_start|>``, system prompt, ...)."""
        return self._input_mass("template")

    @property
    def other_mass(self) -> float:
        """Final mass on the remaining inputs (role ``other``: e.g. a ``<think>`` tag before the reasoning).

        ``prompt_mass + template_mass + other_mass = sum(scores[:inputs_end])``: the inputs mass
        of ``summary()`` (flashtrace puts no final mass after ``inputs_end``).
        """
        return self._input_mass("other")

    def top_template(self, k: int = 3) -> list[TokenScore]:
        """The ``k`` chat-template input tokens with the most final mass (absent from ``top()``)."""
        return [t for t in self.top(len(self.tokens), where="input") if t.role == "template"][: max(0, k)]

    @property
    def thinking_ratios(self) -> list[float]:
        """``|mu_k|`` per hop: mass still on reasoning tokens after hop ``k``."""
        return [h.thinking_ratio for h in self.hops]

    def hop(self, k: int) -> HopRecord:
        """Hop record ``k`` (0 = the output span; negative counts from the last)."""
        if not isinstance(k, int) or isinstance(k, bool) or not -len(self.hops) <= k < len(self.hops):
            raise TraceError(
                f"hop {k!r} is out of range; this trace has {len(self.hops)} hop records "
                f"(0..{len(self.hops) - 1})"
            )
        return self.hops[k]

    @property
    def head_attribution(self) -> Float[Tensor, "layer head pos"]:
        """Per (layer, head, source) attribution whose sum over layers and heads is ``scores``.

        flashtrace: ``sum_k c_k / sum(v_k) * e_k`` on input positions; ifr methods: ``e``.
        """
        return self._heads(routed=False)

    @property
    def head_attribution_routed(self) -> Float[Tensor, "layer head pos"]:
        """``head_attribution`` with each hop's layer ``l`` weighted by its route weight ``w_k[l]``.

        flashtrace: ``sum_k c_k / sum(v_k) * w_k[l] * e_k[l, h, s]`` on input positions; ifr
        methods: ``w[l] * e[l, h, s]`` (see :meth:`route_weights`).  Per-layer shares ``e``
        say how much of *that layer's* update a head wrote; the route weight says how much of
        the span's final residual stream that layer's attention output still is, so this view
        ranks heads by their share of what reaches the output.  It does not sum to ``scores``.
        """
        return self._heads(routed=True)

    def route_weights(self, hop: int = 0) -> Float[Tensor, " layer"]:
        """Route weight of each layer's attention output ``b[l]`` to the span's final residual.

        ``w[l] = (1 - mlp[l]) * prod_{l' > l} residual[l'] * (1 - mlp[l'])``: the product of
        proximity shares along the pure residual path from ``b[l]`` to the last block output
        (``1 - mlp[l]`` is the share of ``b[l]`` in ``c[l] = b[l] + m[l]``; ``residual[l']`` the
        share of ``a[l'] = c[l'-1]`` in ``b[l']``), i.e. the Information-Flow-Routes importance
        of that path, all in ``[0, 1]``.
        """
        h = self.hops[hop]
        keep = (1.0 - h.mlp.double()).clamp(0.0, 1.0)
        step = h.residual.double() * keep  # share of c[l'-1] in c[l'] along the residual path
        suffix = torch.cumprod(torch.flip(step, [0]), 0)  # suffix[j] = prod over the last j+1 layers
        after = torch.cat([torch.flip(suffix, [0])[1:], torch.ones(1, dtype=step.dtype)])  # prod over l' > l
        return (keep * after).float()

    def _heads(self, routed: bool) -> Float[Tensor, "layer head pos"]:
        def w(k: int) -> Tensor:
            return self.route_weights(k)[:, None, None] if routed else torch.ones(())

        if self.method != "flashtrace":
            return self.hops[0].heads * w(0)
        mask = torch.zeros(len(self.tokens))
        mask[: self.inputs_end] = 1.0
        out = torch.zeros_like(self.hops[0].heads)
        for k, h in enumerate(self.hops):
            if h.norm > 0:
                out += h.heads * mask * (h.weight / h.norm) * w(k)
        return out

    def head_shares(self, layer: int) -> Float[Tensor, "head pos"]:
        """``head_attribution[layer]``: one layer's heads over source positions."""
        return self.head_attribution[layer]

    def positions(self, where: str = "prompt") -> list[int]:
        """Positions named by ``where``: ``prompt`` (user text), ``input`` (before reasoning), ``all``."""
        if where == "prompt":
            return self.prompt_positions
        if where == "input":
            return list(range(self.inputs_end))
        if where == "all":
            return list(range(len(self.tokens)))
        raise TraceError(f"where must be 'prompt', 'input' or 'all', got {where!r}")

    def top(self, k: int = 10, where: str = "prompt") -> list[TokenScore]:
        """The ``k`` highest-scoring characters' tokens among ``where`` (prompt / input / all).

        A character split over several byte-level tokens is shown once, on its first piece
        (the others are continuations with an empty display string, see
        :func:`ftlens.spans.display_tokens`): it is ranked as one entry at its first piece's
        position, with the sum of its pieces' scores (mass is kept).
        """
        pos = self.positions(where)
        merged: dict[int, float] = {}
        first = None
        for i in pos:
            if self.tokens[i] == "" and first is not None and first == i - 1 - _run_length(self.tokens, i):
                merged[first] += float(self.scores[i])
                continue
            first = i
            merged[i] = float(self.scores[i])
        order = sorted(merged, key=lambda i: -merged[i])[: max(0, k)]
        return [TokenScore(i, self.tokens[i], self.roles[i], merged[i]) for i in order]

    def top_heads(self, k: int = 10, where: str = "prompt", weighting: str = "route") -> list[HeadScore]:
        """(layer, head) pairs ranked by the attribution they carry to ``where`` positions.

        ``weighting="route"`` (default): ``head_attribution_routed`` (per-layer shares times the
        layer's route weight); ``"share"``: ``head_attribution`` (per-layer shares, the additive
        decomposition of the scores).  The default is route because per-layer shares rank
        early-layer heads first whose ablation does not hurt the answer, while the route-ranked
        top 5 do (analyses/head_study.py: -1.3 vs +3.0 nats, zero-ablation, 40 held-out examples).
        """
        if weighting not in ("share", "route"):
            raise TraceError(f"weighting must be 'share' or 'route', got {weighting!r}")
        pos = self.positions(where)
        heads = self.head_attribution if weighting == "share" else self.head_attribution_routed
        per_head = heads[:, :, pos].sum(-1)
        flat = per_head.flatten()
        order = torch.argsort(flat, descending=True)[: max(0, k)]
        return [HeadScore(int(i) // self.n_heads, int(i) % self.n_heads, float(flat[i])) for i in order]

    def layer_shares(self, hop: int = 0) -> dict[str, Float[Tensor, " layer"]]:
        """Per layer: head, residual, bias and MLP shares of hop ``hop``."""
        h = self.hops[hop]
        return {"heads": h.head_share, "residual": h.residual, "bias": h.bias, "mlp": h.mlp}

    @property
    def completeness(self) -> Float[Tensor, "hop layer"] | None:
        """The completeness guard's relative gap per hop and layer (method §3), or ``None``
        for files written before it was recorded."""
        if any(h.gap is None for h in self.hops):
            return None
        return torch.stack([h.gap.float() for h in self.hops])

    def summary(self, k: int = 10) -> str:
        """A compact text table of the top prompt tokens and top heads."""
        lines = [f"ftlens {self.method} trace of {self.model}: {len(self.tokens)} positions"]
        lines.append(
            f"output tokens {self.output[0]}:{self.output[1]}"
            + (f", reasoning {self.reasoning[0]}:{self.reasoning[1]}" if self.reasoning else ", no reasoning")
            + ("; hop 0 explains reasoning + output" if self.params.get("explain") == "target" else "")
        )
        gaps = self.completeness
        if gaps is not None:
            worst = int(torch.argmax(gaps.amax(dim=0)))
            tol = self.params.get("completeness_tol")
            lines.append(
                f"completeness: max relative gap {float(gaps.max()):.1e} (layer {worst})"
                + (f", tolerance {tol:.0e}" if isinstance(tol, (int, float)) else "")
            )
        split = (f"user prompt {self.prompt_mass:.3f}, chat template {self.template_mass:.3f}, "
                 f"other {self.other_mass:.3f}")
        if self.method == "flashtrace":
            ratios = ", ".join(f"{r:.3f}" for r in self.thinking_ratios)
            lines.append(
                f"mass: inputs {float(self.scores.sum()):.3f} ({split}), output {self.output_mass:.3f}, "
                f"unresolved {self.unresolved:.3f}; thinking ratios [{ratios}]"
            )
        else:
            lines.append(f"mass on inputs: {split}")
        template = [t for t in self.top_template(3) if t.score > 0]
        if template:
            lines.append(
                "template tokens holding mass (not ranked below; "
                'tr.top(k, where="input") ranks every input): '
                + ", ".join(f"{t.token!r}@{t.pos} {t.score:.4f}" for t in template)
            )
        lines.append(f"{'rank':>4} {'pos':>5} {'score':>9}  token (user prompt)")
        for r, t in enumerate(self.top(k), 1):
            lines.append(f"{r:>4} {t.pos:>5} {t.score:>9.4f}  {t.token!r}")
        lines.append(f"{'rank':>4} {'layer':>5} {'head':>4} {'score':>9}  (heads by route-weighted share)")
        for r, h in enumerate(self.top_heads(k), 1):
            lines.append(f"{r:>4} {h.layer:>5} {h.head:>4} {h.score:>9.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Trace(model={self.model!r}, method={self.method!r}, positions={len(self.tokens)}, "
            f"output={self.output}, reasoning={self.reasoning}, hops={len(self.hops) - 1})"
        )

    # ------------------------------------------------------------------ files
    def to_html(self, path: str | os.PathLike) -> Path:
        """One standalone offline page of this trace (see :mod:`ftlens.render`)."""
        from .render import write_html

        return write_html(self, path)

    def to_dict(self) -> dict[str, Any]:
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
                }
                for h in self.hops
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
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
            hops = [
                HopRecord(
                    weight=_float(h["weight"]),
                    norm=_float(h["norm"]),
                    thinking_ratio=_float(h["thinking_ratio"]),
                    scores=_tensor(h["scores"], 1),
                    heads=_tensor(h["heads"], 3),
                    residual=_tensor(h["residual"], 1),
                    bias=_tensor(h["bias"], 1),
                    mlp=_tensor(h["mlp"], 1),
                    gap=_tensor(h["completeness_gap"], 1) if h.get("completeness_gap") is not None else None,
                )
                for h in _list(d["hops"])
            ]
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file in the same folder, then rename).

        A name ending in ``.gz`` is gzip-compressed (about 3x smaller).  An existing file
        at ``path`` is replaced only once the new one is complete.
        """
        try:
            text = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise SchemaError("the trace holds NaN or infinite numbers and cannot be saved as JSON") from None
        data = text.encode("utf-8")
        if str(path).endswith(".gz"):
            data = gzip.compress(data, compresslevel=6, mtime=0)
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
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
        return cls.loads(raw, source=str(p))

    @classmethod
    def loads(cls, raw: bytes | str, source: str = "trace") -> "Trace":
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
        return cls.from_dict(data)


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


def _run_length(tokens: list[str], i: int) -> int:
    """How many continuation pieces (``""``) directly precede position ``i``."""
    n = 0
    while i - 1 - n >= 0 and tokens[i - 1 - n] == "":
        n += 1
    return n


def _check_consistent(tr: "Trace") -> None:
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


def _check_meaning(tr: "Trace", bad) -> None:
    """What a hand-edited file can break while shapes stay right (method §10 bookkeeping)."""
    from .tracing import METHODS

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


