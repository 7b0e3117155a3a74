"""Per-example extraction: from one trace, only what a head study needs (<= 50 KB per example).

For a trace ``tr`` with route-weighted head attribution ``R[l, h, s] =
tr.head_attribution_routed`` (per-layer shares times the layer's route weight, method §11.2;
the ranking of ``Trace.top_heads``) and the prompt positions ``P``, the example keeps, as flat
``[layer * n_heads + head]`` lists:

- ``heads["prompt"][l, h] = sum_{s in P} R[l, h, s]``;
- ``heads["evidence"]``: the same sum over the evidence tokens (records with evidence);
- ``heads["dla"]``: the head's direct logit attribution to the output span's summed target
  logits (:func:`ftlens.dla.direct_logit_attribution`), when ``dla=True``;
- ``segments[name]``: the sum over each prompt segment's tokens;

plus the top heads by ``heads["prompt"]``, the prompt tokens and their final scores, for the
``rows`` top heads ``R[l, h, P]`` quantised to integers ``round(999 * v / max|v|)`` with its
scale (enough for a token heatmap), and the token ids (for the causal pass).  Evidence,
segments and prompt positions are index runs ``[[a, b), ...]``.  Arrays are packed
(:func:`pack`) as ``"<code>:<base64>"`` little-endian bytes: heads as exact float32, scores as
float16, token rows as int16, ids as int32; :func:`unpack` reads them (plain lists pass
through).
"""

from __future__ import annotations

from typing import Any

import base64

import numpy as np
import torch

from .records import StudyRecord, prompt_regions

__all__ = ["extract", "runs", "unruns", "pack", "unpack", "FORMAT"]

FORMAT = "ftlens-study-example"


_CODES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "i32": np.dtype("<i4"), "i16": np.dtype("<i2")}


def pack(values: Any, code: str) -> str:
    """``"<code>:<base64>"``: the values as little-endian ``code`` (f32, f16, i32, i16) bytes."""
    arr = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values)
    return f"{code}:" + base64.b64encode(arr.astype(_CODES[code]).ravel().tobytes()).decode("ascii")


def unpack(x: Any) -> Any:
    """Inverse of :func:`pack` as a list of Python floats/ints (a list or None passes through)."""
    if not isinstance(x, str):
        return x
    code, _, data = x.partition(":")
    arr = np.frombuffer(base64.b64decode(data), dtype=_CODES[code])
    return arr.astype(np.float64 if code[0] == "f" else np.int64).tolist()


def _f32(t: torch.Tensor) -> str:
    return pack(t.detach().float().flatten(), "f32")


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
            rows: int = 3, dla: bool = True, dla_result: Any = None) -> dict[str, Any]:
    """The stored result of one example (a JSON-ready dict; see the module docstring).

    ``dla_result``: the trace's DLA already computed in its own forward pass
    (:class:`ftlens.dla.DLACollector`); without it, ``dla=True`` runs one more pass."""
    pp = tr.prompt_positions
    L, H = tr.n_layers, tr.n_heads
    evidence, segments = prompt_regions(model.tokenizer, rec, pp, chat_template)
    routed = tr.head_attribution_routed[:, :, pp].float()  # [L, H, P]
    per_head = routed.sum(-1)
    heads: dict[str, str | None] = {"prompt": _f32(per_head)}
    heads["evidence"] = _f32(routed[:, :, evidence].sum(-1)) if evidence is not None else None
    heads["dla"] = None
    if dla and dla_result is None:
        from ..dla import direct_logit_attribution

        dla_result = direct_logit_attribution(model, tr)
    if dla:
        heads["dla"] = _f32(dla_result.heads)
    flat = per_head.flatten()
    order = torch.argsort(flat, descending=True)
    top_heads = [[int(i) // H, int(i) % H, float(flat[int(i)])] for i in order[:top]]
    token_rows = []
    for i in order[:rows].tolist():
        v = routed[i // H, i % H]
        scale = float(v.abs().max())
        q = torch.round(999 * v / scale) if scale > 0 else torch.zeros(len(pp))
        token_rows.append({"layer": i // H, "head": i % H, "scale": scale, "q": pack(q, "i16")})
    return {
        "format": FORMAT,
        "version": 1,
        "key": rec.key,
        "id": rec.id,
        "line": rec.line,
        "model": tr.model,
        "n_layers": L,
        "n_heads": H,
        "ids": pack(list(tr.ids), "i32"),
        "output": list(tr.output),
        "prompt_pos": runs(pp),
        "tokens": tr.prompt_tokens,
        "scores": pack(tr.prompt_scores.float(), "f16"),
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
