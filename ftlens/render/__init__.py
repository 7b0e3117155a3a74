"""Views of a trace, offline: CircuitsVis components, plain HTML/SVG, standalone pages.

One room per job (names re-exported here, so ``from ftlens import render`` keeps working):

- :mod:`.view` -- the machinery: :class:`View` / :class:`Part`, :func:`page`,
  :func:`set_inline`, the offline CircuitsVis bundle, the packaged JavaScript/CSS and
  how values reach it (JSON only), and the helpers every view family uses (role colours,
  display tokens, matplotlib figures as inline SVG);
- :mod:`.trace_views` -- views of one :class:`ftlens.result.Trace` (token heatmap, hop and
  head channels, layer x head grid, recursion flow, top table);
- :mod:`.flow_views` -- the flow graph of a :class:`ftlens.stepgraph.StepGraph` (input
  segments -> steps -> answer, click for heads and heatmaps; :func:`flow_graph`,
  :func:`write_flow_html`) and the ``ifr-tokenwise`` output x source matrix
  (:func:`tokenwise_matrix`);
- :mod:`.residual_views` -- matplotlib views of :mod:`ftlens.residual`'s analyses;
- :mod:`.study_views` -- views of a head study (:class:`ftlens.study.Study`): heatmap, a head's
  tokens, trace vs DLA, causal validation;
- :mod:`.standalone` -- every trace view on one page: :func:`trace_page`, :func:`write_html`;
- ``page.css``, ``circuitsvis_render.js``, ``circuitsvis_render_cdn.js``, ``head_grid.js``,
  ``flow_graph.js`` -- the CSS and JavaScript, packaged files read with :mod:`importlib.resources`.

Nothing here touches the network; no result object (``Trace``, ``StepGraph``, the residual
analyses, ``Study``) imports this package: views take results, results know no views.
"""

from __future__ import annotations

from .flow_views import flow_graph, flow_page, tokenwise_matrix, write_flow_html
from .residual_views import comparison_view, component_shares_view, dla_view, logit_lens_view
from .standalone import trace_page, write_html
from .study_views import study_causal, study_dla, study_head_tokens, study_heatmap
from .trace_views import (
    head_channels,
    head_grid,
    hop_channels,
    recursion_flow,
    relayed_values,
    token_heatmap,
    top_table,
)
from .view import (
    CSS,
    HEAD_UNIT,
    RELAYED_UNIT,
    ROLE_COLORS,
    Part,
    View,
    bundle_js,
    display_tokens,
    page,
    set_inline,
)

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
    "relayed_values",
    "flow_graph",
    "flow_page",
    "write_flow_html",
    "tokenwise_matrix",
    "trace_page",
    "write_html",
    "logit_lens_view",
    "dla_view",
    "component_shares_view",
    "comparison_view",
    "study_heatmap",
    "study_head_tokens",
    "study_dla",
    "study_causal",
    "display_tokens",
]
