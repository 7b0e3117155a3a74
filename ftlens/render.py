"""Views of a trace, offline: CircuitsVis components, plain HTML/SVG, standalone pages.

CircuitsVis' own objects ping google.com when shown (to choose between its inlined
bundle and a CDN) and their ``str()`` always points at the CDN.  ftlens never calls
that code: it reads CircuitsVis' prebuilt bundle (``circuitsvis/dist/cdn/iife.js``)
from disk and emits

- in a notebook (``View._repr_html_``): the bundle inlined once per output cell, so
  a saved notebook still renders offline (``set_inline(False)`` switches to the CDN);
- in a standalone page (:func:`page`, :func:`write_html`): the bundle inlined ONCE in
  the page, then one small ``CircuitsVis.render(...)`` call per figure.

The bundle is loaded as a classic ``<script>`` (it defines the global ``CircuitsVis``);
nothing here touches the network.  A :class:`View` is a list of parts: CircuitsVis
components (``name`` + props) and static HTML; views compose with ``+`` or :func:`page`.
"""

from __future__ import annotations

import functools
import html
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .fileio import atomic_write_text
from .result import Trace

__all__ = [
    "View",
    "page",
    "set_inline",
    "token_heatmap",
    "hop_channels",
    "head_channels",
    "head_grid",
    "recursion_flow",
    "top_table",
    "trace_page",
    "write_html",
    "logit_lens_view",
    "dla_view",
    "component_shares_view",
    "comparison_view",
]

ROLE_COLORS = {"template": "#9e9e9e", "prompt": "#1f77b4", "reasoning": "#ff7f0e", "output": "#2ca02c",
               "other": "#7f7f7f"}
_INLINE = True
#: The one head ranking every view uses (``Trace.top_heads`` default, README "Ranking heads").
HEAD_UNIT = "route-weighted mass"
CSS = """
.ftlens{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;max-width:1100px}
.ftlens h2{font-size:1.15em;margin:1.2em 0 .3em}.ftlens h3{font-size:1em;margin:.8em 0 .2em}
.ftlens .ft-note{color:#555;font-size:.85em;margin:.2em 0 .5em}
.ftlens .ft-run{border-left:5px solid #999;padding:0 0 0 8px;margin:4px 0}
.ftlens .ft-run>.ft-label{font-size:.75em;font-weight:600;text-transform:uppercase;letter-spacing:.04em}
.ftlens .ft-run-template{opacity:.55}
.ftlens table.ft-table{border-collapse:collapse;font-size:.85em;margin:.3em 1em .3em 0;display:inline-table;vertical-align:top}
.ftlens table.ft-table td,.ftlens table.ft-table th{border:1px solid #ddd;padding:2px 6px;text-align:right}
.ftlens table.ft-grid td{width:22px;height:14px;border:1px solid #fff;cursor:pointer;padding:0}
.ftlens table.ft-grid td.ft-sel{outline:2px solid #d62728}
.ftlens table.ft-grid th{font-size:.7em;font-weight:400;color:#555;padding:0 3px}
.ftlens .ft-bar{display:flex;height:20px;width:600px;border:1px solid #ccc;margin:2px 0}
.ftlens .ft-bar>div{height:100%;font-size:.7em;color:#fff;overflow:hidden;white-space:nowrap;padding-left:3px}
.ftlens .ft-legend span{display:inline-block;padding:0 6px;margin-right:6px;color:#fff;font-size:.8em;border-radius:3px}
.ftlens code{background:#f4f4f4;padding:0 3px}
"""


def set_inline(inline: bool = True) -> None:
    """Notebook rendering: inline the CircuitsVis bundle (default, offline-safe) or use the CDN."""
    global _INLINE
    _INLINE = bool(inline)


@functools.lru_cache(maxsize=1)
def bundle_js() -> str:
    """CircuitsVis' prebuilt browser bundle, read from the installed package (no network)."""
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or spec.origin is None:  # pragma: no cover
        raise ImportError("circuitsvis is not installed")
    path = Path(spec.origin).parent / "dist" / "cdn" / "iife.js"
    return _script_safe(path.read_text(encoding="utf-8"))


