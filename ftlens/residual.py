"""Residual-stream analyses for the same target span as a trace.

All three answer "what does the residual stream say about the target span
``S = [a, b)``?"; the logit predicting token ``t`` is read at position ``t - 1``.

Logit lens (:func:`logit_lens`)
    For every layer input ``x[l]`` (``blocks.{l}.hook_in``, ``l = 0..L-1``) and the
    final block output ``x[L]`` (``blocks.{L-1}.hook_out``)::

        lens[l] = mean_{t in S} log_softmax(unembed(final_norm(x[l, t-1])))[id_t]

    ``lens[L]`` is the model's own mean log-probability of the span.

Direct logit attribution (:func:`direct_logit_attribution`)
    The final residual is a sum of writes: ``x[L] = embed + sum_l (sum_h z[l,h] W_O[l,h]
    + b_O[l] + mlp[l])``, with ``z = blocks.{l}.attn.hook_z`` (``= attn.o.hook_in``,
    ``[batch, pos, head, d_head]``).  With the final-norm scale *frozen at its actual
    value* ``s_t = 1 / rms(x[L, t-1])`` (the usual DLA convention: the norm is linear
    once its scale is fixed; for a LayerNorm the centring is applied to every part and
    its bias becomes one more part) each write ``c`` contributes

        DLA(c) = sum_{t in S} s_t * (gamma * c_{t-1}) . W_U[:, id_t]

    and ``embed + heads + attn biases + MLPs + unembed bias (+ norm bias)`` equals
    the span's summed target logits exactly (up to float error; ``DLA.gap`` reports it).
    Tied embeddings (SmolLM2) need no special case: ``W_U`` is read from the bridge's
    unembedding, and the embedding's direct path is its own part.

Component shares (:func:`component_shares`, :func:`compare_heads`)
    Per layer, the trace's shares of the span's residual update (heads / residual /
    bias, and the reported MLP share), and a comparison of where the heads that carry
    attribution mass (trace) also *write the answer* directly (DLA).

Every result is a small dataclass of tensors with named axes and a ``view()``
that returns an :class:`ftlens.render.View` (renders in notebooks, offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from .bridge import act_name, device_of, hf_config, temporary_hooks
from .errors import SpanError, TraceError
from . import records
from .records import unravel_head

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


# ---------------------------------------------------------------------- inputs
def _ids_and_span(trace: Any, ids: Sequence[int] | Tensor | None, span: tuple[int, int] | None):
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


def _final_norm(model: Any):
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


def _unembed(model: Any):
    w_u = model.unembed.W_U.detach().float()  # [d_model, vocab]
    b_u = getattr(model.unembed, "b_U", None)
    return w_u, (None if b_u is None else b_u.detach().float())


def _run(model: Any, ids: Tensor, names: list[str]) -> tuple[dict[str, Tensor], Tensor]:
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

    def view(self):
        from .render import logit_lens_view

        return logit_lens_view(self)


def logit_lens(
    model: Any,
    trace: Any = None,
    *,
    ids: Sequence[int] | Tensor | None = None,
    span: tuple[int, int] | None = None,
) -> LogitLens:
    """Logit lens of the target span (``trace.output`` unless ``span`` is given)."""
    ids_t, (a, b) = _ids_and_span(trace, ids, span)
    n_layers = int(model.cfg.n_layers)
    names = [act_name(l, "hook_in") for l in range(n_layers)] + [act_name(n_layers - 1, "hook_out")]
    acts, _ = _run(model, ids_t, names)
    gamma, beta, eps, centre = _final_norm(model)
    w_u, b_u = _unembed(model)
    dev = w_u.device
    tgt = ids_t[a:b].to(dev)
    rows = slice(a - 1, b - 1)
    cap = _final_softcap(model)
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


# ---------------------------------------------------------------------- DLA
@dataclass
class DirectLogitAttribution:
    """Direct contributions to the span's summed target logits (final-norm scale frozen).

    ``heads[layer, head]``, ``mlp[layer]``, ``attn_bias[layer]`` (zeros without ``b_O``),
    ``embed``, ``unembed_bias`` (0 without ``b_U``), ``norm_bias`` (LayerNorm only);
    ``total`` is the model's own summed target logits; ``parts_sum`` their sum.
    """

    heads: Float[Tensor, "layer head"]
    mlp: Float[Tensor, " layer"]
    attn_bias: Float[Tensor, " layer"]
    embed: float
    unembed_bias: float
    norm_bias: float
    total: float
    span: tuple[int, int]
    completeness_gap: float = 0.0

    @property
    def attn(self) -> Float[Tensor, " layer"]:
        """Per layer, all heads plus the output bias."""
        return self.heads.sum(-1) + self.attn_bias

    @property
    def parts_sum(self) -> float:
        return float(
            self.heads.sum() + self.mlp.sum() + self.attn_bias.sum()
            + self.embed + self.unembed_bias + self.norm_bias
        )

    @property
    def gap(self) -> float:
        """``total - parts_sum`` (float error only; a test pins it near 0)."""
        return self.total - self.parts_sum

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """``(layer, head, dla)`` with the largest positive direct effect."""
        flat = self.heads.flatten()
        order = torch.argsort(flat, descending=True)[:k]
        n_h = self.heads.shape[1]
        return [(*unravel_head(i, n_h), float(flat[i])) for i in order]

    def view(self):
        from .render import dla_view

        return dla_view(self)


def _dla_names(n_layers: int, fam: Any) -> list[str]:
    """The hooks DLA reads: the first block input, the last block output, and per layer the
    block input and output, ``attn.hook_z`` and the family's mid hook / attention output."""
    names = [act_name(0, "hook_in"), act_name(n_layers - 1, "hook_out")]
    for l in range(n_layers):
        names += [act_name(l, "hook_in"), act_name(l, "attn.hook_z"), act_name(l, "hook_out")]
        if fam.mid_hook is not None:
            names.append(act_name(l, fam.mid_hook))
        if fam.needs_attn_out:
            names.append(act_name(l, "attn.hook_out"))
    return list(dict.fromkeys(names))


