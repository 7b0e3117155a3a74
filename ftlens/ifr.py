"""Information-Flow-Routes proximities and per-layer shares (method §2, §3, §7, §8).

For a "virtual target" with residual sums ``y`` (after the attention add),
``x`` (block input) and attention rows ``Abar``:

    prox(z | y) = max(0, |y|_1 - |y - z|_1)                       (L1 proximity)
    u[h, s]     = W_O[h]^T v[kv(h), s]                            (head write per unit attention)
    P[h, s]     = prox(Abar[h, s] * u[h, s] | y)
    R           = prox(x | y),   Bt = prox(wsum * b_O | y)
    Z           = sum_{h,s} P[h, s] + R + Bt
    e[h, s]     = P[h, s] / Z        (the per-layer, per-head, per-source share)

A token-wise row is the case of one target token (``y = b[t]``, ``Abar = A[:, t]``);
a span is the case of weighted sums over target tokens.  Both go through
:func:`normalised_shares`, one definition for both methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor


def proximity(part: Float[Tensor, "... d"], whole: Float[Tensor, "... d"]) -> Float[Tensor, "..."]:
    """``prox(part | whole) = max(0, |whole|_1 - |whole - part|_1)`` over the last axis.

    Evaluated as ``sum_d (|whole_d| - |whole_d - part_d|)``: each term is bounded by
    ``|part_d|``, so a small part of a large whole loses no precision to cancellation.
    """
    return (whole.abs() - (whole - part).abs()).sum(-1).clamp_min(0.0)


def head_writes(
    v: Float[Tensor, "kv src dh"], w_o: Float[Tensor, "head dh d"]
) -> Float[Tensor, "head src d"]:
    """``u[h, s] = W_O[h]^T v[kv(h), s]``: what head ``h`` writes per unit attention on ``s``.

    Grouped-query heads read their KV head through a broadcast (no repeated copy of ``v``).
    """
    w = rearrange(w_o.float(), "(kv g) dh d -> kv g dh d", kv=v.shape[0])
    u = torch.matmul(v.float()[:, None], w)  # kv g src d
    return rearrange(u, "kv g src d -> (kv g) src d")


def head_proximities(
    y: Float[Tensor, "row d"],
    attn: Float[Tensor, "row head src"],
    v: Float[Tensor, "kv src dh"],
    w_o: Float[Tensor, "head dh d"],
    max_elems: int = 1 << 20,
) -> Float[Tensor, "row head src"]:
    """``P[r, h, s] = prox(attn[r, h, s] * u[h, s] | y[r])``, chunked over sources.

    Sources where every row has zero attention are skipped (their proximity is 0).
    ``max_elems`` bounds the ``[row, head, src_chunk, d]`` temporary (a few MB, so it
    stays in cache); each chunk is evaluated in place as
    ``sum_d (|y_d| - |y_d - z_d|)`` with ``z = attn * u`` (see :func:`proximity`).
    """
    n_rows, n_heads, n_src = attn.shape
    d = w_o.shape[-1]
    out = torch.zeros(n_rows, n_heads, n_src, dtype=torch.float32, device=y.device)
    live = (attn != 0).flatten(0, 1).any(dim=0).nonzero().flatten()
    if live.numel() == 0:
        return out
    chunk = max(16, max_elems // max(1, n_rows * n_heads * d))
    y = y.float()[:, None, None, :]
    y_abs, neg_y = y.abs(), -y
    w_o = w_o.float()
    contiguous = live.numel() == int(live[-1]) + 1  # live sources are 0..n-1 (the causal case)
    for start in range(0, live.numel(), chunk):
        if contiguous:
            idx = slice(start, min(start + chunk, live.numel()))
        else:
            idx = live[start : start + chunk]
        u = head_writes(v[:, idx], w_o)  # head c d
        a = attn[:, :, idx, None].float()  # row head c 1
        if n_rows == 1:  # z - y = attn * u - y, in place
            z = torch.addcmul(neg_y[0], u, a[0], out=u)[None]
        else:
            z = torch.addcmul(neg_y, u[None], a)  # row head c d
        z.abs_()  # |y - z|
        torch.sub(y_abs, z, out=z)  # |y| - |y - z|
        out[:, :, idx] = z.sum(-1).clamp_min_(0.0)
    return out


def completeness_gap(
    y: Float[Tensor, "row d"],
    x: Float[Tensor, "row d"],
    bias_total: Float[Tensor, "row d"] | None,
    attn: Float[Tensor, "row head src"],
    v: Float[Tensor, "kv src dh"],
    w_o: Float[Tensor, "head dh d"],
) -> Float[Tensor, " row"]:
    """Relative L1 gap of the decomposition (method §3, the completeness guard):

        gap = |(y - x) - sum_{h,s} attn[h, s] u[h, s] - bias|_1 / |y - x|_1

    ``y - x`` is what the block really added (from the forward that ran); the rest is
    what ftlens attributes.  Evaluated without forming edges: ``sum_s attn[h,s] v[s]``
    first (``[row, head, dh]``), then ``W_O``.
    """
    n_kv = v.shape[0]
    a = rearrange(attn.float(), "row (kv g) src -> kv (row g) src", kv=n_kv)
    mixed = rearrange(torch.matmul(a, v.float()), "kv (row g) dh -> row (kv g) dh", row=attn.shape[0])
    parts = torch.einsum("rhk,hkd->rd", mixed, w_o.float())
    if bias_total is not None:
        parts = parts + bias_total.float()
    whole = y.float() - x.float()
    den = whole.abs().sum(-1)
    gap = (whole - parts).abs().sum(-1)
    return torch.where(den > 0, gap / den.clamp_min(torch.finfo(torch.float32).tiny), gap)


@dataclass
class LayerShares:
    """Normalised shares of one layer for a batch of virtual targets (rows).

    ``heads[r, h, s] + residual[r] + bias[r]`` summed over ``h, s`` is 1 per row
    (up to the threshold renormalisation, which keeps the sum at 1).
    """

    heads: Float[Tensor, "row head src"]
    residual: Float[Tensor, " row"]
    bias: Float[Tensor, " row"]
    largest: Float[Tensor, " row"] | None = None  # largest head share before the threshold


def normalised_shares(
    y: Float[Tensor, "row d"],
    x: Float[Tensor, "row d"],
    bias_total: Float[Tensor, "row d"] | None,
    attn: Float[Tensor, "row head src"],
    v: Float[Tensor, "kv src dh"],
    w_o: Float[Tensor, "head dh d"],
    threshold: float | None = None,
) -> LayerShares:
    """Shares ``e = P / Z`` (and residual ``R / Z``, bias ``Bt / Z``) of one layer.

    ``threshold``: shares below it are zeroed and every row is renormalised to 1.
    It is applied to the normalised shares, never to raw proximities.
    """
    p = head_proximities(y, attn, v, w_o)
    r = proximity(x.float(), y.float())
    bt = proximity(bias_total.float(), y.float()) if bias_total is not None else torch.zeros_like(r)
    z = p.sum(dim=(1, 2)) + r + bt
    z = torch.where(z > 0, z, torch.ones_like(z))
    heads, res, bias = p / z[:, None, None], r / z, bt / z
    largest = heads.flatten(1).amax(dim=1) if heads.numel() else torch.zeros_like(res)
    if threshold is not None and threshold > 0:
        heads = torch.where(heads >= threshold, heads, torch.zeros_like(heads))
        res = torch.where(res >= threshold, res, torch.zeros_like(res))
        bias = torch.where(bias >= threshold, bias, torch.zeros_like(bias))
        total = heads.sum(dim=(1, 2)) + res + bias
        total = torch.where(total > 0, total, torch.ones_like(total))
        heads, res, bias = heads / total[:, None, None], res / total, bias / total
    return LayerShares(heads=heads, residual=res, bias=bias, largest=largest)


def mlp_share(
    b: Float[Tensor, "row d"], c: Float[Tensor, "row d"]
) -> Float[Tensor, " row"]:
    """``prox(m | c) / (prox(m | c) + prox(b | c))`` with ``m = c - b`` (the MLP's write)."""
    pm = proximity((c - b).float(), c.float())
    pb = proximity(b.float(), c.float())
    den = pm + pb
    return torch.where(den > 0, pm / den, torch.zeros_like(den))


__all__ = [
    "proximity",
    "head_writes",
    "head_proximities",
    "completeness_gap",
    "LayerShares",
    "normalised_shares",
    "mlp_share",
]