def _cv_version() -> str:
    from importlib.metadata import version

    return version("circuitsvis")


def _script_safe(text: str) -> str:
    """Make text safe inside ``<script>``: no ``</script>`` / ``<!--`` can end it early."""
    return text.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def _props_json(props: dict[str, Any]) -> str:
    def conv(v: Any) -> Any:
        if isinstance(v, Tensor):
            return v.detach().float().cpu().tolist()
        if hasattr(v, "tolist"):
            return v.tolist()
        return v

    clean = {k: conv(v) for k, v in props.items() if v is not None}
    return _script_safe(json.dumps(clean, ensure_ascii=False, allow_nan=False))


# ---------------------------------------------------------------------- View
@dataclass
class Part:
    """One piece of a view: a CircuitsVis component (``component`` + ``props``) or ``html``."""

    html: str = ""
    component: str | None = None
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class View:
    """A renderable figure: shows itself in Jupyter and writes standalone offline HTML."""

    parts: list[Part]
    title: str = ""

    def __repr__(self) -> str:
        kinds = [p.component or "html" for p in self.parts]
        return f"View({self.title!r}, parts={kinds})"

    def __add__(self, other: "View") -> "View":
        return View(self.parts + other.parts, self.title or other.title)

    def body(self, *, cdn: bool = False) -> str:
        """The page body: HTML parts and one render call per CircuitsVis part."""
        out = ['<div class="ftlens">']
        for p in self.parts:
            if p.component is None:
                out.append(p.html)
                continue
            uid = "ftcv-" + uuid.uuid4().hex[:12]
            props = _props_json(p.props)
            out.append(p.html)
            out.append(f'<div id="{uid}" class="ft-cv" data-component="{p.component}"></div>')
            if cdn:
                out.append(
                    f'<script type="module">import {{ render, {p.component} }} from '
                    f'"https://unpkg.com/circuitsvis@{_cv_version()}/dist/cdn/esm.js";'
                    f'render("{uid}", {p.component}, {props});</script>'
                )
            else:
                out.append(f'<script>CircuitsVis.render("{uid}", CircuitsVis.{p.component}, {props});</script>')
        out.append("</div>")
        return "\n".join(out)

    def needs_bundle(self) -> bool:
        return any(p.component is not None for p in self.parts) or any("CircuitsVis." in p.html for p in self.parts)

    def fragment(self, *, inline: bool | None = None) -> str:
        """HTML for a notebook output cell: CSS, the bundle once (if inline), the body."""
        inline = _INLINE if inline is None else inline
        head = f"<style>{CSS}</style>"
        if inline and self.needs_bundle():
            head += f"<script>{bundle_js()}</script>"
        return head + self.body(cdn=not inline)

    def _repr_html_(self) -> str:
        return self.fragment()

    def html(self) -> str:
        """A standalone page: the bundle inlined once, works from ``file://`` offline."""
        bundle = f"<script>{bundle_js()}</script>" if self.needs_bundle() else ""
        title = html.escape(self.title or "ftlens")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style>{bundle}</head>\n<body>\n"
            f"{self.body()}\n</body></html>\n"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`html` atomically."""
        return atomic_write_text(path, self.html())


def page(*views: View, title: str = "ftlens") -> View:
    """Several views as one page (one bundle)."""
    parts: list[Part] = []
    for v in views:
        parts += v.parts
    return View(parts, title)


def _h(text: str, level: int = 2) -> Part:
    return Part(html=f"<h{level}>{html.escape(text)}</h{level}>")


def _note(text: str) -> Part:
    return Part(html=f'<div class="ft-note">{text}</div>')


def _display_tokens(tokens: Sequence[str]) -> list[str]:
    """Make whitespace visible: newline as '↵', keep other text."""
    return [t.replace("\n", "↵") if t.strip() == "" or "\n" in t else t for t in tokens]


def _runs(roles: Sequence[str]) -> list[tuple[str, int, int]]:
    runs: list[tuple[str, int, int]] = []
    for i, r in enumerate(roles):
        if runs and runs[-1][0] == r:
            runs[-1] = (r, runs[-1][1], i + 1)
        else:
            runs.append((r, i, i + 1))
    return runs


def _legend() -> Part:
    spans = "".join(
        f'<span style="background:{c}">{r}</span>' for r, c in ROLE_COLORS.items() if r != "other"
    )
    return Part(html=f'<div class="ft-legend">{spans}</div>')


# ---------------------------------------------------------------------- trace views
def token_heatmap(
    trace: Trace,
    values: Float[Tensor, " pos"] | None = None,
    *,
    title: str = "Token attribution",
    show_template: bool = True,
) -> View:
    """Scores over the whole sequence, one CircuitsVis ``ColoredTokens`` per role run.

    Runs of prompt / reasoning / output (and chat template) are styled by role (coloured
    left border and label); all runs share one colour scale ``[0, max score]``.
    """
    vals = (trace.scores if values is None else values).float()
    vmax = _scale_max(trace, vals)
    toks = _display_tokens(trace.tokens)
    parts = [_h(title), _legend()]
    for role, a, b in _runs(trace.roles):
        if role == "template" and not show_template:
            continue
        color = ROLE_COLORS.get(role, "#7f7f7f")
        parts.append(
            Part(
                html=f'<div class="ft-run ft-run-{role}" style="border-color:{color}">'
                f'<span class="ft-label" style="color:{color}">{role} {a}:{b}</span></div>',
                component="ColoredTokens",
                props={"tokens": toks[a:b], "values": vals[a:b], "minValue": -vmax, "maxValue": vmax},
            )
        )
    return View(parts, title)


def _scale_max(trace: Trace, vals: Tensor) -> float:
    """Colour-scale bound: the largest |value| off the chat template (attention-sink tokens
    such as ``<|im_start|>`` would otherwise wash out the prompt); larger values saturate."""
    keep = [i for i, r in enumerate(trace.roles) if r != "template"]
    sub = vals[keep] if keep else vals
    return float(sub.abs().max()) if sub.numel() and float(sub.abs().max()) > 0 else 1.0


def _first_text(trace: Trace) -> int:
    """First position of the user's prompt (multi-channel views start there)."""
    pos = trace.prompt_positions
    return pos[0] if pos else 0