class DLACollector:
    """DLA from a forward pass that someone else runs (the trace's capture): no pass of its own.

    ``hooks(ids, span)`` gives read-only hooks that keep the read rows ``[a - 1, b - 1)`` of every
    activation DLA uses (:func:`_dla_names`); run them in a forward pass of ``ids``, then
    ``result()`` decomposes what they kept.  The capture stops after the last block, so by
    default ``total`` is the logit *before* any final soft-cap computed by the model's own final
    norm and unembedding modules on the kept final residual rows; pass the forward's logits
    rows as ``logits=`` to use those instead.
    """

    def __init__(self, model: Any, completeness_tol: float | None = None) -> None:
        from .capture import model_info
        from .aggregate import default_tolerance

        self.model = model
        self.info = model_info(model)  # refuses unsupported structures before any forward pass
        self.tol = float(completeness_tol) if completeness_tol is not None else default_tolerance(model)
        self.acts: dict[str, Tensor] = {}
        self.ids: Tensor | None = None
        self.span: tuple[int, int] | None = None

    def hooks(self, ids: Sequence[int] | Tensor, span: tuple[int, int]) -> list[tuple[str, Any]]:
        self.ids, self.span = _ids_and_span(None, ids, span)
        self.acts = {}
        rows = slice(self.span[0] - 1, self.span[1] - 1)

        def keep(name: str):
            def fn(x: Tensor, hook: Any) -> None:
                self.acts[name] = x[0, rows].detach().to(torch.float32, copy=True)

            return fn

        return [(n, keep(n)) for n in _dla_names(int(self.model.cfg.n_layers), self.info.family)]

    def result(self, logits: Float[Tensor, "tok vocab"] | None = None) -> DirectLogitAttribution:
        if self.ids is None or self.span is None:
            raise TraceError("DLACollector.result() before its hooks ran in a forward pass")
        missing = [n for n in _dla_names(int(self.model.cfg.n_layers), self.info.family) if n not in self.acts]
        if missing:
            raise TraceError(f"hooks did not fire: {missing[:3]}; is this a supported decoder model?")
        return _decompose(self.model, self.info, self.tol, self.acts, self.ids, self.span, logits)


