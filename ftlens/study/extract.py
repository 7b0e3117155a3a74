"""Per-example extraction: from one trace, only what a head study needs (<= 50 KB per example).

For a trace ``tr`` with route-weighted head attribution ``R[l, h, s] =
tr.head_attribution_routed`` (per-layer shares times the layer's route weight, method §11.2;
the ranking of ``Trace.top_heads``) and the prompt positions ``P``, the example keeps, as flat
``[layer * n_heads + head]`` lists:

- ``heads["prompt"][l, h] = sum_{s in P} R[l, h, s]``;
- ``heads["evidence"]``: the same sum over the evidence tokens (records with evidence);
- ``heads["dla"]``: the head's direct logit attribution to the output span's summed target
  logits (:func:`ftlens.residual.direct_logit_attribution`), when ``dla=True``;
- ``segments[name]``: the sum over each prompt segment's tokens;

plus the top heads by ``heads["prompt"]``, the prompt tokens and their final scores, and, for
the ``rows`` top heads, ``R[l, h, P]`` (evidence, segments and prompt positions as index runs ``[[a, b), ...]``)
quantised to integers ``round(999 * v / max|v|)`` with
its scale (enough for a token heatmap), and the token ids (for the causal pass).
Values are stored as the shortest decimals of their float32 values (heads) or to 4
significant digits (scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .records import StudyRecord, prompt_regions

__all__ = ["extract", "runs", "unruns", "FORMAT"]

FORMAT = "ftlens-study-example"


def _f32(t: torch.Tensor) -> list[float]:
    """Shortest decimals that read back as the same float32 values."""
    return [float(np.format_float_scientific(x, unique=True)) for x in t.detach().float().flatten().numpy()]


def _sig4(t: torch.Tensor) -> list[float]:
    return [float(f"{x:.4g}") for x in t.detach().float().flatten().tolist()]


def runs(idx: list[int]) -> list[list[int]]:
    """Sorted indices as half-open runs ``[[a, b], ...]`` (:func:`unruns` inverts it)."""
    out: list[list[int]] = []
    for i in idx:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def unruns(r: list[list[int]]) -> list[int]:
    return [i for a, b in r for i in range(a, b)]


def extract(model: Any, tr: Any, rec: StudyRecord, *, chat_template: bool | None = None, top: int = 10,
            rows: int = 3, dla: bool = True) -> dict[str, Any]:
    """The stored result of one example (a JSON-ready dict; see the module docstring)."""
    pp = tr.prompt_positions
    L, H = tr.n_layers, tr.n_heads
    evidence, segments = prompt_regions(model.tokenizer, rec, pp, chat_template)
    routed = tr.head_attribution_routed[:, :, pp].float()  # [L, H, P]
    per_head = routed.sum(-1)
    heads: dict[str, list[float] | None] = {"prompt": _f32(per_head)}
    heads["evidence"] = _f32(routed[:, :, evidence].sum(-1)) if evidence is not None else None
    heads["dla"] = None
    if dla:
        from ..residual import direct_logit_attribution

        heads["dla"] = _f32(direct_logit_attribution(model, tr).heads)
    flat = per_head.flatten()
    order = torch.argsort(flat, descending=True)
    top_heads = [[int(i) // H, int(i) % H, heads["prompt"][int(i)]] for i in order[:top]]
    token_rows = []
    for i in order[:rows].tolist():
        v = routed[i // H, i % H]
        scale = float(v.abs().max())
        q = torch.round(999 * v / scale).to(torch.int64).tolist() if scale > 0 else [0] * len(pp)
        token_rows.append({"layer": i // H, "head": i % H, "scale": scale, "q": q})
    return {
        "format": FORMAT,
        "version": 1,
        "key": rec.key,
        "id": rec.id,
        "line": rec.line,
        "model": tr.model,
        "n_layers": L,
        "n_heads": H,
        "ids": [int(x) for x in tr.ids],
        "output": list(tr.output),
        "prompt_pos": runs(pp),
        "tokens": tr.prompt_tokens,
        "scores": _sig4(tr.prompt_scores),
        "prompt_mass": float(tr.prompt_mass),
        "evidence": None if evidence is None else runs(evidence),
        "evidence_mass": float(tr.prompt_scores[evidence].sum()) if evidence else (0.0 if evidence is not None else None),
        "segments": {name: runs(idx) for name, idx in segments.items()},
        "heads": heads,
        "segment_heads": {name: _f32(routed[:, :, idx].sum(-1)) for name, idx in segments.items()},
        "top_heads": top_heads,
        "rows": token_rows,
        "trace_s": float(tr.timings.get("total", 0.0)),
    }
