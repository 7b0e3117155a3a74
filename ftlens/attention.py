"""Recompute post-softmax attention rows from captured queries and keys.

The model's own attention is

    A[h, t, s] = softmax_s( cap(scale * q[h, t] . k[kv(h), s]) + mask[t, s] )

with ``cap(x) = c * tanh(x / c)`` when the model soft-caps logits, ``mask`` the
causal mask (``s <= t``) intersected with a sliding window (``t - s < W``) where the
layer has one, and ``kv(h) = h // g`` for grouped-query attention.  Only the rows
that attribution needs (target positions) are ever recomputed, a chunk of rows
at a time, so no ``[H, T, T]`` tensor of a whole layer exists.  The recomputation
is tested against the bridge's ``hook_pattern`` on every tiny architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class AttentionSpec:
    """What a layer's softmax needs besides q and k."""

    scale: float
    group: int  # query heads per KV head (H / H_kv)
    softcap: float | None = None
    window: int | None = None  # sliding window length, None = full causal


def attention_logits(
    q: Float[Tensor, "head row dh"],
    k: Float[Tensor, "kv src dh"],
    row_pos: Int[Tensor, " row"],
    spec: AttentionSpec,
) -> Float[Tensor, "head row src"]:
    """Masked pre-softmax logits ``cap(scale * q . k) + mask`` (float32, ``-inf`` where masked).

    Grouped-query heads are batched per KV head (``q`` viewed as ``[kv, g * row, dh]``),
    so ``k`` is never repeated.
    """
    n_src = k.shape[1]
    qg = rearrange(q.float(), "(kv g) row dh -> kv (g row) dh", g=spec.group)
    scores = rearrange(
        torch.matmul(qg, k.float().transpose(1, 2)), "kv (g row) src -> (kv g) row src", g=spec.group
    )
    scores.mul_(spec.scale)
    if spec.softcap is not None:
        scores.div_(spec.softcap).tanh_().mul_(spec.softcap)
    src = torch.arange(n_src, device=k.device)
    allowed = src[None, :] <= row_pos[:, None]
    if spec.window is not None:
        allowed &= (row_pos[:, None] - src[None, :]) < spec.window
    return scores.masked_fill_(~allowed[None], float("-inf"))


def attention_rows(
    q: Float[Tensor, "head row dh"],
    k: Float[Tensor, "kv src dh"],
    row_pos: Int[Tensor, " row"],
    spec: AttentionSpec,
) -> Float[Tensor, "head row src"]:
    """Post-softmax attention of the given query rows on every source (float32)."""
    return torch.softmax(attention_logits(q, k, row_pos, spec), dim=-1)


def weighted_attention(
    q: Float[Tensor, "head row dh"],
    k: Float[Tensor, "kv src dh"],
    row_pos: Int[Tensor, " row"],
    weights: Float[Tensor, "vec row"],
    spec: AttentionSpec,
    row_chunk: int = 256,
) -> Float[Tensor, "vec head src"]:
    """``Abar[v, h, s] = sum_t weights[v, t] * A[h, t, s]``, computed a row chunk at a time.

    Rows whose weights are all zero are skipped (they contribute nothing).
    """
    n_vec, n_rows = weights.shape
    out = torch.zeros(q.shape[0], n_vec, k.shape[1], dtype=torch.float32, device=k.device)
    live = (weights != 0).any(dim=0).nonzero().flatten()
    for start in range(0, live.numel(), row_chunk):
        idx = live[start : start + row_chunk]
        # softmax folded into the weights: A[h,t,s] = e[h,t,s] / Z[h,t] with
        # e = exp(logit - max_s logit), so sum_t w[t] A[h,t,s] = sum_t (w[t] / Z[h,t]) e[h,t,s]
        e = attention_logits(q[:, idx], k, row_pos[idx], spec)  # head row src
        e.sub_(e.amax(dim=-1, keepdim=True)).exp_()
        scaled = weights[:, idx].float()[None] / e.sum(dim=-1)[:, None, :]  # head vec row
        out.add_(torch.matmul(scaled, e))  # head vec src
    return out.transpose(0, 1)
