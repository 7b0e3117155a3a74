"""Span-wise and token-wise aggregation over all layers (method §7, §8).

A *virtual target* is a weighted sum of target rows ``w[t] >= 0``:

    ybar[l] = sum_t w[t] b[l, t],   abar[l] = sum_t w[t] a[l, t]
    Abar[l, h, s] = sum_t w[t] A[l, h, t, s]

and the per-layer shares of :func:`ftlens.ifr.normalised_shares` are computed once
per ``(l, h, s)`` on those sums.  The token score is the layer sum
``r(s) = sum_l sum_h e[l, h, s]``.  The token-wise method is the same computation
with one-hot weights, batched over rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from .attention import attention_rows, weighted_attention
from .capture import LayerState, ModelInfo
from .errors import TraceError
from .ifr import completeness_gap, normalised_shares, mlp_share
from .records import Shares


def _bias_total(info: ModelInfo, layer: int, wsum: Tensor) -> Tensor | None:
    b_o = info.b_o[layer]
    return None if b_o is None else wsum[:, None] * b_o.float()[None]


#: The completeness guard's default tolerance per model dtype (relative L1 gap per layer,
#: method §3).  Measured on SmolLM2-135M, needle example, hops=2: max gap 8.7e-7 (float32),
#: 6.0e-3 (bfloat16), 7.9e-4 (float16); a missing post-norm fold gives 0.66-7 (issue 10).
TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def default_tolerance(model: Any) -> float:
    """The guard's tolerance for the dtype the model runs in (see :data:`TOLERANCES`)."""
    try:
        dtype = next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
        dtype = torch.float32
    return TOLERANCES.get(dtype, 1e-4)


def check_completeness(gap: float, layer: int, tol: float | None, info: ModelInfo) -> None:
    """Raise :class:`TraceError` when layer ``layer``'s relative gap exceeds ``tol``."""
    if tol is None or gap <= tol:
        return
    fam = info.family.kind if info.family is not None else "unknown"
    raise TraceError(
        f"completeness guard: at layer {layer} ftlens' decomposition misses {gap:.2e} of what the "
        f"attention block added (relative L1; tolerance {tol:.0e}; block family {fam!r}), so its "
        "numbers would be wrong. Remove hooks you registered on the model, run in float32, or "
        "pass completeness_tol= if you accept the gap"
    )


def check_threshold(largest: list[float], threshold: float | None) -> None:
    """Refuse a threshold that zeroes every head share of some layer.

    ``largest[l]``: layer ``l``'s largest head share before the threshold (over rows: the
    smallest such).  A layer left with no head share contributes nothing, and a threshold
    above every layer's largest share gives an all-zero trace: never what was asked for.
    """
    if threshold is None or threshold <= 0:
        return
    wiped = [l for l, x in enumerate(largest) if x < threshold]
    if wiped:
        keep = min(largest)
        raise TraceError(
            f"threshold {threshold:g} removes every head share of {len(wiped)} layer(s) (first: layer "
            f"{wiped[0]}, largest share {largest[wiped[0]]:.2g}); thresholds below {keep:.2g} keep a "
            "share in every layer for this input (shares shrink as sources grow), or use none"
        )


def span_shares(
    states: list[LayerState],
    info: ModelInfo,
    row_pos: Tensor,
    weights: Float[Tensor, " row"],
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
    tol: float | None = None,
) -> Shares:
    """Shares of the virtual target ``sum_t weights[t] * row t`` (rows = tracked positions).

    With a post-norm's frozen scales ``s_t`` (``LayerState.row_scale``), the attention rows
    and the bias are weighted by ``w_t s_t`` (method §4.2); ``y`` and ``x`` by ``w_t``.
    Each layer's completeness gap is computed and checked against ``tol`` (``None``: not checked).
    """
    return span_shares_many(states, info, row_pos, weights[None], threshold, progress, tol)[0]


