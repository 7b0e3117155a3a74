"""Reading the residual stream out: the target span's ids, the final norm, the unembedding, and one
forward pass that keeps named activations.  What the logit lens (:mod:`ftlens.residual`) and
direct logit attribution (:mod:`ftlens.dla`) share.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .bridge import device_of, hf_config, temporary_hooks
from .errors import SpanError, TraceError

__all__ = ["ids_and_span", "final_norm", "final_softcap", "unembed", "run_hooks"]


def ids_and_span(trace: Any, ids: Sequence[int] | Tensor | None, span: tuple[int, int] | None):
    """The token ids and the target span ``(a, b)``: the trace's (its ``ids`` and ``output``)
    unless given; ``1 <= a < b <= len(ids)`` (the logit predicting token ``t`` is read at ``t - 1``)."""
    if trace is not None:
        ids = trace.ids if ids is None else ids
        span = trace.output if span is None else span
    if ids is None or span is None:
        raise SpanError("pass a Trace, or ids= and span=(a, b)")
    ids_t = torch.as_tensor(list(ids) if not isinstance(ids, Tensor) else ids, dtype=torch.long).flatten()
    a, b = int(span[0]), int(span[1])
    if not (1 <= a < b <= ids_t.numel()):
        raise SpanError(f"target span {(a, b)} must satisfy 1 <= a < b <= {ids_t.numel()}")
    return ids_t, (a, b)


def final_norm(model: Any):
    """``(gamma, beta, eps, centre)`` of the final norm (RMSNorm or LayerNorm)."""
    hf = getattr(model.ln_final, "original_component", model.ln_final)
    gamma = getattr(hf, "weight", None)
    beta = getattr(hf, "bias", None)
    eps = getattr(hf, "variance_epsilon", None) or getattr(hf, "eps", None) or 1e-5
    centre = isinstance(hf, torch.nn.LayerNorm)
    d = int(model.cfg.d_model)
    gamma = torch.ones(d) if gamma is None else gamma.detach().float()
    beta = None if beta is None else beta.detach().float()
    if not centre:  # RMS norm: measure g from the module itself (Gemma's 1 + w, others' w)
        from .families import post_norm_gain

        gamma = post_norm_gain(hf, d)[0].float().cpu()
    return gamma, beta, float(eps), centre


def unembed(model: Any):
    """``(W_U [d_model, vocab], b_U or None)`` of the bridge's unembedding, float32."""
    w_u = model.unembed.W_U.detach().float()  # [d_model, vocab]
    b_u = getattr(model.unembed, "b_U", None)
    return w_u, (None if b_u is None else b_u.detach().float())


def run_hooks(model: Any, ids: Tensor, names: list[str]) -> tuple[dict[str, Tensor], Tensor]:
    """One forward pass keeping the named activations (batch 0); returns (acts, logits)."""
    acts: dict[str, Tensor] = {}

    def keep(name: str):
        def fn(x: Tensor, hook: Any) -> None:
            acts[name] = x[0].detach().float()

        return fn

    hooks = [(n, keep(n)) for n in names]
    with temporary_hooks(model, hooks), torch.no_grad():
        logits = model(ids[None].to(device_of(model)))
    missing = [n for n in names if n not in acts]
    if missing:
        raise TraceError(f"hooks did not fire: {missing[:3]}; is this a supported decoder model?")
    return acts, logits[0].detach().float()


def final_softcap(model: Any) -> float | None:
    """The final logit soft-cap ``c`` (``logits = c * tanh(raw / c)``; Gemma 2), or ``None``."""
    cap = getattr(hf_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None
