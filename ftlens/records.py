"""The records a trace is made of: per-layer shares, one hop, ranked tokens and heads.

Axes (see :mod:`ftlens.axes`): ``layer``, ``head``, ``pos`` (every position of prompt +
target), ``src`` (source positions, the same positions seen as what is attended to).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(kw_only=True)
class Shares:
    """Per-layer shares of one virtual target (method §7-§8, §11.3).

    ``heads[l, h, s]`` is the normalised share ``e``; ``residual[l]`` and ``bias[l]``
    complete each layer to 1; ``mlp[l]`` is the reported MLP share of the block output;
    ``gap[l]`` the completeness guard's relative gap (method §3; ``None`` when unknown).
    """

    heads: Float[Tensor, "layer head pos"]
    residual: Float[Tensor, " layer"]
    bias: Float[Tensor, " layer"]
    mlp: Float[Tensor, " layer"]
    gap: Float[Tensor, " layer"] | None = None

    @property
    def raw_scores(self) -> Float[Tensor, " pos"]:
        """``r(s) = sum_l sum_h e[l, h, s]``: the token scores of this one pass."""
        return self.heads.sum(dim=(0, 1))

    @property
    def head_share(self) -> Float[Tensor, " layer"]:
        """Per layer, the share of all heads and sources: ``sum_{h,s} e[l, h, s]``."""
        return self.heads.sum(dim=(1, 2))

    @property
    def route_weights(self) -> Float[Tensor, " layer"]:
        """Route weight of each layer's attention output ``b[l]`` to the span's final residual.

        ``w[l] = (1 - mlp[l]) * prod_{l' > l} residual[l'] * (1 - mlp[l'])``: the product of
        proximity shares along the pure residual path from ``b[l]`` to the last block output
        (``1 - mlp[l]`` is the share of ``b[l]`` in ``c[l] = b[l] + m[l]``; ``residual[l']`` the
        share of ``a[l'] = c[l'-1]`` in ``b[l']``), all in ``[0, 1]`` (method §11.2).
        """
        keep = (1.0 - self.mlp.double()).clamp(0.0, 1.0)
        step = self.residual.double() * keep  # share of c[l'-1] in c[l'] along the residual path
        suffix = torch.cumprod(torch.flip(step, [0]), 0)  # suffix[j] = prod over the last j+1 layers
        after = torch.cat([torch.flip(suffix, [0])[1:], torch.ones(1, dtype=step.dtype)])  # prod over l' > l
        return (keep * after).float()


@dataclass(kw_only=True)
class HopRecord(Shares):
    """One recursion hop (hop 0 is the explained span itself): its :class:`Shares` plus

    ``scores[pos]``: this hop's contribution to the final scores (``c_k * p_k`` on input
    positions); ``weight = c_k`` (the mass it distributes), ``norm = sum_s v_k(s)``,
    ``thinking_ratio = |mu_k|`` (mass still on reasoning tokens after it); ``pending[pos]``
    is ``mu_k`` itself (``None`` in files written before ftlens stored it).
    """

    weight: float
    norm: float
    thinking_ratio: float
    scores: Float[Tensor, " pos"]
    pending: Float[Tensor, " pos"] | None = None


@dataclass(frozen=True)
class ComponentShares:
    """Per layer, a hop's totals: all heads, residual, bias, and the reported MLP share.

    ``head_share + residual + bias = 1`` per layer (the IFR normalisation).
    """

    head_share: Float[Tensor, " layer"]
    residual: Float[Tensor, " layer"]
    bias: Float[Tensor, " layer"]
    mlp: Float[Tensor, " layer"]
    hop: int


@dataclass(frozen=True)
class TokenScore:
    pos: int
    token: str
    role: str
    score: float


@dataclass(frozen=True)
class SegmentScore:
    """A segment ``[start, end)`` of one role's run, its text and its summed score."""

    start: int
    end: int
    role: str
    text: str
    score: float


@dataclass(frozen=True)
class HeadScore:
    layer: int
    head: int
    score: float


def unravel_head(flat: int | Tensor, n_heads: int) -> tuple[int, int]:
    """A flat ``layer * n_heads + head`` index -> ``(layer, head)``."""
    return int(flat) // n_heads, int(flat) % n_heads
