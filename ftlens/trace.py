"""The :class:`Trace` result: tokens, roles, spans and attribution tensors.

Axes: ``pos`` is every position of the formatted prompt + target, ``layer`` and
``head`` index the model's attention heads.  A Trace knows nothing about models
or hooks; it answers questions (``top``, ``top_heads``, ``hop``, ``head_shares``)
and saves/loads itself as versioned JSON (exact float32 round trip).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import SchemaError

SCHEMA_VERSION = 1


@dataclass
class HopRecord:
    """One recursion hop (hop 0 is the output span itself).

    ``scores[pos]``: this hop's contribution to the final scores (``c_k * p_k`` on
    input positions); ``heads[layer, head, pos]``: the hop's normalised shares
    ``e_k``; ``residual``/``bias``/``mlp``: per-layer shares; ``weight = c_k``,
    ``norm = sum v_k``; ``thinking_ratio = |mu_k|``.
    """

    weight: float
    norm: float
    thinking_ratio: float
    scores: Float[Tensor, " pos"]
    heads: Float[Tensor, "layer head pos"]
    residual: Float[Tensor, " layer"]
    bias: Float[Tensor, " layer"]
    mlp: Float[Tensor, " layer"]

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

    @property
    def thinking_ratios(self) -> list[float]:
        """``|mu_k|`` per hop: mass still on reasoning tokens after hop ``k``."""
        return [h.thinking_ratio for h in self.hops]

    def hop(self, k: int) -> HopRecord:
        return self.hops[k]

    @property
    def head_attribution(self) -> Float[Tensor, "layer head pos"]:
        """Per (layer, head, source) attribution whose sum over layers and heads is ``scores``.

        flashtrace: ``sum_k c_k / sum(v_k) * e_k`` on input positions; ifr methods: ``e``.
        """
        if self.method != "flashtrace":
            return self.hops[0].heads
        mask = torch.zeros(len(self.tokens))
        mask[: self.inputs_end] = 1.0
        out = torch.zeros_like(self.hops[0].heads)
        for h in self.hops:
            if h.norm > 0:
                out += h.heads * mask * (h.weight / h.norm)
        return out

    def head_shares(self, layer: int) -> Float[Tensor, "head pos"]:
        """``head_attribution[layer]``: one layer's heads over source positions."""
        return self.head_attribution[layer]

    def _where(self, where: str) -> list[int]:
        if where == "prompt":
            return self.prompt_positions
        if where == "input":
            return list(range(self.inputs_end))
        if where == "all":
            return list(range(len(self.tokens)))
        raise ValueError("where must be 'prompt', 'input' or 'all'")

    def top(self, k: int = 10, where: str = "prompt") -> list[TokenScore]:
        """The ``k`` highest-scoring positions among ``where`` (prompt / input / all)."""
        pos = self._where(where)
        order = sorted(pos, key=lambda i: -float(self.scores[i]))[: max(0, k)]
        return [TokenScore(i, self.tokens[i], self.roles[i], float(self.scores[i])) for i in order]

    def top_heads(self, k: int = 10, where: str = "prompt") -> list[HeadScore]:
        """(layer, head) pairs ranked by the attribution they carry to ``where`` positions."""
        pos = self._where(where)
        per_head = self.head_attribution[:, :, pos].sum(-1)
        flat = per_head.flatten()
        order = torch.argsort(flat, descending=True)[: max(0, k)]
        return [HeadScore(int(i) // self.n_heads, int(i) % self.n_heads, float(flat[i])) for i in order]

    def layer_shares(self, hop: int = 0) -> dict[str, Float[Tensor, " layer"]]:
        """Per layer: head, residual, bias and MLP shares of hop ``hop``."""
        h = self.hops[hop]
        return {"heads": h.head_share, "residual": h.residual, "bias": h.bias, "mlp": h.mlp}

    def summary(self, k: int = 10) -> str:
        """A compact text table of the top prompt tokens and top heads."""
        lines = [f"ftlens {self.method} trace of {self.model}: {len(self.tokens)} positions"]
        lines.append(
            f"output tokens {self.output[0]}:{self.output[1]}"
            + (f", reasoning {self.reasoning[0]}:{self.reasoning[1]}" if self.reasoning else ", no reasoning")
        )
        if self.method == "flashtrace":
            ratios = ", ".join(f"{r:.3f}" for r in self.thinking_ratios)
            lines.append(
                f"mass: inputs {float(self.scores.sum()):.3f}, output {self.output_mass:.3f}, "
                f"unresolved {self.unresolved:.3f}; thinking ratios [{ratios}]"
            )
        lines.append(f"{'rank':>4} {'pos':>5} {'score':>9}  token")
        for r, t in enumerate(self.top(k), 1):
            lines.append(f"{r:>4} {t.pos:>5} {t.score:>9.4f}  {t.token!r}")
        lines.append(f"{'rank':>4} {'layer':>5} {'head':>4} {'score':>9}")
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
        """A JSON-ready dict (tensors as nested lists of float32 values)."""
        return {
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
                }
                for h in self.hops
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        """Rebuild a Trace; raises :class:`SchemaError` on an unknown schema or bad content."""
        if not isinstance(d, dict) or "schema_version" not in d:
            raise SchemaError("not an ftlens trace: no schema_version field")
        ver = d["schema_version"]
        if not isinstance(ver, int) or ver < 1:
            raise SchemaError(f"bad schema_version {ver!r}; expected an integer >= 1")
        if ver > SCHEMA_VERSION:
            raise SchemaError(
                f"trace schema_version {ver} is newer than this ftlens understands ({SCHEMA_VERSION}); "
                "upgrade ftlens (pip install -U ftlens)"
            )
        try:
            hops = [
                HopRecord(
                    weight=float(h["weight"]),
                    norm=float(h["norm"]),
                    thinking_ratio=float(h["thinking_ratio"]),
                    scores=_tensor(h["scores"], 1),
                    heads=_tensor(h["heads"], 3),
                    residual=_tensor(h["residual"], 1),
                    bias=_tensor(h["bias"], 1),
                    mlp=_tensor(h["mlp"], 1),
                )
                for h in d["hops"]
            ]
            n = len(d["tokens"])
            trace = cls(
                model=str(d["model"]),
                method=str(d["method"]),
                params=dict(d["params"]),
                ids=[int(i) for i in d["ids"]],
                tokens=[str(t) for t in d["tokens"]],
                roles=[str(r) for r in d["roles"]],
                output=_pair(d["output"]),
                reasoning=_pair(d["reasoning"]) if d["reasoning"] is not None else None,
                scores=_tensor(d["scores"], 1),
                hops=hops,
                output_mass=float(d["output_mass"]),
                unresolved=float(d["unresolved"]),
                row_scores=_tensor(d["row_scores"], 2) if d.get("row_scores") is not None else None,
                timings={str(k): float(v) for k, v in dict(d.get("timings", {})).items()},
                version=str(d.get("ftlens_version", "")),
            )
        except SchemaError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise SchemaError(f"corrupt ftlens trace: {type(exc).__name__}: {exc}") from None
        if not hops or len(trace.roles) != n or len(trace.ids) != n or trace.scores.numel() != n:
            raise SchemaError("corrupt ftlens trace: tokens, roles, ids and scores differ in length")
        if any(h.heads.ndim != 3 or h.heads.shape[-1] != n or h.scores.numel() != n for h in hops):
            raise SchemaError("corrupt ftlens trace: hop tensors do not match the number of tokens")
        if not (0 <= trace.output[0] < trace.output[1] <= n):
            raise SchemaError("corrupt ftlens trace: output span out of range")
        return trace

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file in the same folder, then rename)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Read a trace written by :meth:`save`; :class:`SchemaError` if it is not one."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(f"trace file {p} does not exist") from None
        except UnicodeDecodeError:
            raise SchemaError(f"trace file {p} is not UTF-8 text; is it an ftlens JSON trace?") from None
        except OSError as exc:
            raise SchemaError(f"cannot read trace file {p}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SchemaError(f"trace file {p} is not valid JSON (truncated or corrupt?): {exc}") from None
        return cls.from_dict(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file and ``os.replace``: never a half file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def _tolist(t: Tensor) -> Any:
    return t.detach().to("cpu", torch.float32).tolist()


def _tensor(data: Iterable, ndim: int) -> Tensor:
    t = torch.tensor(data, dtype=torch.float32)
    if t.ndim != ndim and not (t.numel() == 0 and ndim >= 1):
        raise SchemaError(f"corrupt ftlens trace: expected a {ndim}-d array, got {t.ndim}-d")
    if not bool(torch.isfinite(t).all()):
        raise SchemaError("corrupt ftlens trace: non-finite numbers in an array")
    return t


def _pair(x: Any) -> tuple[int, int]:
    a, b = x
    return int(a), int(b)


