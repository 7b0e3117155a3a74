"""The standalone page of a trace: every trace view on one offline HTML page, written atomically.

This is the export the result object stays out of: ``ftlens.render.write_html(trace, path)``
(the CLI's ``--html`` and ``ftlens show --html`` call it).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from ..result import Trace
from .trace_views import head_channels, head_grid, hop_channels, recursion_flow, token_heatmap, top_table
from .view import Part, View, page

__all__ = ["trace_page", "write_html"]


def _header(trace: Trace) -> Part:
    span = f"output {trace.output[0]}:{trace.output[1]}" + (
        f", reasoning {trace.reasoning[0]}:{trace.reasoning[1]}" if trace.reasoning else ""
    )
    out_text = html.escape(trace.span_text("output"))
    reasoning = (f" Reasoning: <code>{html.escape(trace.span_text('reasoning'))}</code>"
                 if trace.reasoning is not None else " No reasoning span.")
    gen = trace.generation_note()
    return Part(
        html=f"<h1 style='font-size:1.4em'>ftlens trace</h1><div class='ft-note'>model <code>"
        f"{html.escape(trace.model)}</code>, method <code>{html.escape(trace.method)}</code>, "
        f"{len(trace.tokens)} positions, {span}, hops {trace.params.get('hops', 0)}. "
        f"Attributed output: <code>{out_text}</code>.{reasoning}"
        + (f" {html.escape(gen[:1].upper() + gen[1:])}." if gen else "") + "</div>"
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
