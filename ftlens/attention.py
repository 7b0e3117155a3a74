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
from einops import einsum, repeat
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class AttentionSpec:
    """What a layer's softmax needs besides q and k."""

    scale: float
    group: int  # query heads per KV head (H / H_kv)
    softcap: float | None = None
    window: int | None = None  # sliding window length, None = full causal


def attention_rows(
    q: Float[Tensor, "head row dh"],
    k: Float[Tensor, "kv src dh"],
    row_pos: Int[Tensor, " row"],
    spec: AttentionSpec,
) -> Float[Tensor, "head row src"]:
    """Post-softmax attention of the given query rows on every source (float32)."""
    k_full = repeat(k, "kv src dh -> (kv g) src dh", g=spec.group) if spec.group > 1 else k
    scores = einsum(q.float(), k_full.float(), "head row dh, head src dh -> head row src") * spec.scale
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    src = torch.arange(k.shape[1], device=k.device)
    allowed = src[None, :] <= row_pos[:, None]
    if spec.window is not None:
        allowed &= (row_pos[:, None] - src[None, :]) < spec.window
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.softmax(scores, dim=-1)


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
    out = torch.zeros(n_vec, q.shape[0], k.shape[1], dtype=torch.float32, device=k.device)
    live = (weights != 0).any(dim=0).nonzero().flatten()
    for start in range(0, live.numel(), row_chunk):
        idx = live[start : start + row_chunk]
        rows = attention_rows(q[:, idx], k, row_pos[idx], spec)
        out += einsum(weights[:, idx].float(), rows, "vec row, head row src -> vec head src")
    return out
