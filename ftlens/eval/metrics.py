"""Faithfulness metrics (method §13): deletion / insertion curves, RISE, MAS, Recovery@k%.

Definitions (``n`` user-prompt tokens, ``k`` groups, default 20):

- Ranking: user-prompt tokens sorted by score, highest first (stable: ties keep prompt order).
- Step ``i = 0..k`` deletes the top ``m_i = round(i * n / k)`` ranked tokens, replacing each
  by one fixed token id (``fill``, the same for every method); ``s_i = sum_t log p(x_t | x_<t)``
  over the scored target tokens of the perturbed sequence.  Two variants are scored from the
  same forward pass: ``answer`` (output span only) and ``target`` (every target token:
  reasoning + answer, think tags included).
- ``s_hat_i = clip((s_i - s_k) / |s_0 - s_k|, 0, 1)`` then made monotone non-increasing by a
  running minimum (``s_hat_i = min_{j <= i} s_hat_j``).  ``|s_0 - s_k| = 0`` gives all zeros.
- ``RISE = trapz(s_hat) / k`` (unit spacing, so the value is in [0, 1]; lower is better).
- ``MAS``: ``d_i`` = fraction of the (non-negative) attribution mass still undeleted after step
  ``i``; ``c_i = clip(s_hat_i + |s_hat_i - d_i|, 0, 1)``, min-max rescaled over ``i``,
  ``MAS = trapz(c_rescaled) / k`` (lower is better).  Mass uses ``max(score, 0)``; a method with
  no positive mass gets uniform mass.
- Insertion: start from every user-prompt token replaced and restore the top ``m_i``;
  ``s'_0`` = all replaced (= ``s_k``), ``s'_k`` = original (= ``s_0``);
  ``ins_hat_i = clip((s'_i - s'_0) / |s'_k - s'_0|, 0, 1)`` made monotone non-decreasing
  (running max); ``insertion AUC = trapz(ins_hat) / k`` (higher is better).
- ``Recovery@p%``: fraction of evidence tokens among the top ``ceil(p/100 * n)`` prompt tokens.

These are the pure curve maths; :mod:`ftlens.eval.scoring` runs the model to get the curves.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def ranking(scores: Float[Tensor, " prompt"]) -> Int[Tensor, " prompt"]:
    """Indices of ``scores`` from highest to lowest (stable: ties keep their order)."""
    return torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices


def step_sizes(n: int, k: int = 20) -> list[int]:
    """``m_i = round(i * n / k)`` for ``i = 0..k``: tokens deleted after step ``i``."""
    if k < 1:
        raise ValueError("k must be >= 1")
    return [int(math.floor(i * n / k + 0.5)) for i in range(k + 1)]


def normalise_deletion(s: Sequence[float]) -> Float[Tensor, " step"]:
    """``s_hat_i = clip((s_i - s_k) / |s_0 - s_k|, 0, 1)``, running minimum from the left."""
    s = torch.as_tensor(s, dtype=torch.float64)
    span = float(abs(s[0] - s[-1]))
    if span == 0.0:
        return torch.zeros_like(s)
    out = ((s - s[-1]) / span).clamp(0.0, 1.0)
    return torch.cummin(out, dim=0).values


def normalise_insertion(s: Sequence[float]) -> Float[Tensor, " step"]:
    """``clip((s_i - s_0) / |s_k - s_0|, 0, 1)``, running maximum from the left."""
    s = torch.as_tensor(s, dtype=torch.float64)
    span = float(abs(s[-1] - s[0]))
    if span == 0.0:
        return torch.zeros_like(s)
    out = ((s - s[0]) / span).clamp(0.0, 1.0)
    return torch.cummax(out, dim=0).values


def _area(y: Tensor) -> float:
    """Trapezoid area with unit spacing, divided by the number of intervals."""
    k = y.numel() - 1
    return float(torch.trapezoid(y.double())) / k


def rise(s: Sequence[float]) -> float:
    """RISE = trapezoid area under the normalised deletion curve / k (lower is better)."""
    return _area(normalise_deletion(s))


def insertion_auc(s: Sequence[float]) -> float:
    """Area under the normalised insertion curve / k (higher is better)."""
    return _area(normalise_insertion(s))


def mass_remaining(scores: Float[Tensor, " prompt"], k: int = 20) -> Float[Tensor, " step"]:
    """``d_i``: fraction of ``max(score, 0)`` mass not yet deleted after step ``i``."""
    w = scores.detach().double().cpu().clamp(min=0.0)
    if float(w.sum()) <= 0.0:
        w = torch.ones_like(w)
    w = w[ranking(scores)]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
    m = step_sizes(scores.numel(), k)
    return 1.0 - cum[m] / cum[-1]


def mas(s: Sequence[float], d: Sequence[float]) -> float:
    """MAS = area of min-max rescaled ``clip(s_hat + |s_hat - d|, 0, 1)`` / k (lower is better)."""
    sh = normalise_deletion(s)
    d = torch.as_tensor(d, dtype=torch.float64)
    c = (sh + (sh - d).abs()).clamp(0.0, 1.0)
    lo, hi = float(c.min()), float(c.max())
    c = (c - lo) / (hi - lo) if hi > lo else torch.zeros_like(c)
    return _area(c)


def top_slots(scores: Float[Tensor, " prompt"], pct: float | int = 10.0) -> Int[Tensor, " top"]:
    """Indices of the top ``max(1, ceil(pct% * n))`` of ``scores`` (:func:`ranking` order)."""
    return ranking(scores)[: max(1, math.ceil(pct / 100.0 * scores.numel()))]


def recovery(scores: Float[Tensor, " prompt"], evidence: Sequence[int], pct: float | int = 10.0) -> float:
    """Fraction of ``evidence`` (indices into ``scores``) in the top ``ceil(pct% * n)``."""
    ev = set(int(i) for i in evidence)
    if not ev:
        return float("nan")
    chosen = set(top_slots(scores, pct).tolist())
    return len(ev & chosen) / len(ev)


def evidence_first_scores(n: int, evidence: Sequence[int]) -> Float[Tensor, " prompt"]:
    """Calibration ordering: evidence tokens (score 1) before all others (score 0)."""
    s = torch.zeros(n)
    s[list(evidence)] = 1.0
    return s