def _multi(trace: Trace, channels: Float[Tensor, "pos k"], labels: list[str], upto: int) -> Part:
    a = _first_text(trace)
    return Part(
        component="ColoredTokensMulti",
        props={"tokens": _display_tokens(trace.tokens[a:upto]), "values": channels[a:upto], "labels": labels},
    )


def hop_channels(trace: Trace) -> View:
    """One channel per recursion hop (its contribution to the final scores), plus the total."""
    cols = [h.scores.float() for h in trace.hops] + [trace.scores.float()]
    labels = [f"hop {k}" for k in range(len(trace.hops))] + ["final"]
    upto = trace.output[1]
    return View(
        [_h("Per-hop contributions"),
         _note("Hover a label to colour the tokens by that hop; hover a token to see every hop's value. "
               "Shown from the first prompt token to the end of the output."),
         _multi(trace, torch.stack(cols, 1), labels, upto)],
        "Per-hop contributions",
    )


def head_channels(trace: Trace, k: int = 8, where: str = "prompt") -> View:
    """One channel per top-``k`` (layer, head): its attribution to every position."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        from .errors import TraceError

        raise TraceError(f"k must be an integer >= 1 (the number of heads to show), got {k!r}")
    heads = trace.top_heads(k, where=where)
    att = trace.head_attribution_routed
    cols = torch.stack([att[h.layer, h.head].float() for h in heads], 1)
    labels = [f"L{h.layer}H{h.head}" for h in heads]
    return View(
        [_h(f"Top-{len(heads)} heads"),
         _note(f"One channel per (layer, head), ranked by {HEAD_UNIT} on {where} tokens "
               "(<code>Trace.top_heads</code>); each channel shows that head's route-weighted attribution to "
               "every token (<code>Trace.head_attribution_routed</code>), so its sum over the "
               f"{where} tokens is the ranking score."),
         _multi(trace, cols, labels, trace.inputs_end)],
        "Top heads",
    )


def _color(v: float, vmax: float) -> str:
    x = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
    r, g, b = (int(255 - x * (255 - c)) for c in (8, 81, 156))
    return f"rgb({r},{g},{b})"


def _sig(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant digits (route-weighted values can be ~1e-6)."""
    return float(f"{x:.{digits}g}")


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
        "tokens": _display_tokens(trace.tokens[a:upto]),
        "values": [[[_sig(float(x), digits) for x in att[l, h, a:upto]] for h in range(n_h)] for l in range(n_l)],
    }
    rows = ["<tr><th></th>" + "".join(f"<th>H{h}</th>" for h in range(n_h)) + "</tr>"]
    for l in range(n_l):
        cells = "".join(
            f'<td data-l="{l}" data-h="{h}" data-v="{float(mass[l, h])!r}" title="L{l}H{h}: {float(mass[l, h]):.4g}" '
            f'style="background:{_color(float(mass[l, h]), vmax)}"></td>'
            for h in range(n_h)
        )
        rows.append(f"<tr><th>L{l}</th>{cells}</tr>")
    script = f"""<script>(function(){{
var D={_script_safe(json.dumps(data, ensure_ascii=False))};
var grid=document.getElementById("{gid}"), out=document.getElementById("{gid}-out"),
    lab=document.getElementById("{gid}-lab");
function show(td){{
  grid.querySelectorAll("td.ft-sel").forEach(function(c){{c.classList.remove("ft-sel");}});
  td.classList.add("ft-sel");
  var l=+td.dataset.l,h=+td.dataset.h,vals=D.values[l][h],m=0;
  vals.forEach(function(v){{m=Math.max(m,Math.abs(v));}});
  lab.textContent="Layer "+l+", head "+h+" ({HEAD_UNIT} "+td.title.split(": ")[1]+")";
  out.innerHTML=""; var d=document.createElement("div"); d.id="{gid}-cv"+l+"_"+h+"_"+Date.now(); out.appendChild(d);
  if(typeof CircuitsVis!=="undefined"){{CircuitsVis.render(d.id,CircuitsVis.ColoredTokens,
    {{tokens:D.tokens,values:vals,minValue:-(m||1),maxValue:(m||1)}});}}
}}
grid.addEventListener("click",function(e){{var td=e.target.closest("td");if(td)show(td);}});
var first=grid.querySelector('td[data-l="{top.layer}"][data-h="{top.head}"]');
if(first)show(first);
}})();</script>"""
    table = (
        f'<table class="ft-grid" id="{gid}">{"".join(rows)}</table>'
        f'<div class="ft-note">Selected: <b id="{gid}-lab"></b></div><div id="{gid}-out"></div>'
    )
    return View(
        [_h("Layer × head attribution"),
         _note(f"Colour: each (layer, head)'s {HEAD_UNIT} on {where} tokens (darker = more): its attribution "
               "weighted by how much of the output its layer's attention still is, the score "
               "<code>Trace.top_heads</code> and the top-heads table rank by. Click a cell to see that head's "
               f"token heatmap; the grid opens on the top-ranked head, L{top.layer}H{top.head}."),
         Part(html=table + script)],
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
    parts = [_h("Recursion: prompt ← reasoning ← output")]
    if trace.method != "flashtrace" or trace.reasoning is None:
        parts.append(_note(f"method {trace.method}: no recursion through a reasoning span"))
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
    return View(parts + [Part(html=table), _note(final)], "Recursion")


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
    return View([_h(f"Top {k} ({where} tokens)"), Part(html=html_), _mass_note(trace, where)], "Top-k")


def _mass_note(trace: Trace, where: str = "prompt") -> Part:
    """The inputs' final mass split by role, and (for a prompt-only table) the template tokens holding mass."""
    text = (
        f"Final mass on the inputs <b>{float(trace.scores[: trace.inputs_end].sum()):.3f}</b>: "
        f"user prompt <b>{trace.prompt_mass:.3f}</b>, chat template <b>{trace.template_mass:.3f}</b>, "
        f"other <b>{trace.other_mass:.3f}</b>."
    )
    template = [t for t in trace.top_template(3) if t.score > 0] if where == "prompt" else []
    if template:
        toks = ", ".join(f"<code>{html.escape(repr(t.token))}</code>@{t.pos} {t.score:.4f}" for t in template)
        text += (
            f" Chat-template tokens holding the most mass (not in the token table, which ranks the user's "
            f'prompt): {toks}; <code>tr.top(k, where="input")</code> ranks every input token.'
        )
    return _note(text)


def _header(trace: Trace) -> Part:
    span = f"output {trace.output[0]}:{trace.output[1]}" + (
        f", reasoning {trace.reasoning[0]}:{trace.reasoning[1]}" if trace.reasoning else ""
    )
    out_text = html.escape("".join(trace.tokens[trace.output[0] : trace.output[1]]))
    return Part(
        html=f"<h1 style='font-size:1.4em'>ftlens trace</h1><div class='ft-note'>model <code>"
        f"{html.escape(trace.model)}</code>, method <code>{html.escape(trace.method)}</code>, "
        f"{len(trace.tokens)} positions, {span}, hops {trace.params.get('hops', 0)}. "
        f"Attributed output: <code>{out_text}</code></div>"
    )


def trace_page(trace: Trace, k: int = 10) -> View:
    """Every trace view on one page (the bundle once)."""
    views = [View([_header(trace)]), top_table(trace, k), token_heatmap(trace)]
    if len(trace.hops) > 1:
        views += [recursion_flow(trace), hop_channels(trace)]
    views += [head_grid(trace), head_channels(trace, k=min(k, 8))]
    return page(*views, title=f"ftlens trace: {trace.model}")


def write_html(trace: Trace, path: str | os.PathLike) -> Path:
    """Write one standalone, offline page of ``trace`` (atomic); returns the path."""
    return trace_page(trace).save(path)


# ---------------------------------------------------------------------- residual views
def _figure_part(fig: Any) -> Part:
    """A matplotlib figure as inline SVG (no files, no network)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return Part(html=svg[svg.find("<svg"):])


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise ImportError("residual views need matplotlib: pip install matplotlib") from exc
    return plt


def logit_lens_view(lens: Any) -> View:
    """Mean target log-prob per layer (line) and per token per layer (heatmap).

    The embedding layer (``L0``) is often far below the rest; it is drawn off-scale
    (value annotated) so the later layers stay readable.
    """
    plt = _plt()
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
    return View([_h("Logit lens"), _figure_part(fig)], "Logit lens")


def dla_view(dla: Any) -> View:
    """Heatmap of per-head DLA (diverging) and per-layer attention / MLP bars."""
    plt = _plt()
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
    note = (f"Summed target logits {dla.total:.3f} = embeddings {dla.embed:.3f} + heads "
            f"{float(dla.heads.sum()):.3f} + MLPs {float(dla.mlp.sum()):.3f} + biases "
            f"{float(dla.attn_bias.sum()) + dla.unembed_bias + dla.norm_bias:.3f} (gap {dla.gap:.2e}); "
            "final-norm scale frozen at its actual value.")
    return View([_h("Direct logit attribution"), _figure_part(fig), _note(note)], "DLA")


def component_shares_view(shares: Any) -> View:
    """Stacked per-layer shares (heads / residual / bias) and the MLP share as a line."""
    plt = _plt()
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
    return View([_h("Component shares per layer"), _figure_part(fig)], "Component shares")


def comparison_view(cmp: Any) -> View:
    """Scatter of trace head mass vs DLA, per-layer attention shares, and a top-k table."""
    plt = _plt()
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
    note = _note(f"Heads ranked by {HEAD_UNIT} (the ranking of <code>Trace.top_heads</code>): each head's share of "
                 "the span's update, over every source, times its layer's route weight to the output "
                 "(<code>Trace.route_weights</code>). DLA: the head's direct write to the summed target logits.")
    return View([_h("Trace attribution vs direct logit attribution"), _figure_part(fig), note, Part(html=table)],
                "Trace vs DLA")