def direct_logit_attribution(
    model: Any,
    trace: Any = None,
    *,
    ids: Sequence[int] | Tensor | None = None,
    span: tuple[int, int] | None = None,
    completeness_tol: float | None = None,
) -> DirectLogitAttribution:
    """DLA of every head, MLP and the embeddings to the span's summed target logits.

    Each block's writes follow its family (method §4): a post-norm's frozen per-token
    scale ``s_t`` and gain ``g`` multiply each head's write ``s_t g * (z_h W_O[h])``; the
    MLP's write is the block's actual ``c - b`` (post-feed-forward norm included; for
    parallel blocks ``b = a + attn_out``).  A guard checks, per read row, that
    ``x[L] = x[0] + sum_l (heads + bias + mlp)`` (relative L1 gap above
    ``completeness_tol``, default by dtype as for traces, raises :class:`TraceError`).
    With a final logit soft-cap (Gemma 2) ``total`` is the logit *before* the cap
    (``c * atanh(logit / c)``): the parts add up to that.  One forward pass (attention
    through :func:`ftlens.lean_forward.fast_attention` where the layer allows it); a head
    study gets the same numbers from the trace's own pass with :class:`DLACollector`.
    """
    from .lean_forward import fast_attention

    col = DLACollector(model, completeness_tol)
    ids_t, (a, b) = _ids_and_span(trace, ids, span)
    with fast_attention(model), temporary_hooks(model, col.hooks(ids_t, (a, b))), torch.no_grad():
        logits = model(ids_t[None].to(device_of(model)))
    return col.result(logits[0, a - 1 : b - 1].detach().float())


