"""Direct logit attribution: every head's, MLP's and embedding's write to the target span's summed logits.

The final residual is a sum of writes: ``x[L] = embed + sum_l (sum_h z[l,h] W_O[l,h] + b_O[l] +
mlp[l])``, with ``z = blocks.{l}.attn.hook_z`` (``= attn.o.hook_in``, ``[batch, pos, head,
d_head]``).  With the final-norm scale *frozen at its actual value* ``s_t = 1 / rms(x[L, t-1])``
(the usual DLA convention: the norm is linear once its scale is fixed; for a LayerNorm the
centring is applied to every part and its bias becomes one more part) each write ``c``
contributes

    DLA(c) = sum_{t in S} s_t * (gamma * c_{t-1}) . W_U[:, id_t]

and ``embed + heads + attn biases + MLPs + unembed bias (+ norm bias)`` equals the span's summed
target logits exactly (up to float error; ``DirectLogitAttribution.gap`` reports it).  Tied
embeddings (SmolLM2) need no special case: ``W_U`` is read from the bridge's unembedding, and the
embedding's direct path is its own part.  :class:`DLACollector` reads the same activations in a
forward pass someone else runs (a trace's capture), so a head study needs no pass of its own.
Views: :func:`ftlens.render.dla_view`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from .bridge import act_name, device_of, temporary_hooks
from .errors import TraceError
from .readout import final_norm, final_softcap, ids_and_span, unembed
from .records import unravel_head

__all__ = ["DirectLogitAttribution", "DLACollector", "direct_logit_attribution"]


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
        self.ids, self.span = ids_and_span(None, ids, span)
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
    ids_t, (a, b) = ids_and_span(trace, ids, span)
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
    gamma, beta, eps, centre = final_norm(model)
    w_u, b_u = unembed(model)
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
        cap = final_softcap(model)
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
