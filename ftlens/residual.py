"""Residual-stream analyses for the same target span as a trace.

All three answer "what does the residual stream say about the target span
``S = [a, b)``?"; the logit predicting token ``t`` is read at position ``t - 1``.

Logit lens (:func:`logit_lens`)
    For every layer input ``x[l]`` (``blocks.{l}.hook_in``, ``l = 0..L-1``) and the
    final block output ``x[L]`` (``blocks.{L-1}.hook_out``)::

        lens[l] = mean_{t in S} log_softmax(unembed(final_norm(x[l, t-1])))[id_t]

    ``lens[L]`` is the model's own mean log-probability of the span.

Direct logit attribution (:func:`direct_logit_attribution`, :mod:`ftlens.dla`)
    Each head's, MLP's and embedding's direct write to the span's summed target logits, the
    final-norm scale frozen; the parts sum to the logits exactly.

Component shares (:func:`component_shares`, :func:`compare_heads`)
    Per layer, the trace's shares of the span's residual update (heads / residual /
    bias, and the reported MLP share), and a comparison of where the heads that carry
    attribution mass (trace) also *write the answer* directly (DLA).

Every result is a small dataclass of tensors with named axes; its views are in
:mod:`ftlens.render` (``logit_lens_view``, ``dla_view``, ``component_shares_view``,
``comparison_view``), which the results never import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .bridge import act_name
from .dla import DirectLogitAttribution, DLACollector, direct_logit_attribution
from .errors import SpanError, TraceError
from .readout import final_norm, final_softcap, ids_and_span, run_hooks, unembed
from .records import ComponentShares, unravel_head

__all__ = [
    "LogitLens",
    "DirectLogitAttribution",
    "DLACollector",
    "ComponentShares",
    "HeadComparison",
    "logit_lens",
    "direct_logit_attribution",
    "component_shares",
    "compare_heads",
]


# ---------------------------------------------------------------------- logit lens
@dataclass
class LogitLens:
    """Per layer, the mean log-prob of the span's tokens decoded from the residual stream.

    ``logprob[layer]``: layer ``l < L`` is block ``l``'s input, ``l = L`` the final output;
    ``token_logprob[layer, tok]`` per span token; ``tokens`` the span's token strings.
    """

    logprob: Float[Tensor, " layer"]
    token_logprob: Float[Tensor, "layer tok"]
    tokens: list[str]
    span: tuple[int, int]

    @property
    def layer_labels(self) -> list[str]:
        n = self.logprob.numel() - 1
        return [f"L{l}" for l in range(n)] + ["final"]


def logit_lens(
    model: Any,
    trace: Any = None,
    *,
    ids: Sequence[int] | Tensor | None = None,
    span: tuple[int, int] | None = None,
) -> LogitLens:
    """Logit lens of the target span (``trace.output`` unless ``span`` is given)."""
    ids_t, (a, b) = ids_and_span(trace, ids, span)
    n_layers = int(model.cfg.n_layers)
    names = [act_name(l, "hook_in") for l in range(n_layers)] + [act_name(n_layers - 1, "hook_out")]
    acts, _ = run_hooks(model, ids_t, names)
    gamma, beta, eps, centre = final_norm(model)
    w_u, b_u = unembed(model)
    dev = w_u.device
    tgt = ids_t[a:b].to(dev)
    rows = slice(a - 1, b - 1)
    cap = final_softcap(model)
    out = []
    for name in names:
        x = acts[name][rows].to(dev)
        if centre:
            x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gamma.to(dev)
        if beta is not None:
            x = x + beta.to(dev)
        logits = x @ w_u + (0 if b_u is None else b_u)
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        out.append(logits.log_softmax(-1).gather(-1, tgt[:, None])[:, 0])
    tok_lp = torch.stack(out).cpu()
    toks = model.tokenizer.convert_ids_to_tokens(ids_t[a:b].tolist())
    toks = [model.tokenizer.convert_tokens_to_string([t]) for t in toks]
    return LogitLens(logprob=tok_lp.mean(-1), token_logprob=tok_lp, tokens=toks, span=(a, b))


# ---------------------------------------------------------------------- trace shares
def component_shares(trace: Any, hop: int = 0) -> ComponentShares:
    """The trace's per-layer component shares of hop ``hop`` (0: the output span):
    ``head_share + residual + bias = 1`` per layer, and the reported MLP share."""
    return trace.component_shares(hop)


@dataclass
class HeadComparison:
    """Trace attribution mass per head next to its direct logit attribution.

    ``trace_mass[layer, head]``: hop ``hop``'s route-weighted head mass
    ``w[l] * sum_s e[l, h, s]`` over every source ``s`` (``w = Trace.route_weights(hop)``): the
    weighting :meth:`Trace.top_heads` ranks by by default (README "Ranking heads"), i.e. how
    much of what reaches the span's output each head wrote; summed over every source because
    DLA counts a head's write whatever it read.  ``dla[layer, head]``;
    ``spearman``: rank correlation over all heads; ``overlap``: fraction of the top-k
    heads by trace mass that are also in the top-k by DLA; ``layer_attn_trace`` and
    ``layer_attn_dla``: per layer, the attention share in the trace vs
    ``|attn| / (|attn| + |mlp|)`` in the DLA.
    """

    trace_mass: Float[Tensor, "layer head"]
    dla: Float[Tensor, "layer head"]
    spearman: float
    overlap: float
    k: int
    layer_attn_trace: Float[Tensor, " layer"]
    layer_attn_dla: Float[Tensor, " layer"]

    def rows(self, k: int | None = None) -> list[tuple[int, int, float, float, int]]:
        """Top-``k`` heads by trace mass as ``(layer, head, mass, dla, dla_rank)``."""
        k = self.k if k is None else k
        flat_m, flat_d = self.trace_mass.flatten(), self.dla.flatten()
        dla_rank = torch.empty_like(flat_d, dtype=torch.long)
        dla_rank[torch.argsort(flat_d, descending=True)] = torch.arange(flat_d.numel())
        n_h = self.trace_mass.shape[1]
        order = torch.argsort(flat_m, descending=True)[:k]
        return [
            (*unravel_head(i, n_h), float(flat_m[i]), float(flat_d[i]), int(dla_rank[i]) + 1)
            for i in order
        ]


def _ranks(x: Tensor) -> Tensor:
    r = torch.empty_like(x)
    r[torch.argsort(x)] = torch.arange(x.numel(), dtype=x.dtype)
    return r


def compare_heads(trace: Any, dla: DirectLogitAttribution, k: int = 10, *, hop: int = 0) -> HeadComparison:
    """Which heads that carry attribution mass (trace) also write the answer (DLA).

    Heads are ranked by route-weighted mass (``HeadComparison.trace_mass``), the one head
    ranking of ftlens (``Trace.top_heads``' default).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise TraceError(f"k must be an integer >= 1 (how many top heads to compare), got {k!r}")
    if tuple(dla.span) != tuple(trace.output) and hop == 0:
        raise SpanError(f"DLA span {dla.span} differs from the trace's output span {trace.output}")
    mass = (trace.hops[hop].heads.sum(-1) * trace.route_weights(hop)[:, None]).float()
    if mass.shape != dla.heads.shape:
        raise TraceError(f"trace heads {tuple(mass.shape)} and DLA heads {tuple(dla.heads.shape)} differ")
    rm, rd = _ranks(mass.flatten()), _ranks(dla.heads.flatten())
    rm, rd = rm - rm.mean(), rd - rd.mean()
    spearman = float((rm * rd).sum() / (rm.norm() * rd.norm()).clamp_min(1e-12))
    k = min(k, mass.numel())
    top_m = set(torch.argsort(mass.flatten(), descending=True)[:k].tolist())
    top_d = set(torch.argsort(dla.heads.flatten(), descending=True)[:k].tolist())
    attn_abs, mlp_abs = dla.attn.abs(), dla.mlp.abs()
    shares = trace.component_shares(hop)
    return HeadComparison(
        trace_mass=mass,
        dla=dla.heads.clone(),
        spearman=spearman,
        overlap=len(top_m & top_d) / max(k, 1),
        k=k,
        layer_attn_trace=shares.head_share.float(),
        layer_attn_dla=attn_abs / (attn_abs + mlp_abs).clamp_min(1e-12),
    )