def _decompose(
    model: Any, info: Any, tol: float, acts: dict[str, Tensor], ids_t: Tensor, span: tuple[int, int],
    logits: Tensor | None,
) -> DirectLogitAttribution:
    """The DLA formulas (module docstring) on the read rows ``acts[name] = x[a-1 : b-1]``."""
    fam = info.family
    a, b = span
    n_layers = int(model.cfg.n_layers)
    last = act_name(n_layers - 1, "hook_out")
    gamma, beta, eps, centre = _final_norm(model)
    w_u, b_u = _unembed(model)
    dev = w_u.device
    tgt: Int[Tensor, " tok"] = ids_t[a:b].to(dev)
    x_fin = acts[last].to(dev)
    xc = x_fin - x_fin.mean(-1, keepdim=True) if centre else x_fin
    scale = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)  # frozen [tok, 1]
    # d[tok, d_model]: the direction each row's part is read along, scale folded in
    direction = scale * gamma.to(dev) * w_u[:, tgt].T

    def read(part: Float[Tensor, "tok d"]) -> Float[Tensor, " tok"]:
        if centre:
            part = part - part.mean(-1, keepdim=True)
        return (part * direction).sum(-1)

    heads, mlp, attn_bias = [], [], []
    rebuilt = acts[act_name(0, "hook_in")].to(dev).clone()
    for l in range(n_layers):
        get = lambda name: acts[act_name(l, name)].to(dev)  # noqa: E731
        z = _heads_first_rows(get("attn.hook_z"), info.n_heads)  # [tok, head, dh]
        per_head = torch.einsum("thk,hkd->thd", z, info.w_o[l].to(dev))  # g folded in (post-norm)
        bias_w = info.b_o[l].to(dev).expand_as(x_fin) if info.b_o[l] is not None else torch.zeros_like(x_fin)
        if fam.post_norm is not None:
            s_t = torch.rsqrt(get("attn.hook_out").pow(2).mean(-1) + info.norm_eps[l])  # [tok]
            per_head = per_head * s_t[:, None, None]
            bias_w = bias_w * s_t[:, None]
        mid = get(fam.mid_hook) if fam.mid_hook is not None else get("hook_in") + get("attn.hook_out")
        mlp_w = get("hook_out") - mid
        centred = per_head - per_head.mean(-1, keepdim=True) if centre else per_head
        heads.append(torch.einsum("thd,td->h", centred, direction))
        attn_bias.append(read(bias_w).sum())
        mlp.append(read(mlp_w).sum())
        rebuilt += per_head.sum(1) + bias_w + mlp_w
    gap = float((x_fin - rebuilt).abs().sum() / x_fin.abs().sum().clamp_min(1e-30))
    if gap > tol:
        raise TraceError(
            f"completeness guard (DLA): the decomposed writes miss {gap:.2e} of the final residual "
            f"(relative L1; tolerance {tol:.0e}; block family {fam.kind!r}); remove hooks you "
            "registered on the model, run in float32, or pass completeness_tol="
        )
    embed = read(acts[act_name(0, "hook_in")].to(dev)).sum()
    unembed_bias = b_u[tgt].sum() if b_u is not None else torch.zeros(())
    norm_bias = (beta.to(dev) @ w_u[:, tgt]).sum() if beta is not None else torch.zeros(())
    if logits is None:  # the model's own final norm and unembedding, before any soft-cap
        with torch.no_grad():
            x_model = x_fin.to(device_of(model), dtype=model.unembed.W_U.dtype)[None]
            target_logits = model.unembed(model.ln_final(x_model))[0].float().to(dev).gather(-1, tgt[:, None])
    else:
        target_logits = logits.to(dev).gather(-1, tgt[:, None])
        cap = _final_softcap(model)
        if cap is not None:
            target_logits = cap * torch.atanh((target_logits / cap).clamp(-1 + 1e-7, 1 - 1e-7))
    return DirectLogitAttribution(
        heads=torch.stack(heads).cpu(),
        mlp=torch.stack(mlp).cpu(),
        attn_bias=torch.stack([t.cpu() for t in attn_bias]),
        embed=float(embed),
        unembed_bias=float(unembed_bias),
        norm_bias=float(norm_bias),
        total=float(target_logits.sum()),
        span=(a, b),
        completeness_gap=gap,
    )


def _heads_first_rows(z: Tensor, n_heads: int) -> Tensor:
    """``hook_z`` rows as ``[tok, head, dh]`` (some bridges fire it flat ``[tok, head * dh]``)."""
    return rearrange(z, "tok (head dh) -> tok head dh", head=n_heads) if z.ndim == 2 else z


def _final_softcap(model: Any) -> float | None:
    """The final logit soft-cap ``c`` (``logits = c * tanh(raw / c)``; Gemma 2), or ``None``."""
    cap = getattr(hf_config(model), "final_logit_softcapping", None)
    return float(cap) if cap else None


# ---------------------------------------------------------------------- trace shares
@dataclass(frozen=True)
class ComponentShares(records.ComponentShares):
    """:class:`ftlens.records.ComponentShares` with a view (the record itself knows no renderer)."""

    def view(self):
        from .render import component_shares_view

        return component_shares_view(self)


def component_shares(trace: Any, hop: int = 0) -> ComponentShares:
    """The trace's per-layer component shares of hop ``hop`` (0: the output span):
    ``head_share + residual + bias = 1`` per layer, and the reported MLP share."""
    s = trace.component_shares(hop)
    return ComponentShares(head_share=s.head_share, residual=s.residual, bias=s.bias, mlp=s.mlp, hop=s.hop)


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

    def view(self):
        from .render import comparison_view

        return comparison_view(self)


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
