"""The :class:`Trace` result: tokens, roles, spans and attribution tensors.

Axes: ``pos`` is every position of the formatted prompt + target, ``layer`` and
``head`` index the model's attention heads.  A Trace knows nothing about models
or hooks; it answers questions (``top``, ``top_heads``, ``hop``, ``head_shares``)
and saves/loads itself as versioned JSON (exact float32 round trip).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from . import schema
from .errors import TraceError
from .records import ComponentShares, HeadScore, HopRecord, SegmentScore, TokenScore, unravel_head



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

    # ------------------------------------------------------------------ questions
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

    @property
    def template_label(self) -> str:
        """What role ``template`` holds here: ``"chat template"`` (markers the chat template added)
        or, for a prompt fed as raw text, ``"special tokens (BOS)"`` (what the tokenizer added)."""
        return "chat template" if self.params.get("chat_formatted", True) else "special tokens (BOS)"

    def span_text(self, which: str = "output") -> str:
        """The text of the ``"output"`` or ``"reasoning"`` span (``""`` when there is no reasoning)."""
        if which not in ("output", "reasoning"):
            raise TraceError(f"which must be 'output' or 'reasoning', got {which!r}")
        span = self.output if which == "output" else self.reasoning
        return "" if span is None else "".join(self.tokens[span[0] : span[1]])

    def generation_note(self) -> str | None:
        """How a generated target ended (``None`` for a given target)."""
        if not self.params.get("generated"):
            return None
        why = {"eos": "it stopped on the end-of-sequence token (not traced)",
               "line": "it was cut at its first line break (stop_at='line'"
                       + ("; 'auto' does this when the prompt is raw text)" if self.params.get("stop_at") == "auto" else ")"),
               "length": "max_new_tokens ran out: the reply may be cut off"}
        on = self.params.get("stopped_on") or ("eos" if self.params.get("stopped_on_eos") else "length")
        return f"generation: {why.get(on, on)}"

    def top_template(self, k: int = 3) -> list[TokenScore]:
        """The ``k`` chat-template input tokens with the most final mass (absent from ``top()``)."""
        return [t for t in self.top(len(self.tokens), where="input") if t.role == "template"][: max(0, k)]

    @property
    def thinking_ratios(self) -> list[float]:
        """``|mu_k|`` per hop: mass still pending after hop ``k``, on reasoning tokens (with
        ``handoff="target"`` on every target token, the answer's own included)."""
        return [h.thinking_ratio for h in self.hops]

    def scores_after(self, k: int) -> Float[Tensor, " pos"]:
        """The scores after hop ``k``: ``sum_{j <= k} hop(j).scores`` (``F`` of a recursion stopped
        after ``k`` hops; for one-pass methods ``k = 0`` is ``scores``).  A recursion that stopped
        early (pending mass <= ``PENDING_TOL``) has its final scores for every later ``k``; a ``k``
        beyond the hops the trace was asked for is refused."""
        ran = len(self.hops) - 1
        asked = max(int(self.params.get("hops", ran) or 0), ran)
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= asked:
            stopped = f" (it ran {ran}: the pending mass vanished, later hops keep its scores)" if ran < asked else ""
            raise TraceError(f"hop {k!r} is out of range; this trace was asked for hops 0..{asked}{stopped}")
        out = torch.zeros_like(self.hops[0].scores)
        for h in self.hops[: k + 1]:
            out = out + h.scores
        return out

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
        return self.hop(hop).route_weights

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
        :func:`ftlens.tokens.display_tokens`): it is ranked as one entry at its first piece's
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

    def relayed_mass(self) -> Float[Tensor, "hop pos"]:
        """``mu_k[s]``: the answer's mass each reasoning position holds after hop ``k`` and hands
        to hop ``k + 1`` (method §10); zero outside the pending region.  Row 0 is what the
        explained span put on the reasoning; ``relayed_mass().sum(-1)`` is ``thinking_ratios``.
        Needs a trace that stored it (ftlens >= the release that added it)."""
        if any(h.pending is None for h in self.hops):
            raise TraceError("this trace file has no per-hop pending mass; re-create it with this ftlens")
        return torch.stack([h.pending.float() for h in self.hops])

    def aggregate(
        self, by: str = "sentence", where: str = "prompt", chars: list[tuple[int, int]] | None = None
    ) -> list[SegmentScore]:
        """Token scores summed over segments (mass is kept: the segment scores of ``where`` sum
        to the scores of its positions).

        ``by``: ``"token"``, ``"word"``, ``"sentence"`` or ``"line"`` (:mod:`ftlens.segments`);
        ``chars``: character spans ``[(c0, c1), ...]`` of the region's text instead (one run:
        ``where="prompt"`` with a single user turn, ``"reasoning"`` or ``"output"``).
        ``where``: ``"prompt"``, ``"input"`` (everything before the reasoning, template
        included), ``"reasoning"``, ``"output"``, ``"target"`` (reasoning to output end) or
        ``"all"``; segments never cross a change of role.
        """
        from .segments import char_segments, role_runs, split_run

        lo, hi = {
            "prompt": (0, self.inputs_end), "input": (0, self.inputs_end),
            "reasoning": self.reasoning or (self.output[0], self.output[0]), "output": self.output,
            "target": ((self.reasoning or self.output)[0], self.output[1]), "all": (0, len(self.tokens)),
        }.get(where, (None, None))  # fmt: skip
        if lo is None:
            raise TraceError(
                f"where must be 'prompt', 'input', 'reasoning', 'output', 'target' or 'all', got {where!r}"
            )
        keep = {"prompt"} if where == "prompt" else None
        runs = [(max(a, lo), min(b, hi), r) for a, b, r in role_runs(self.roles, keep) if a < hi and b > lo]
        if chars is not None:
            if len(runs) != 1:
                raise TraceError(f"chars= needs one run of {where!r} tokens, found {len(runs)}; pick a narrower where")
            segs = char_segments(self.tokens, *runs[0], chars)
        else:
            segs = [s for a, b, r in runs for s in split_run(self.tokens, a, b, r, by)]
        return [SegmentScore(s.start, s.end, s.role, s.text, float(self.scores[s.start : s.end].sum())) for s in segs]

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
        return [HeadScore(*unravel_head(i, self.n_heads), float(flat[i])) for i in order]

    def component_shares(self, hop: int = 0) -> ComponentShares:
        """Per layer, hop ``hop``'s totals: all heads (``head_share``), residual, bias, MLP."""
        h = self.hop(hop)
        return ComponentShares(head_share=h.head_share, residual=h.residual, bias=h.bias, mlp=h.mlp, hop=hop)

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
            + ("; the target's ',' '.' and blank rows are not traced" if self.params.get("stop_rows") == "skip" else "")
            + ("; hops re-trace every target token's mass, the answer's own included (handoff=target)"
               if self.params.get("handoff") == "target" else "")
        )
        lines.append(f"output: {_shown(self.span_text('output'))}")
        if self.reasoning is not None:
            lines.append(f"reasoning: {_shown(self.span_text('reasoning'))}")
        if self.generation_note() is not None:
            lines.append(self.generation_note())
        gaps = self.completeness
        if gaps is not None:
            worst = int(torch.argmax(gaps.amax(dim=0)))
            tol = self.params.get("completeness_tol")
            lines.append(
                f"completeness: max relative gap {float(gaps.max()):.1e} (layer {worst})"
                + (f", tolerance {tol:.0e}" if isinstance(tol, (int, float)) else "")
            )
        split = (f"user prompt {self.prompt_mass:.3f}, {self.template_label} {self.template_mass:.3f}, "
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
            kind = "template" if self.template_label == "chat template" else "special"
            lines.append(
                f"{kind} tokens holding mass (not ranked below; "
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :mod:`ftlens.schema`): float32 values written with the fewest
        digits that read back exactly."""
        return schema.encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        """Rebuild a Trace; :class:`~ftlens.errors.SchemaError` on an unknown schema or bad content."""
        return schema.decode(d, cls)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (``.gz``: gzip); an existing file is replaced only when complete."""
        return schema.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Read a trace written by :meth:`save`; :class:`~ftlens.errors.SchemaError` if it is not one."""
        return schema.load(path, cls)

    @classmethod
    def loads(cls, raw: bytes | str, source: str = "trace") -> "Trace":
        """Parse a saved trace from bytes/text (gzip detected by its magic bytes)."""
        return schema.loads(raw, cls, source)


def _shown(text: str, limit: int = 240) -> str:
    """``repr(text)``, or for a long text its first and last ``limit // 2`` characters and its length."""
    if len(text) <= limit:
        return repr(text)
    half = limit // 2
    return f"{text[:half]!r} ... {text[-half:]!r} ({len(text)} characters)"


def _run_length(tokens: list[str], i: int) -> int:
    """How many continuation pieces (``""``) directly precede position ``i``."""
    n = 0
    while i - 1 - n >= 0 and tokens[i - 1 - n] == "":
        n += 1
    return n
