"""Statistics of a head study, in plain Python (no scipy): confidence intervals, ranks,
top-k frequency and split-half stability.

- :func:`mean_ci`: mean, sample standard deviation ``s`` (``ddof=1``) and the two-sided
  Student-t interval ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)`` (one value: the interval
  is the value itself);
- :func:`t_quantile`: the Student-t quantile, by bisection on the exact CDF for integer degrees
  of freedom (Abramowitz & Stegun 26.7.3-4);
- :func:`spearman`: Pearson correlation of average ranks (ties share their mean rank);
- :func:`ratio_to_baseline`: ``mean / baseline mean``, defined only when the baseline is
  positive with a 95% interval that excludes 0 (else NaN and the reason);
- :func:`split_half`: for each of ``n_splits`` seeded random halvings of the examples, the
  Spearman correlation between the two halves' per-head means and the overlap of their top-k
  (``|top_k(A) & top_k(B)| / k``).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

__all__ = ["t_quantile", "mean_ci", "ranks", "spearman", "top_k", "split_half", "ratio_to_baseline"]


def _t_abs_cdf(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with integer ``df`` >= 1 (A&S 26.7.3 / 26.7.4)."""
    if t <= 0:
        return 0.0
    th = math.atan(t / math.sqrt(df))
    c2 = math.cos(th) ** 2
    if df % 2 == 1:
        s, term = 0.0, math.cos(th)
        if df > 1:
            s = term
            for j in range(3, df - 1, 2):  # terms cos^(j) with coefficients 2*4*../(3*5*..)
                term *= c2 * (j - 1) / j
                s += term
        return 2.0 / math.pi * (th + math.sin(th) * s)
    s, term = 1.0, 1.0
    for j in range(2, df - 1, 2):
        term *= c2 * (j - 1) / j
        s += term
    return math.sin(th) * s


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``0.5 < p < 1``) of Student's t with ``df`` degrees of freedom."""
    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1, got {p}")
    if df < 1:
        raise ValueError(f"t_quantile needs df >= 1, got {df}")
    if df > 5000:  # the series is long and t is the normal quantile to < 1e-4
        from statistics import NormalDist

        return NormalDist().inv_cdf(p)
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_abs_cdf(hi, df) < target:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_abs_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values: Sequence[float | int], level: float = 0.95) -> dict[str, float | int]:
    """``{"n", "mean", "sd", "ci_low", "ci_high"}`` of the finite ``values`` (NaN if none)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "sd": nan, "ci_low": nan, "ci_high": nan}
    mu = math.fsum(v) / n
    if n == 1:
        return {"n": 1, "mean": mu, "sd": 0.0, "ci_low": mu, "ci_high": mu}
    sd = math.sqrt(math.fsum((x - mu) ** 2 for x in v) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mu, "sd": sd, "ci_low": mu - half, "ci_high": mu + half}


def ranks(x: Sequence[float | int]) -> list[float]:
    """0-based ranks of ``x`` (ascending); tied values share their average rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for q in range(i, j + 1):
            r[order[q]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: Sequence[float | int], b: Sequence[float | int]) -> float:
    """Spearman's rank correlation (Pearson correlation of :func:`ranks`); NaN when constant."""
    if len(a) != len(b):
        raise ValueError("spearman needs two sequences of the same length")
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va > 0 and vb > 0 else float("nan")


def top_k(values: Sequence[float | int], k: int) -> list[int]:
    """Indices of the ``k`` largest values (ties: lower index first)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[: max(0, k)]


def _means(rows: list[Sequence[float | int]]) -> list[float]:
    return [math.fsum(col) / len(rows) for col in zip(*rows)]


def split_half(per_example: Sequence[Sequence[float | int]], k: int, n_splits: int = 20,
               seed: int = 0) -> list[dict[str, float | int]]:
    """Split-half stability of a per-head ranking.

    ``per_example[e][h]``: example ``e``'s value for head ``h``.  Split ``s`` shuffles the
    examples with ``random.Random(f"{seed}:{s}")`` and halves them (first ``n // 2`` vs the
    rest); returns per split ``{"split", "n_a", "n_b", "spearman", "overlap"}`` with
    ``overlap = |top_k(mean_A) & top_k(mean_B)| / k``.  Fewer than 2 examples: no rows.
    """
    n = len(per_example)
    if n < 2:
        return []
    out = []
    for s in range(n_splits):
        idx = list(range(n))
        random.Random(f"{seed}:{s}").shuffle(idx)
        a = [per_example[i] for i in idx[: n // 2]]
        b = [per_example[i] for i in idx[n // 2:]]
        ma, mb = _means(a), _means(b)
        kk = min(k, len(ma))
        overlap = len(set(top_k(ma, kk)) & set(top_k(mb, kk))) / max(kk, 1)
        out.append({"split": s, "n_a": len(a), "n_b": len(b), "spearman": spearman(ma, mb), "overlap": overlap})
    return out


def ratio_to_baseline(mean: float, baseline: dict[str, float | int]) -> tuple[float, str | None]:
    """``(mean / baseline["mean"], None)`` when the ratio means something, else ``(nan, reason)``.

    ``baseline`` is a :func:`mean_ci` result.  A ratio to a baseline whose mean is <= 0, or whose
    interval contains 0, or that has no interval (fewer than 2 values), is undefined: its sign and
    size say nothing about the effect (e.g. -1.83 for an effect larger than a baseline of -0.5).
    The paired difference is always defined and is reported beside it.
    """
    n, m, lo, hi = baseline["n"], baseline["mean"], baseline["ci_low"], baseline["ci_high"]
    if n < 2:
        return float("nan"), f"undefined: the random baseline has {n} example{'s' if n != 1 else ''}, no interval"
    if not m > 0:
        return float("nan"), f"undefined: the random heads' mean drop is {m:.3g} (<= 0)"
    if not lo > 0:
        return float("nan"), f"undefined: the random heads' 95% interval [{lo:.3g}, {hi:.3g}] contains 0"
    return mean / m, None