def span_shares_many(
    states: list[LayerState],
    info: ModelInfo,
    row_pos: Tensor,
    weights: Float[Tensor, "vec row"],
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
    tol: float | None = None,
) -> list[Shares]:
    """:func:`span_shares` of several virtual targets ``sum_t weights[v, t] * row t`` at once.

    Each target's shares are exactly those of its own span pass (the per-layer formulas act
    on each row ``v`` separately); batching shares the attention recomputation and the head
    writes ``u[h, s]`` between them, which the step graph's many small spans need.
    """
    home = states[0].a.device  # results gather here; layers may sit on other devices (device_map)
    heads, res, bias, mlp, gaps, largest = [], [], [], [], [], []
    for layer, st in enumerate(states):
        w = weights.float().to(st.b.device)
        wa = w if st.row_scale is None else w * st.row_scale[None]
        y = w @ st.b
        x = w @ st.a
        abar = weighted_attention(st.q, st.k, row_pos.to(st.b.device), wa, info.specs[layer])
        bias_total = _bias_total(info, layer, wa.sum(-1))
        gap = completeness_gap(y, x, bias_total, abar, st.v, info.w_o[layer])
        check_completeness(float(gap.max()), layer, tol, info)
        sh = normalised_shares(y, x, bias_total, abar, st.v, info.w_o[layer], threshold)
        largest.append(float(sh.largest.min()))
        heads.append(sh.heads.to(home))
        res.append(sh.residual.to(home))
        bias.append(sh.bias.to(home))
        mlp.append(mlp_share(y, w @ st.c).to(home))
        gaps.append(gap.to(home))
        if progress is not None:
            progress(layer)
    check_threshold(largest, threshold)
    heads_t, res_t, bias_t = torch.stack(heads, dim=1), torch.stack(res, dim=1), torch.stack(bias, dim=1)
    mlp_t, gap_t = torch.stack(mlp, dim=1), torch.stack(gaps, dim=1).float().cpu()
    return [
        Shares(heads=heads_t[v], residual=res_t[v], bias=bias_t[v], mlp=mlp_t[v], gap=gap_t[v])
        for v in range(weights.shape[0])
    ]


@dataclass
class TokenwiseResult:
    """Token-wise rows and their mean.

    ``row_scores[r, s] = r_t(s)`` for each selected row ``t``; ``mean`` holds the
    per-layer shares averaged over rows (its ``raw_scores`` is the mean row).
    """

    row_scores: Float[Tensor, "row src"]
    mean: Shares


def tokenwise_shares(
    states: list[LayerState],
    info: ModelInfo,
    row_pos: Tensor,
    rows: Tensor,
    threshold: float | None = None,
    row_chunk: int = 32,
    progress: Callable[[int], None] | None = None,
    tol: float | None = None,
) -> TokenwiseResult:
    """Token-wise IFR (one-hot weights) for the tracked rows with indices ``rows``.

    Post-norm scales ``s_t`` multiply each row's attention and bias; the completeness
    gap recorded per layer is the largest over rows."""
    n_rows = rows.numel()
    n_src = states[0].k.shape[1]
    home = states[0].a.device  # results gather here; layers may sit on other devices (device_map)
    row_scores = torch.zeros(n_rows, n_src, dtype=torch.float32, device=home)
    heads, res, bias, mlp, gaps, largest = [], [], [], [], [], []
    for layer, st in enumerate(states):
        rows, row_pos = rows.to(st.a.device), row_pos.to(st.a.device)
        l_gap, l_largest = 0.0, float("inf")
        l_heads = torch.zeros(info.n_heads, n_src, dtype=torch.float32, device=st.a.device)
        l_res = l_bias = torch.zeros((), device=st.a.device)
        for start in range(0, n_rows, row_chunk):
            idx = rows[start : start + row_chunk]
            attn = rearrange(
                attention_rows(st.q[:, idx], st.k, row_pos[idx], info.specs[layer]),
                "head row src -> row head src",
            )
            scale = torch.ones(idx.numel(), device=st.a.device) if st.row_scale is None else st.row_scale[idx]
            attn = attn * scale[:, None, None]
            bias_total = _bias_total(info, layer, scale)
            gap = float(completeness_gap(st.b[idx], st.a[idx], bias_total, attn, st.v, info.w_o[layer]).max())
            check_completeness(gap, layer, tol, info)
            l_gap = max(l_gap, gap)
            sh = normalised_shares(st.b[idx], st.a[idx], bias_total, attn, st.v, info.w_o[layer], threshold)
            l_largest = min(l_largest, float(sh.largest.min()))
            row_scores[start : start + idx.numel()] += sh.heads.sum(dim=1).to(home)
            l_heads += sh.heads.sum(dim=0)
            l_res = l_res + sh.residual.sum()
            l_bias = l_bias + sh.bias.sum()
        heads.append((l_heads / n_rows).to(home))
        res.append((l_res / n_rows).to(home))
        bias.append((l_bias / n_rows).to(home))
        mlp.append(mlp_share(st.b[rows], st.c[rows]).mean().to(home))
        gaps.append(l_gap)
        largest.append(l_largest)
        if progress is not None:
            progress(layer)
    check_threshold(largest, threshold)
    mean = Shares(
        heads=torch.stack(heads), residual=torch.stack(res), bias=torch.stack(bias), mlp=torch.stack(mlp),
        gap=torch.tensor(gaps),
    )
    return TokenwiseResult(row_scores=row_scores, mean=mean)


__all__ = ["span_shares", "span_shares_many", "TokenwiseResult", "tokenwise_shares"]
