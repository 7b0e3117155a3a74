"""Views of a step graph and of a token-wise trace: the flow graph and the output x source matrix.

- :func:`flow_graph` -- a :class:`ftlens.stepgraph.StepGraph` as an offline SVG drawn by the
  packaged ``flow_graph.js``: input segments (left), reasoning steps (middle, in order), the
  answer (right).  Edge ``Y -> X`` (``X`` traced, ``Y`` earlier) has width proportional to the
  answer's mass that flows through it in the loop-folded chain,

      flow[X, Y] = in(X) * W'[X, Y],   in(A) = 1,  in(S) = relayed[S],
      W'[S, Y] = W[S, Y] / (1 - W[S, S]),  W'[A, Y] = W[A, Y],

  so the flows into a step sum to ``relayed[S]`` and the flows into an input segment to
  ``absorbed[I]``.  Clicking an edge shows its heads (``StepGraph.top_edge_heads``) and the
  token heatmap of its traced node (``dist`` row), clicking a node its heads and heatmap;
  the routes table highlights a route's edges.
- :func:`write_flow_html` -- the flow graph as one standalone offline page.
- :func:`tokenwise_matrix` -- an ``ifr-tokenwise`` trace's ``row_scores[row, pos]`` as a
  heatmap table: one row per explained target token, one column per source token.

Values reach the JavaScript as JSON only.  ``ftlens.stepgraph`` is imported inside functions
(for its tolerance constant), never at module level; nothing imports this module back.
"""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import TraceError
from ..result import Trace
from .view import HEAD_UNIT, ROLE_COLORS, Part, View, color, display_tokens, heading, note, page, script, sig, to_json

if TYPE_CHECKING:  # pragma: no cover
    from ..stepgraph import StepGraph

__all__ = ["FLOW_UNIT", "flow_data", "flow_graph", "flow_page", "write_flow_html", "tokenwise_matrix"]

#: What an edge's width and a node's number mean.
FLOW_UNIT = "share of the answer's attribution (the answer totals 1)"

KIND_COLORS = {"prompt": ROLE_COLORS["prompt"], "template": ROLE_COLORS["template"], "other": ROLE_COLORS["other"],
               "step": ROLE_COLORS["reasoning"], "answer": ROLE_COLORS["output"]}


