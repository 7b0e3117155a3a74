"""Views of one trace: token heatmap, per-hop and per-head channels, layer x head grid, recursion flow, top table.

Each function takes a :class:`ftlens.result.Trace` and returns a :class:`~ftlens.render.view.View`;
the head grid's click behaviour is the packaged ``head_grid.js``, fed its values as JSON.
"""

from __future__ import annotations

import html
import uuid
import torch
from jaxtyping import Float
from torch import Tensor

from ..result import Trace
from ..segments import role_runs
from .view import (HEAD_UNIT, ROLE_COLORS, Part, View, color, display_tokens, heading, note, script, sig,
                   to_json)

__all__ = [
    "relayed_values",
    "token_heatmap",
    "hop_channels",
    "head_channels",
    "head_grid",
    "recursion_flow",
    "top_table",
]


def _legend() -> Part:
    spans = "".join(
        f'<span style="background:{c}">{r}</span>' for r, c in ROLE_COLORS.items() if r != "other"
    )
    return Part(html=f'<div class="ft-legend">{spans}</div>')


# ---------------------------------------------------------------------- trace views
def relayed_values(trace: Trace) -> Float[Tensor, "hop pos"] | None:
    """``mu_k[s]`` per hop (:meth:`Trace.relayed_mass`) when the trace recursed through a
    reasoning span (method ``flashtrace``, per-hop pending mass stored), else ``None``.

    ``mu_k[s]`` is the share of the answer's attribution (which totals 1) that reasoning token
    ``s`` holds after hop ``k`` and hands on to hop ``k + 1``; ``sum_s mu_k[s]`` is the
    thinking ratio of hop ``k``.  Summed over hops it is the mass the token relays in all.
    """
    if trace.method != "flashtrace" or trace.reasoning is None or not trace.hops:
        return None
    if any(getattr(h, "pending", None) is None for h in trace.hops):
        return None
    return trace.relayed_mass().float()


def token_heatmap(
    trace: Trace,
    values: Float[Tensor, " pos"] | None = None,
    *,
    title: str = "Token attribution",
    show_template: bool = True,
    relayed: bool = True,
) -> View:
    """Scores over the whole sequence, one CircuitsVis ``ColoredTokens`` per role run.

    Runs of prompt / reasoning / output (and chat template) are styled by role (coloured
    left border and label); they share one colour scale ``[0, max score]``.  With
    ``relayed`` (default) and a trace that recursed through a reasoning span, the reasoning
    runs are coloured instead by the mass they relay, ``sum_k mu_k[s]``
    (:func:`relayed_values`), in orange on a scale of their own ``[0, max relayed]``
    (the final scores are zero there: FlashTrace hands that mass on to the inputs).
    """
    vals = (trace.scores if values is None else values).float()
    mu = relayed_values(trace) if (relayed and values is None) else None
    mu_sum = mu.sum(0) if mu is not None else None
    vmax = _scale_max(trace, vals, skip_reasoning=mu_sum is not None)
    toks = display_tokens(trace.tokens)
    parts = [heading(title), _legend()]
    if mu_sum is not None:
        r0, r1 = trace.reasoning
        rmax = float(mu_sum[r0:r1].max()) if r1 > r0 else 0.0
        parts.append(note(
            f"Prompt, template and output tokens: final scores (purple, scale 0..{vmax:.3g}). "
            f"<b>Reasoning tokens</b> (orange, own scale 0..{rmax:.3g}): the answer's mass each one relays, "
            f"&Sigma;<sub>k</sub> &mu;<sub>k</sub>[s] summed over hops 0..{len(mu) - 1} "
            f"(<code>Trace.relayed_mass().sum(0)</code>), in the unit of the scores: a share of the answer's "
            f"attribution, which totals 1. Their sum over the reasoning is the sum of the thinking ratios, "
            f"{float(mu_sum.sum()):.3f}."
        ))
    for a, b, role in role_runs(trace.roles):
        if role == "template" and not show_template:
            continue
        role_color = ROLE_COLORS.get(role, "#7f7f7f")
        label = f"{role} {a}:{b}"
        props = {"tokens": toks[a:b], "values": vals[a:b], "minValue": -vmax, "maxValue": vmax}
        if mu_sum is not None and role == "reasoning":
            rmax = float(mu_sum[a:b].abs().max()) if b > a else 0.0
            rmax = rmax if rmax > 0 else 1.0
            label += " · relayed mass"
            props = {"tokens": toks[a:b], "values": mu_sum[a:b], "minValue": -rmax, "maxValue": rmax,
                     "positiveColor": ROLE_COLORS["reasoning"]}
        parts.append(
            Part(
                html=f'<div class="ft-run ft-run-{role}" style="border-color:{role_color}">'
                f'<span class="ft-label" style="color:{role_color}">{label}</span></div>',
                component="ColoredTokens",
                props=props,
            )
        )
    return View(parts, title)


