"""Views of the residual-stream analyses (:mod:`ftlens.residual`), drawn with matplotlib as inline SVG.

Logit lens, direct logit attribution, a trace's component shares per layer, and trace
attribution vs DLA.  Each takes the analysis' result object (duck-typed: the record knows no
renderer) and returns a :class:`~ftlens.render.view.View`.  matplotlib is imported on first use.
"""

from __future__ import annotations

from typing import Any

import torch

from .view import HEAD_UNIT, Part, View, figure_part, heading, note, pyplot

__all__ = ["logit_lens_view", "dla_view", "component_shares_view", "comparison_view"]


def logit_lens_view(lens: Any) -> View:
    """Mean target log-prob per layer (line) and per token per layer (heatmap).

    The embedding layer (``L0``) is often far below the rest; it is drawn off-scale
    (value annotated) so the later layers stay readable.
    """
    plt = pyplot()
    lp = lens.logprob
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3), gridspec_kw={"width_ratios": [1, 1.2]})
    ax1.plot(range(len(lp)), lp.numpy(), marker="o", ms=3)
    low = float(lp[1:].min()) if lp.numel() > 1 else float(lp.min())
    if float(lp[0]) < low - 10:
        ax1.set_ylim(low - 3, max(0.5, float(lp.max()) + 0.5))
        ax1.annotate(f"L0: {float(lp[0]):.0f} (off scale)", (0, low - 2.5), fontsize=8)
    ax1.set_xlabel("layer (block input; last = final output)")
    ax1.set_ylabel("mean log p(target)")
    ax1.grid(alpha=0.3)
    tl = lens.token_logprob.clamp_min(low - 3).T.numpy()
    im = ax2.imshow(tl, aspect="auto", cmap="viridis")
    ax2.set_yticks(range(len(lens.tokens)), [repr(t) for t in lens.tokens], fontsize=7)
    ax2.set_xlabel("layer")
    ax2.set_title("log p(token) per layer", fontsize=9)
    fig.colorbar(im, ax=ax2, shrink=0.8)
    fig.tight_layout()
    return View([heading("Logit lens"), figure_part(fig)], "Logit lens")


def dla_view(dla: Any) -> View:
    """Heatmap of per-head DLA (diverging) and per-layer attention / MLP bars."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 1.4]})
    m = float(dla.heads.abs().max()) or 1.0
    im = ax1.imshow(dla.heads.T.numpy(), cmap="RdBu", vmin=-m, vmax=m, aspect="auto")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("head")
    ax1.set_title("DLA per head")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    x = torch.arange(dla.mlp.numel()).numpy()
    ax2.bar(x - 0.2, dla.attn.numpy(), 0.4, label="attention")
    ax2.bar(x + 0.2, dla.mlp.numpy(), 0.4, label="MLP")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xlabel("layer")
    ax2.set_title("DLA per layer")
    ax2.legend(fontsize=8)
    text = (f"Summed target logits {dla.total:.3f} = embeddings {dla.embed:.3f} + heads "
            f"{float(dla.heads.sum()):.3f} + MLPs {float(dla.mlp.sum()):.3f} + biases "
            f"{float(dla.attn_bias.sum()) + dla.unembed_bias + dla.norm_bias:.3f} (gap {dla.gap:.2e}); "
            "final-norm scale frozen at its actual value.")
    return View([heading("Direct logit attribution"), figure_part(fig), note(text)], "DLA")


def component_shares_view(shares: Any) -> View:
    """Stacked per-layer shares (heads / residual / bias) and the MLP share as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    x = torch.arange(shares.head_share.numel()).numpy()
    ax.bar(x, shares.head_share.numpy(), label="heads")
    ax.bar(x, shares.residual.numpy(), bottom=shares.head_share.numpy(), label="residual")
    ax.bar(x, shares.bias.numpy(), bottom=(shares.head_share + shares.residual).numpy(), label="bias")
    ax.plot(x, shares.mlp.numpy(), "k.-", label="MLP share (reported)")
    ax.set_xlabel("layer")
    ax.set_ylabel("share")
    ax.set_title(f"Trace component shares, hop {shares.hop}")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return View([heading("Component shares per layer"), figure_part(fig)], "Component shares")


def comparison_view(cmp: Any) -> View:
    """Scatter of trace head mass vs DLA, per-layer attention shares, and a top-k table."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.scatter(cmp.trace_mass.flatten().numpy(), cmp.dla.flatten().numpy(), s=8, alpha=0.6)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xlabel(f"trace: {HEAD_UNIT} per head")
    ax1.set_ylabel("DLA per head")
    ax1.set_title(f"Spearman {cmp.spearman:.2f}, top-{cmp.k} overlap {cmp.overlap:.2f}")
    x = torch.arange(cmp.layer_attn_trace.numel()).numpy()
    ax2.plot(x, cmp.layer_attn_trace.numpy(), ".-", label="trace: heads' share of the layer's update")
    ax2.plot(x, cmp.layer_attn_dla.numpy(), ".-", label="DLA: |attn|/(|attn|+|MLP|)")
    ax2.set_xlabel("layer")
    ax2.legend(fontsize=8)
    rows = "".join(
        f"<tr><td>L{l}H{h}</td><td>{m:.4f}</td><td>{d:+.3f}</td><td>{r}</td></tr>" for l, h, m, d, r in cmp.rows()
    )
    table = (f'<table class="ft-table"><tr><th>head</th><th>trace {HEAD_UNIT}</th><th>DLA</th><th>DLA rank</th></tr>'
             f"{rows}</table>")
    caption = note(f"Heads ranked by {HEAD_UNIT} (the ranking of <code>Trace.top_heads</code>): each head's share of "
                   "the span's update, over every source, times its layer's route weight to the output "
                   "(<code>Trace.route_weights</code>). DLA: the head's direct write to the summed target logits.")
    return View([heading("Trace attribution vs direct logit attribution"), figure_part(fig), caption, Part(html=table)],
                "Trace vs DLA")
