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

With ``stop_rows="skip"`` the target's stop tokens (``,`` ``.`` blank; ``skip``) are never rows:
hop 0's uniform weights leave them out (unless every explained token is one), and every
``pk`` is taken over the other positions (``vk`` zeroed on them before normalising), so
they neither explain nor relay; input positions are untouched.

With ``handoff="target"`` the pending region is every target token ``[r0, o1)``, the answer's own
included: hop ``k`` re-traces the mass hop ``k - 1`` put on reasoning *and* answer tokens (how the
reference package hands mass on), the output mass is 0 and ``|mu_k|`` is the mass still on target
tokens.

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

from .options import EXPLAIN
from .records import HopRecord, Shares


def explained_span(output: tuple[int, int], reasoning: tuple[int, int] | None, explain: str) -> tuple[int, int]:
    """The span hop 0 explains: ``output`` (``explain="output"``) or ``[reasoning start, output
    end)`` (``explain="target"``; the same as ``output`` when there is no reasoning span)."""
    if explain not in EXPLAIN:
        raise ValueError(f"explain must be one of {', '.join(EXPLAIN)}, got {explain!r}")
    if explain == "target" and reasoning is not None:
        return reasoning[0], output[1]
    return output


def traced_rows(first: int, last: int, skip: Tensor | None = None) -> list[int]:
    """The rows a span pass over positions ``[first, last)`` traces: every position that ``skip``
    (bool ``[pos]``, ``stop_rows="skip"``'s stop tokens; ``None``: none) leaves, or all of them
    when it would leave none (a span made only of stop tokens is still traced).  The one rule of
    the trace's span passes, the token-wise rows, the recursion's hop 0 and the step graph's
    nodes."""
    rows = [t for t in range(first, last) if skip is None or not bool(skip[t])]
    return rows or list(range(first, last))


def uniform_weights(first: int, last: int, skip: Tensor | None, row_start: int, n_rows: int) -> Tensor:
    """Uniform weights over the tracked rows ``[row_start, row_start + n_rows)``, on the
    :func:`traced_rows` of ``[first, last)``."""
    w = torch.zeros(n_rows)
    w[torch.tensor(traced_rows(first, last, skip)) - row_start] = 1.0
    return w / w.sum()


def _hop(weight: float, norm: float, shares: Shares, contribution: Tensor, pending: Tensor) -> HopRecord:
    """The record of one hop: ``c_k``, ``sum v_k``, its shares ``e_k`` (on the CPU, float32),
    its contribution ``c_k p_k`` to ``F`` and the pending mass ``mu_k``."""
    return HopRecord(
        weight=float(weight),
        norm=float(norm),
        thinking_ratio=float(pending.sum()),
        scores=contribution.float(),
        pending=pending.float(),
        heads=shares.heads.cpu().float(),
        residual=shares.residual.cpu().float(),
        bias=shares.bias.cpu().float(),
        mlp=shares.mlp.cpu().float(),
        gap=shares.gap.cpu().float() if shares.gap is not None else None,
    )


@dataclass
class Recursion:
    final: Float[Tensor, " pos"]  # F
    hops: list[HopRecord]
    output_mass: float
    unresolved: float


def recurse(
    span_fn: Callable[[Tensor], Shares],
    n_pos: int,
    row_start: int,
    output: tuple[int, int],
    reasoning: tuple[int, int] | None,
    hops: int,
    explain: str = "output",
    pending_tol: float = 0.0,
    skip: Tensor | None = None,
    handoff: str = "reasoning",
) -> Recursion:
    """Run hops 0..K.  ``span_fn(weights over tracked rows [row_start, n_pos))`` -> shares.

    ``explain`` names what hop 0 explains: ``"output"`` (the answer span ``O``, method §10)
    or ``"target"`` (every target token from the reasoning start to the answer end,
    ``[r0, o1)``, uniform weights: what a whole-target faithfulness metric scores).  In both
    cases the mass hop 0 puts on pending tokens is recursed and the mass on ``O`` is reported.
    Hops stop early once the pending mass ``|mu_k|`` is at most ``pending_tol`` (``len(hops) - 1``
    says how many ran; the rest stays ``unresolved``).  ``skip``: bool ``[pos]``, target
    positions that are never rows (``stop_rows="skip"``; module docstring).  ``handoff``: which
    mass a hop re-traces, the reasoning tokens' (``"reasoning"``) or every target token's
    (``"target"``, the answer's own included; module docstring).
    """
    first, last = explained_span(output, reasoning, explain)
    r0 = reasoning[0] if reasoning is not None else output[0]
    pos = torch.arange(n_pos)
    inputs = pos < r0
    pending = (pos >= r0) & (pos < (output[0] if handoff == "reasoning" else output[1]))
    n_rows = n_pos - row_start

    keep = torch.ones(n_pos, dtype=torch.bool) if skip is None else ~(skip.bool() & (pos >= r0))
    shares = span_fn(uniform_weights(first, last, skip, row_start, n_rows))
    v = shares.raw_scores.cpu() * keep
    norm = float(v.sum())
    p = v / norm if norm > 0 else torch.zeros_like(v)
    mu = p * pending
    hop_list = [_hop(1.0, norm, shares, p * inputs, mu)]
    final = p * inputs
    output_mass = float(p[output[0] : output[1]].sum()) if handoff == "reasoning" else 0.0
    for _ in range(hops):
        mass = float(mu.sum())
        if mass <= pending_tol:
            break
        w = (mu / mass)[row_start:]
        shares = span_fn(w)
        v = shares.raw_scores.cpu() * keep
        norm = float(v.sum())
        p = v / norm if norm > 0 else torch.zeros_like(v)
        contribution = mass * p * inputs
        mu = mass * p * pending
        final = final + contribution
        hop_list.append(_hop(mass, norm, shares, contribution, mu))
    return Recursion(final=final, hops=hop_list, output_mass=output_mass, unresolved=float(mu.sum()))