def _heads(mat: Float[Tensor, "layer head"], k: int, digits: int) -> list[list[int | float]]:
    """Top-``k`` ``[layer, head, score]`` of a ``[layer, head]`` matrix."""
    flat = mat.flatten()
    order = torch.argsort(flat, descending=True)[: max(0, k)]
    n_h = mat.shape[1]
    return [[int(i) // n_h, int(i) % n_h, sig(float(flat[i]), digits)] for i in order]


def flow_data(g: "StepGraph", *, k_heads: int = 5, k_routes: int = 10, min_flow: float = 1e-3,
              digits: int = 4) -> dict[str, Any]:
    """Everything :func:`flow_graph` draws, as JSON-ready values.

    ``nodes[i]``: name, kind, text, span, ``mass`` (1 for the answer, ``relayed`` for a step,
    ``absorbed`` for an input segment), the top heads carrying it and which heatmap to show.
    ``edges``: every ``Y -> X`` with ``flow[X, Y] >= min_flow`` (module doc), with ``W[X, Y]``
    (``w``), ``W'[X, Y]`` (``wf``), the flow and ``top_edge_heads(X, Y, k_heads)`` (route-weighted);
    ``hidden``: how many edges with positive weight fell below ``min_flow`` and their total flow.
    ``routes``: ``routes(k_routes)`` as node-index paths with their mass.
    ``dist``: the ``dist`` row of each traced node, ``inputs``: ``token_scores`` (``digits``
    significant digits), over positions ``[first, end)`` where ``first`` is the first prompt token.
    """
    inflow, folded = g.inflow, g.folded
    first = next((i for i, r in enumerate(g.roles) if r == "prompt"), 0)
    rows = {x: r for r, x in enumerate(g.traced)}
    routed = g.edge_heads.double() * g.route_w.double()[:, None, :, None]  # vec node layer head
    inputs_end = g.nodes[g.traced[0]].start

    nodes = []
    for i, n in enumerate(g.nodes):
        if i in rows:
            row = rows[i]
            mine = routed[row].sum(0) - routed[row, i]  # its pass, minus its mass on itself
            heads = _heads(mine, k_heads, digits)
            mass = 1.0 if i == g.answer else float(g.relayed[i])
            heat = {"row": row}
        else:
            # heads carrying the mass this segment absorbs over every path: flow-weighted edges into it
            scale = torch.stack([inflow[x] * folded[r, i] / max(float(g.edges[r, i]), 1e-30)
                                 for r, x in enumerate(g.traced)])
            heads = _heads((routed[:, i] * scale[:, None, None]).sum(0), k_heads, digits)
            mass = float(g.absorbed[i])
            heat = {"inputs": True}
        nodes.append({"name": n.name, "kind": n.kind, "text": n.text, "start": n.start, "end": n.end,
                      "mass": sig(mass, digits), "heads": heads, "heat": heat})

    edges, hidden, hidden_flow = [], 0, 0.0
    for r, x in enumerate(g.traced):
        for y in range(len(g.nodes)):
            if y == x or float(g.edges[r, y]) <= 0:
                continue
            flow = float(inflow[x] * folded[r, y])
            if flow < min_flow:
                hidden += 1
                hidden_flow += flow
                continue
            heads = [[h.layer, h.head, sig(h.score, digits)] for h in g.top_edge_heads(x, y, k_heads)]
            edges.append({"x": x, "y": y, "w": sig(float(g.edges[r, y]), digits),
                          "wf": sig(float(folded[r, y]), digits), "flow": sig(flow, digits), "heads": heads})
    routes = [{"nodes": list(rt.nodes), "mass": sig(rt.mass, digits)} for rt in g.routes(k_routes)]
    end = g.output[1]
    return {
        "tokens": display_tokens(g.tokens[first:end]),
        "roles": list(g.roles[first:end]),
        "first": first,
        "inputs_end": inputs_end,
        "nodes": nodes,
        "edges": edges,
        "hidden": [hidden, sig(hidden_flow, digits)],
        "routes": routes,
        "dist": [[sig(float(v), digits) for v in g.dist[r, first:end]] for r in range(len(g.traced))],
        "inputs": [sig(float(v), digits) for v in g.token_scores[first:inputs_end]],
        "answer": g.answer,
        "answer_self": sig(g.answer_self, digits),
        "unresolved": sig(g.unresolved, digits),
        "colors": KIND_COLORS,
    }


def flow_graph(g: "StepGraph", *, k_heads: int = 5, k_routes: int = 10, min_flow: float = 1e-3,
               digits: int = 4) -> View:
    """The step graph as a flow graph (module doc); click an edge or a node for its heads and heatmap."""
    data = flow_data(g, k_heads=k_heads, k_routes=k_routes, min_flow=min_flow, digits=digits)
    fid = "ftflow-" + uuid.uuid4().hex[:10]
    options = {"id": fid, "unit": FLOW_UNIT, "head_unit": HEAD_UNIT}
    js = script("flow_graph.js", data=to_json(data, allow_nan=True), options=to_json(options))
    hidden, hidden_flow = data["hidden"]
    box = (
        f'<div class="ft-flow" id="{fid}"><div class="ft-flow-svg" id="{fid}-svg"></div>'
        f'<div class="ft-flow-side"><div class="ft-note">Routes (input → steps → answer), heaviest first; '
        f'click one to highlight it:</div><table class="ft-table ft-routes" id="{fid}-routes"></table></div>'
        f'<div class="ft-flow-detail" id="{fid}-detail"></div></div>'
    )
    text = (
        f"Input segments (left), reasoning steps (middle, in order), the answer (right). An edge Y → X has "
        f"width proportional to the answer's mass flowing through it, in(X)·W'[X, Y] ({FLOW_UNIT}): in(A) = 1, "
        f"in(S) = relayed[S], W' the loop-folded edge weight W[X, Y]/(1 − W[X, X]). A node's number is the "
        f"mass through it: relayed for a step, absorbed for an input segment (the inputs sum to "
        f"{float(g.absorbed.sum()):.3f}; the answer keeps {g.answer_self:.3f} on itself, unresolved "
        f"{g.unresolved:.3f}). Hover for W[X, Y]; click an edge or a node for its top heads ({HEAD_UNIT}) "
        f"and its token heatmap (the traced node's attribution p<sub>X</sub> over earlier positions; for an "
        f"input segment, the mass absorbed per input token)."
    )
    if hidden:
        text += f" {hidden} edges below {min_flow:g} (total flow {hidden_flow:.3g}) are not drawn."
    return View([heading("Reasoning flow: prompt segments → steps → answer"), note(text),
                 Part(html=box + f"<script>{js}</script>")], "Reasoning flow")


def _header(g: "StepGraph") -> Part:
    return Part(
        html=f"<h1 style='font-size:1.4em'>ftlens step graph</h1><div class='ft-note'>model <code>"
        f"{html.escape(g.model)}</code>, {len(g.steps)} steps, {len(g.inputs)} input segments, "
        f"{len(g.tokens)} positions. Answer: <code>{html.escape(g.nodes[g.answer].text)}</code></div>"
    )


def flow_page(g: "StepGraph", **kwargs: Any) -> View:
    """The flow graph on one page, with a header."""
    return page(View([_header(g)]), flow_graph(g, **kwargs), title=f"ftlens step graph: {g.model}")


def write_flow_html(g: "StepGraph", path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write one standalone, offline page of the flow graph of ``g`` (atomic); returns the path."""
    return flow_page(g, **kwargs).save(path)


# ---------------------------------------------------------------------- token-wise matrix
def tokenwise_matrix(trace: Trace, *, show_template: bool = True, numbers: bool | None = None,
                     digits: int = 3) -> View:
    """The output x source matrix of an ``ifr-tokenwise`` trace (what ``.show()`` draws in Inseq).

    Row ``r`` is explained target token ``t = first + r`` (the explained span ends at the output's
    end), column ``s`` a source token from the first prompt token up to the last row; cell
    ``(t, s)`` is ``row_scores[r, s]``, the token-wise IFR score of source ``s`` for target ``t``
    (summed over layers and heads; sources after ``t`` are hatched: causal).  One colour scale,
    ``[0, max]`` off the chat template.  ``numbers``: print values in the cells (default: when the
    matrix has at most 40 columns).  ``show_template=False`` drops chat-template columns.
    """
    if trace.method != "ifr-tokenwise" or trace.row_scores is None:
        raise TraceError(
            f"tokenwise_matrix needs a trace made with method=\"ifr-tokenwise\" (it has per-token rows); "
            f"this trace's method is {trace.method!r}"
        )
    rs = trace.row_scores.float()
    n_rows = rs.shape[0]
    last = trace.output[1]
    first = last - n_rows
    a = next((i for i, r in enumerate(trace.roles) if r == "prompt"), 0)
    cols = [s for s in range(a, last) if show_template or trace.roles[s] != "template"]
    toks = display_tokens(trace.tokens)
    off_template = [s for s in cols if trace.roles[s] != "template"] or cols
    vmax = float(rs[:, off_template].max()) if off_template else 0.0
    vmax = vmax if vmax > 0 else 1.0
    numbers = len(cols) <= 40 if numbers is None else numbers
    head = "".join(
        f'<th class="ft-src" style="color:{ROLE_COLORS.get(trace.roles[s], "#555")}" title="{s}">'
        f"<span>{html.escape(toks[s])}</span></th>"
        for s in cols
    )
    body = []
    for r in range(n_rows):
        t = first + r
        cells = []
        for s in cols:
            if s > t:
                cells.append('<td class="ft-future"></td>')
                continue
            v = float(rs[r, s])
            tip = html.escape(f"{toks[s]!r}@{s} -> {toks[t]!r}@{t}: {v:.4g}", quote=True)
            txt = f"{v:.{digits}f}" if numbers else ""
            fg = "#fff" if v / vmax > 0.6 else "#222"
            cells.append(f'<td title="{tip}" data-v="{v!r}" style="background:{color(v, vmax)};color:{fg}">{txt}</td>')
        label = html.escape(toks[t])
        body.append(f'<tr><th class="ft-tgt" title="{t}">{label}</th>{"".join(cells)}</tr>')
    table = (
        f'<div class="ft-matrix-wrap"><table class="ft-matrix"><tr><th></th>{head}</tr>{"".join(body)}</table></div>'
    )
    text = (
        f"Rows: the {n_rows} explained target tokens (positions {first}:{last}); columns: source tokens from the "
        f"first prompt token (header colour = role). Cell: <code>tr.row_scores[row, pos]</code>, the token-wise "
        f"IFR score of the source for that target token (its proximity shares summed over layers and heads; not "
        f"normalised), colour scale 0..{vmax:.3g} (off the chat template; larger values saturate). Hatched: "
        f"sources after the target (causal). Hover a cell for its value."
    )
    return View([heading("Token-wise attribution: output × source"), note(text), Part(html=table)],
                "Token-wise matrix")
