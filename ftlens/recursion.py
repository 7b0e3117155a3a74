"""Recursive attribution through reasoning tokens (method §10).

Regions (absolute, half-open): inputs ``[0, r0)``, pending ``[r0, o0)``, output
``[o0, o1)``, with ``r0`` the start of the reasoning span (or ``o0`` when there is
none).  Tokens between the reasoning span and the output (``</think>``, newlines)
are recursed with the reasoning: they are neither input nor answer.

    hop 0:  v0 = span(O, uniform),            p0 = v0 / sum v0
            (explain="target": v0 = span([r0, o1), uniform), the whole target)
            F  = p0[inputs],   mu0 = p0[pending],   output mass = sum p0[O]
    hop k:  vk = span(pending, weights mu_{k-1}),   pk = vk / sum vk
            F += |mu_{k-1}| pk[inputs],   mu_k = |mu_{k-1}| pk[pending]

Conservation: ``sum F + |mu_K| + output mass = 1`` (a test pins it).  The
per-head attribution of the whole trace is ``sum_k c_k / sum(vk) * e_k[:, :, inputs]``
with ``c_0 = 1`` and ``c_k = |mu_{k-1}|``; its sum over layers and heads is ``F``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from .aggregate import SpanShares


EXPLAIN = ("output", "target")


def explained_span(output: tuple[int, int], reasoning: tuple[int, int] | None, explain: str) -> tuple[int, int]:
    """The span hop 0 explains: ``output`` (``explain="output"``) or ``[reasoning start, output
    end)`` (``explain="target"``; the same as ``output`` when there is no reasoning span)."""
    if explain not in EXPLAIN:
        raise ValueError(f"explain must be one of {', '.join(EXPLAIN)}, got {explain!r}")
    if explain == "target" and reasoning is not None:
        return reasoning[0], output[1]
    return output


@dataclass
class Hop:
    """One hop: the span it traced, its shares and its contribution to ``F``."""

    weight: float  # c_k: mass this hop distributes (1 for hop 0)
    norm: float  # sum_s v_k(s)
    shares: SpanShares  # e_k and per-layer residual / bias / MLP shares
    contribution: Float[Tensor, " pos"]  # c_k * p_k restricted to inputs (zero elsewhere)
    pending: Float[Tensor, " pos"]  # mu_k over positions (zero outside pending)

    @property
    def thinking_ratio(self) -> float:
        """``|mu_k|``: mass still on reasoning tokens after this hop."""
        return float(self.pending.sum())

    def head_attribution(self, inputs: Tensor) -> Float[Tensor, "layer head pos"]:
        """``c_k / sum(v_k) * e_k`` restricted to input positions."""
        scale = self.weight / self.norm if self.norm > 0 else 0.0
        return self.shares.heads * inputs.float() * scale


@dataclass
class Recursion:
    final: Float[Tensor, " pos"]  # F
    hops: list[Hop]
    output_mass: float
    unresolved: float


def recurse(
    span_fn: Callable[[Tensor], SpanShares],
    n_pos: int,
    row_start: int,
    output: tuple[int, int],
    reasoning: tuple[int, int] | None,
    hops: int,
    explain: str = "output",
    pending_tol: float = 0.0,
) -> Recursion:
    """Run hops 0..K.  ``span_fn(weights over tracked rows [row_start, n_pos))`` -> shares.

    ``explain`` names what hop 0 explains: ``"output"`` (the answer span ``O``, method §10)
    or ``"target"`` (every target token from the reasoning start to the answer end,
    ``[r0, o1)``, uniform weights: what a whole-target faithfulness metric scores).  In both
    cases the mass hop 0 puts on pending tokens is recursed and the mass on ``O`` is reported.
    Hops stop early once the pending mass ``|mu_k|`` is at most ``pending_tol`` (``len(hops) - 1``
    says how many ran; the rest stays ``unresolved``).
    """
    first, last = explained_span(output, reasoning, explain)
    r0 = reasoning[0] if reasoning is not None else output[0]
    pos = torch.arange(n_pos)
    inputs = pos < r0
    pending = (pos >= r0) & (pos < output[0])
    n_rows = n_pos - row_start

    w = torch.zeros(n_rows)
    w[first - row_start : last - row_start] = 1.0 / (last - first)
    shares = span_fn(w)
    v = shares.scores.cpu()
    norm = float(v.sum())
    p = v / norm if norm > 0 else torch.zeros_like(v)
    mu = p * pending
    hop_list = [Hop(1.0, norm, shares, p * inputs, mu)]
    final = p * inputs
    output_mass = float(p[output[0] : output[1]].sum())
    for _ in range(hops):
        mass = float(mu.sum())
        if mass <= pending_tol:
            break
        w = (mu / mass)[row_start:]
        shares = span_fn(w)
        v = shares.scores.cpu()
        norm = float(v.sum())
        p = v / norm if norm > 0 else torch.zeros_like(v)
        contribution = mass * p * inputs
        mu = mass * p * pending
        final = final + contribution
        hop_list.append(Hop(mass, norm, shares, contribution, mu))
    return Recursion(final=final, hops=hop_list, output_mass=output_mass, unresolved=float(mu.sum()))