def _scale_max(trace: Trace, vals: Tensor, skip_reasoning: bool = False) -> float:
    """Colour-scale bound: the largest |value| off the chat template (attention-sink tokens
    such as ``<|im_start|>`` would otherwise wash out the prompt); larger values saturate.
    ``skip_reasoning``: the reasoning runs have a scale of their own (relayed mass)."""
    drop = {"template", "reasoning"} if skip_reasoning else {"template"}
    keep = [i for i, r in enumerate(trace.roles) if r not in drop]
    sub = vals[keep] if keep else vals
    return float(sub.abs().max()) if sub.numel() and float(sub.abs().max()) > 0 else 1.0


def _first_text(trace: Trace) -> int:
    """First position of the user's prompt (multi-channel views start there)."""
    pos = trace.prompt_positions
    return pos[0] if pos else 0


def _multi(trace: Trace, channels: Float[Tensor, "pos channel"], labels: list[str], upto: int) -> Part:
    a = _first_text(trace)
    return Part(
        component="ColoredTokensMulti",
        props={"tokens": display_tokens(trace.tokens[a:upto]), "values": channels[a:upto], "labels": labels},
    )


def hop_channels(trace: Trace, relayed: bool = True) -> View:
    """One channel per recursion hop (its contribution to the final scores), plus the total.

    With ``relayed`` (default) and a trace that recursed through a reasoning span, one more
    channel per hop, ``relayed k``: ``mu_k`` (the mass hop ``k`` leaves on the reasoning tokens
    and hands to hop ``k + 1``), and ``relayed Σ``, their sum over hops.
    """
    cols = [h.scores.float() for h in trace.hops] + [trace.scores.float()]
    labels = [f"hop {k}" for k in range(len(trace.hops))] + ["final"]
    mu = relayed_values(trace) if relayed else None
    text = ("Hover a label to colour the tokens by that hop; hover a token to see every hop's value. "
            "Shown from the first prompt token to the end of the output.")
    if mu is not None:
        cols += [m for m in mu] + [mu.sum(0)]
        labels += [f"relayed {k}" for k in range(len(mu))] + ["relayed Σ"]
        text += (" Channels <b>relayed k</b>: &mu;<sub>k</sub>[s], the answer's mass that reasoning token s "
                 "holds after hop k and hands on to hop k+1 (<code>Trace.relayed_mass()</code>; a share of "
                 "the answer's attribution, which totals 1; each channel sums to that hop's thinking ratio); "
                 "<b>relayed Σ</b>: their sum over hops. Each channel has its own colour scale.")
    upto = trace.output[1]
    return View(
        [heading("Per-hop contributions"), note(text), _multi(trace, torch.stack(cols, 1), labels, upto)],
        "Per-hop contributions",
    )


