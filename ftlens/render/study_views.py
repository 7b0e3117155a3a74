"""Views of a head study (:class:`ftlens.study.Study`), drawn like :mod:`.residual_views`
(matplotlib as inline SVG in a :class:`~ftlens.render.view.View`; CircuitsVis tokens for heatmaps).

- :func:`study_heatmap`: layer x head mean of a measure, its 95% interval width, and the top
  heads with their intervals;
- :func:`study_head_tokens`: one head's attribution over the prompt tokens of its strongest
  examples (among those whose stored rows include it: each example keeps its top ``rows`` heads);
- :func:`study_dla`: mean trace attribution vs mean DLA per head;
- :func:`study_causal`: mean drop in the target's log-prob per ablated head set, with intervals,
  and each set's difference to random and ratio (or why the ratio is undefined).

The study (a result) knows nothing about these; they read its tables.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np

from ..errors import SpanError
from .view import Part, View, figure_part, heading, note, pyplot

__all__ = ["study_heatmap", "study_head_tokens", "study_dla", "study_causal"]


def _grid(study: Any, measure: str, col: str) -> np.ndarray:
    rows = [r for r in study.head_summary if r["measure"] == measure]
    if not rows:
        have = sorted({r["measure"] for r in study.head_summary})
        raise SpanError(f"the study has no measure {measure!r}; it has {', '.join(have) or 'none'}")
    L = max(r["layer"] for r in rows) + 1
    H = max(r["head"] for r in rows) + 1
    g = np.full((L, H), np.nan)
    for r in rows:
        g[r["layer"], r["head"]] = r[col] if r[col] is not None else np.nan
    return g


def study_heatmap(study: Any, measure: str = "prompt", top: int = 15) -> Any:
    """Mean per (layer, head), the interval width, and the top heads with 95% intervals."""
    plt = pyplot()
    mean, lo, hi = (_grid(study, measure, c) for c in ("mean", "ci_low", "ci_high"))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.6), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    im = a1.imshow(mean.T, aspect="auto", cmap="viridis")
    a1.set(xlabel="layer", ylabel="head", title=f"mean {measure}")
    fig.colorbar(im, ax=a1, shrink=0.8)
    im = a2.imshow((hi - lo).T, aspect="auto", cmap="magma")
    a2.set(xlabel="layer", ylabel="head", title="95% interval width")
    fig.colorbar(im, ax=a2, shrink=0.8)
    rows = sorted([r for r in study.head_summary if r["measure"] == measure], key=lambda r: r["rank"])[:top]
    y = np.arange(len(rows))[::-1]
    a3.errorbar([r["mean"] for r in rows], y, xerr=[[r["mean"] - r["ci_low"] for r in rows],
                                                   [r["ci_high"] - r["mean"] for r in rows]], fmt="o", capsize=2)
    a3.set_yticks(y, [f"L{r['layer']}H{r['head']}  ({r['topk_freq']:.0%})" for r in rows], fontsize=7)
    a3.set(xlabel=f"mean {measure} (95% CI)", title=f"top {len(rows)} heads (top-k frequency)")
    fig.tight_layout()
    n = rows[0]["n"] if rows else 0
    text = (f"Route-weighted attribution per head ({measure}), mean over {n} examples; the interval is the "
            "two-sided 95% Student-t interval of the mean; the percentage is how often the head is in an "
            "example's own top-k.")
    return View([heading(f"Head study: {measure}"), figure_part(fig), note(text)], "Head study heatmap")


def study_head_tokens(study: Any, layer: int, head: int, n: int = 3) -> Any:
    """Token heatmaps of head ``(layer, head)`` on its ``n`` strongest stored examples."""
    score = {(r["key"]): r["prompt"] for r in study.head_scores if r["layer"] == layer and r["head"] == head}
    have = [r for r in study.token_rows if r["layer"] == layer and r["head"] == head]
    have.sort(key=lambda r: -score.get(r["key"], 0.0))
    parts = [heading(f"Head L{layer}H{head}: its strongest examples")]
    if not have:
        parts.append(note("No example stored this head's token row (each example keeps its top heads only; "
                          "raise rows= to keep more)."))
    for r in have[:n]:
        toks, vals = json.loads(r["tokens"]), json.loads(r["values"])
        vmax = max((abs(v) for v in vals), default=1.0) or 1.0
        parts.append(Part(html=f'<div class="ft-note">{r["key"]}: head total {score.get(r["key"], math.nan):.4f}</div>',
                          component="ColoredTokens",
                          props={"tokens": toks, "values": vals, "minValue": -vmax, "maxValue": vmax}))
    return View(parts, f"Head L{layer}H{head}")


def study_dla(study: Any, measure: str = "prompt", k: int = 5) -> Any:
    """Scatter of each head's mean trace attribution against its mean DLA, top-k of each labelled."""
    from ..study.stats import spearman, top_k  # the study package loads only when a study is drawn

    plt = pyplot()
    m, d = _grid(study, measure, "mean").flatten(), _grid(study, "dla", "mean").flatten()
    H = _grid(study, measure, "mean").shape[1]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(m, d, s=8, alpha=0.6)
    tm, td = set(top_k(list(m), k)), set(top_k(list(d), k))
    for i in tm | td:
        ax.annotate(f"L{i // H}H{i % H}", (m[i], d[i]), fontsize=7, color="C3" if i in tm & td else "k")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel=f"trace: mean {measure} attribution", ylabel="mean DLA",
           title=f"Spearman {spearman(list(m), list(d)):.2f}, top-{k} overlap {len(tm & td) / k:.2f}")
    fig.tight_layout()
    return View([heading("Trace vs DLA per head"), figure_part(fig),
                 note("Red labels: in both top-k lists. DLA: the head's direct write to the output span's summed "
                      "target logits (final-norm scale frozen).")], "Trace vs DLA")


def study_causal(study: Any) -> Any:
    """Mean drop in the target's log-prob per head set and k, zero and mean ablation, 95% intervals."""
    plt = pyplot()
    rows = study.causal_summary
    sets = list(dict.fromkeys(r["set"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows)) or ["zero", "mean"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rs = [r for r in rows if r["mode"] == mode]
        ks = sorted({r["k"] for r in rs})
        w = 0.8 / max(len(sets), 1)
        for j, s in enumerate(sets):
            for q, kk in enumerate(ks):
                r = next((x for x in rs if x["set"] == s and x["k"] == kk), None)
                if r is None:
                    continue
                ax.bar(q + j * w, r["mean_drop"], w, color=f"C{j}", label=s if q == 0 else None,
                       yerr=[[r["mean_drop"] - r["ci_low"]], [r["ci_high"] - r["mean_drop"]]], capsize=2)
        ax.set_xticks([q + w * (len(sets) - 1) / 2 for q in range(len(ks))], [f"k={x}" for x in ks])
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{mode}-ablation", ylabel="drop in log p(target span)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    from ..study.aggregate import causal_lines  # the study package loads only when a study is drawn

    lines = "".join(f"<li>{html.escape(x)}</li>" for x in causal_lines(rows))
    return View([heading("Causal validation"), figure_part(fig),
                 note("Drop = log p(span | clean) - log p(span | ablated), summed over the span; random: each "
                      "example's mean over its random head sets; bars: mean over examples, 95% interval. "
                      "The ratio to random is defined only when the random heads' mean drop is positive with a "
                      "95% interval that excludes 0; the paired difference is always shown."),
                 Part(html=f"<ul class='ft-note'>{lines}</ul>")],
                "Causal validation")