def head_channels(trace: Trace, k: int = 8, where: str = "prompt") -> View:
    """One channel per top-``k`` (layer, head): its attribution to every position."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        from ..errors import TraceError

        raise TraceError(f"k must be an integer >= 1 (the number of heads to show), got {k!r}")
    heads = trace.top_heads(k, where=where)
    att = trace.head_attribution_routed
    cols = torch.stack([att[h.layer, h.head].float() for h in heads], 1)
    labels = [f"L{h.layer}H{h.head}" for h in heads]
    return View(
        [heading(f"Top-{len(heads)} heads"),
         note(f"One channel per (layer, head), ranked by {HEAD_UNIT} on {where} tokens "
              "(<code>Trace.top_heads</code>); each channel shows that head's route-weighted attribution to "
              "every token (<code>Trace.head_attribution_routed</code>), so its sum over the "
              f"{where} tokens is the ranking score."),
         _multi(trace, cols, labels, trace.inputs_end)],
        "Top heads",
    )


def head_grid(trace: Trace, where: str = "prompt", *, digits: int = 4) -> View:
    """Layer x head grid of route-weighted attribution mass on ``where`` tokens; click a cell for its heatmap.

    Cell ``(l, h)`` is coloured by ``sum_{s in where} head_attribution_routed[l, h, s]``, the
    score :meth:`Trace.top_heads` ranks by (README "Ranking heads"), and the grid opens on
    ``top_heads(1, where)``.  The page carries every head's per-token routed attribution
    (``digits`` significant digits); clicking renders a CircuitsVis ``ColoredTokens`` of it.
    """
    pos = trace.positions(where)
    att = trace.head_attribution_routed.float()
    mass = att[:, :, pos].sum(-1)
    vmax = float(mass.max())
    n_l, n_h = mass.shape
    top = trace.top_heads(1, where=where)[0]
    gid = "ftgrid-" + uuid.uuid4().hex[:10]
    a, upto = _first_text(trace), trace.inputs_end
    data = {
        "tokens": display_tokens(trace.tokens[a:upto]),
        "values": [[[sig(float(x), digits) for x in att[l, h, a:upto]] for h in range(n_h)] for l in range(n_l)],
    }
    rows = ["<tr><th></th>" + "".join(f"<th>H{h}</th>" for h in range(n_h)) + "</tr>"]
    for l in range(n_l):
        cells = "".join(
            f'<td data-l="{l}" data-h="{h}" data-v="{float(mass[l, h])!r}" title="L{l}H{h}: {float(mass[l, h]):.4g}" '
            f'style="background:{color(float(mass[l, h]), vmax)}"></td>'
            for h in range(n_h)
        )
        rows.append(f"<tr><th>L{l}</th>{cells}</tr>")
    options = {"id": gid, "unit": HEAD_UNIT, "top": [top.layer, top.head]}
    js = script("head_grid.js", data=to_json(data, allow_nan=True), options=to_json(options))
    script_html = f"<script>{js}</script>"
    table = (
        f'<table class="ft-grid" id="{gid}">{"".join(rows)}</table>'
        f'<div class="ft-note">Selected: <b id="{gid}-lab"></b></div><div id="{gid}-out"></div>'
    )
    return View(
        [heading("Layer × head attribution"),
         note(f"Colour: each (layer, head)'s {HEAD_UNIT} on {where} tokens (darker = more): its attribution "
              "weighted by how much of the output its layer's attention still is, the score "
              "<code>Trace.top_heads</code> and the top-heads table rank by. Click a cell to see that head's "
              f"token heatmap; the grid opens on the top-ranked head, L{top.layer}H{top.head}."),
         Part(html=table + script_html)],
        "Layer x head grid",
    )


def _bar(segments: list[tuple[str, float, str]]) -> str:
    total = sum(max(v, 0.0) for _, v, _ in segments) or 1.0
    divs = "".join(
        f'<div style="width:{100 * max(v, 0.0) / total:.2f}%;background:{c}" title="{html.escape(n)}: {v:.3f}">'
        f"{html.escape(n)} {v:.2f}</div>"
        for n, v, c in segments
    )
    return f'<div class="ft-bar">{divs}</div>'


def recursion_flow(trace: Trace) -> View:
    """Mass flow of the recursion: output -> (inputs | reasoning | output), then per hop.

    Hop 0 splits the output span's attribution into inputs (final), reasoning (pending,
    ``thinking_ratio[0]``) and the output itself; hop ``k`` re-attributes the pending
    mass ``|mu_{k-1}|`` to inputs and reasoning again.  Thinking ratios are ``|mu_k|``.
    """
    parts = [heading("Recursion: prompt ← reasoning ← output")]
    if trace.method != "flashtrace" or trace.reasoning is None:
        parts.append(note(f"method {trace.method}: no recursion through a reasoning span"))
        return View(parts, "Recursion")
    rows, pending = [], 1.0
    for k, hop in enumerate(trace.hops):
        to_in = float(hop.scores.sum())
        to_r = hop.thinking_ratio
        other = max(pending - to_in - to_r, 0.0)
        src = "output" if k == 0 else "reasoning"
        segs = [("inputs", to_in, ROLE_COLORS["prompt"]), ("reasoning", to_r, ROLE_COLORS["reasoning"])]
        segs.append(("output" if k == 0 else "other", other, ROLE_COLORS["output"] if k == 0 else "#aaa"))
        rows.append(
            f"<tr><td>hop {k}</td><td>{src} ({pending:.3f})</td><td>{to_in:.3f}</td><td>{to_r:.3f}</td>"
            f'<td style="text-align:left">{_bar(segs)}</td></tr>'
        )
        pending = to_r
    table = (
        '<table class="ft-table"><tr><th>hop</th><th>from (mass)</th><th>→ inputs</th>'
        "<th>→ reasoning (thinking ratio)</th><th>split</th></tr>" + "".join(rows) + "</table>"
    )
    final = (
        f"final mass on inputs <b>{float(trace.scores.sum()):.3f}</b>, on the output itself "
        f"<b>{trace.output_mass:.3f}</b>, unresolved on reasoning <b>{trace.unresolved:.3f}</b> "
        f"(they sum to 1). Thinking ratios: {', '.join(f'{r:.3f}' for r in trace.thinking_ratios)}."
    )
    if trace.params.get("handoff") == "target":
        final += (" With <code>handoff=\"target\"</code> the pending mass is on every target token, the "
                  "answer's own included (the column \"→ reasoning\" and \"unresolved\" count it; the output "
                  "itself keeps none).")
    return View(parts + [Part(html=table), note(final)], "Recursion")


def top_table(trace: Trace, k: int = 10, where: str = "prompt") -> View:
    """Top-``k`` tokens and top-``k`` (layer, head) pairs as HTML tables."""
    tok_rows = "".join(
        f"<tr><td>{r}</td><td>{t.pos}</td><td style='text-align:left'><code>{html.escape(repr(t.token))}</code>"
        f"</td><td>{t.score:.4f}</td></tr>"
        for r, t in enumerate(trace.top(k, where=where), 1)
    )
    head_rows = "".join(
        f"<tr><td>{r}</td><td>{h.layer}</td><td>{h.head}</td><td>{h.score:.4f}</td></tr>"
        for r, h in enumerate(trace.top_heads(k, where=where), 1)
    )
    html_ = (
        '<table class="ft-table ft-top-tokens"><tr><th>rank</th><th>pos</th><th>token</th><th>score</th></tr>'
        f"{tok_rows}</table>"
        '<table class="ft-table ft-top-heads"><tr><th>rank</th><th>layer</th><th>head</th>'
        f"<th>{HEAD_UNIT}</th></tr>{head_rows}</table>"
    )
    return View([heading(f"Top {k} ({where} tokens)"), Part(html=html_), _mass_note(trace, where)], "Top-k")


def _mass_note(trace: Trace, where: str = "prompt") -> Part:
    """The inputs' final mass split by role, and (for a prompt-only table) the template tokens holding mass."""
    text = (
        f"Final mass on the inputs <b>{float(trace.scores[: trace.inputs_end].sum()):.3f}</b>: "
        f"user prompt <b>{trace.prompt_mass:.3f}</b>, {trace.template_label} <b>{trace.template_mass:.3f}</b>, "
        f"other <b>{trace.other_mass:.3f}</b>."
    )
    template = [t for t in trace.top_template(3) if t.score > 0] if where == "prompt" else []
    if template:
        toks = ", ".join(f"<code>{html.escape(repr(t.token))}</code>@{t.pos} {t.score:.4f}" for t in template)
        text += (
            f" {'Chat-template' if trace.template_label == 'chat template' else 'Special'} tokens holding the most "
            f"mass (not in the token table, which ranks the user's "
            f'prompt): {toks}; <code>tr.top(k, where="input")</code> ranks every input token.'
        )
    return note(text)
