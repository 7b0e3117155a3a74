"""Views: offline by construction, the CircuitsVis bundle once per page, atomic standalone files."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

import ftlens
from ftlens import render
from ftlens.segments import role_runs
from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET

BUNDLE_MARK = "var CircuitsVis="


@pytest.fixture(scope="module")
def trace(tiny_llama):
    return ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, hops=2)


def _render_calls(html: str) -> list[str]:
    return re.findall(r"CircuitsVis\.render\(\"(ftcv-[0-9a-f]+)\", CircuitsVis\.(\w+),", html)


def test_write_html_inlines_the_bundle_once_and_never_points_at_a_cdn(trace, tmp_path, no_network):
    path = render.write_html(trace, tmp_path / "sub" / "t.html")
    assert path == tmp_path / "sub" / "t.html"
    html = path.read_text(encoding="utf-8")
    calls = _render_calls(html)
    assert len(calls) >= 5  # heatmap runs, hop channels, head channels
    assert html.count(BUNDLE_MARK) == 1
    assert html.index(BUNDLE_MARK) < html.index(calls[0][0])
    assert "unpkg.com" not in html and "google.com" not in html
    assert not no_network
    assert [p.name for p in path.parent.iterdir()] == ["t.html"]  # atomic: no temp file left


def test_every_render_call_targets_a_div_placed_before_it(trace):
    html = render.trace_page(trace).html()
    for uid, comp in _render_calls(html):
        div = html.index(f'<div id="{uid}" class="ft-cv" data-component="{comp}">')
        assert div < html.index(f'CircuitsVis.render("{uid}"')


def test_write_html_writes_one_offline_page_with_one_bundle(trace, tmp_path):
    p = render.write_html(trace, tmp_path / "x.html")
    assert p.exists() and p.read_text(encoding="utf-8").count(BUNDLE_MARK) == 1


def test_notebook_repr_is_inline_by_default_and_cdn_only_when_asked(trace, no_network):
    view = render.token_heatmap(trace)
    assert BUNDLE_MARK in view._repr_html_()
    try:
        render.set_inline(False)
        cdn = view._repr_html_()
    finally:
        render.set_inline(True)
    assert BUNDLE_MARK not in cdn and "unpkg.com/circuitsvis@" in cdn
    assert not no_network


def test_heatmap_has_one_colored_tokens_per_role_run_covering_the_sequence(trace):
    view = render.token_heatmap(trace)
    comps = [p for p in view.parts if p.component is not None]
    assert all(p.component == "ColoredTokens" for p in comps)
    tokens = [t for p in comps for t in p.props["tokens"]]
    assert tokens == render.display_tokens(trace.tokens)
    runs = [(role, a, b) for a, b, role in role_runs(trace.roles)]
    assert len(comps) == len(runs)
    mu = trace.relayed_mass().sum(0)  # reasoning runs: relayed mass, on a scale of their own
    for p, (role, a, b) in zip(comps, runs):
        assert f"ft-run-{role}" in p.html
        want = mu[a:b] if role == "reasoning" else trace.scores[a:b].float()
        torch.testing.assert_close(p.props["values"], want)
    # one colour scale for every run of final scores
    assert len({(p.props["minValue"], p.props["maxValue"]) for p, (role, _, _) in zip(comps, runs)
                if role != "reasoning"}) == 1


def test_hop_and_head_channels_match_the_trace(trace):
    hop = [p for p in render.hop_channels(trace).parts if p.component][0]
    assert hop.component == "ColoredTokensMulti"
    n = len(trace.hops)
    assert hop.props["labels"][: n + 1] == [f"hop {k}" for k in range(n)] + ["final"]  # then relayed k
    a = trace.prompt_positions[0]
    torch.testing.assert_close(hop.props["values"][:, n], trace.scores[a : trace.output[1]])
    heads = [p for p in render.head_channels(trace, k=3).parts if p.component][0]
    top = trace.top_heads(3)
    assert heads.props["labels"] == [f"L{h.layer}H{h.head}" for h in top]
    assert heads.props["values"].shape == (trace.inputs_end - a, 3)  # values: see the ranking tests below


def test_head_grid_carries_every_heads_values_and_one_cell_per_head(trace):
    html = render.head_grid(trace).html()
    assert html.count("<td data-l=") == trace.n_layers * trace.n_heads
    data = json.loads(re.search(r"var D=(\{.*?\});\n", html).group(1))
    assert len(data["values"]) == trace.n_layers and len(data["values"][0]) == trace.n_heads
    a = trace.prompt_positions[0]
    assert len(data["tokens"]) == len(data["values"][1][2]) == trace.inputs_end - a


def test_recursion_flow_reports_conserved_mass(trace):
    html = render.recursion_flow(trace).html()
    for r in trace.thinking_ratios:
        assert f"{r:.3f}" in html
    total = float(trace.scores.sum()) + trace.output_mass + trace.unresolved
    assert total == pytest.approx(1.0, abs=1e-4)
    assert f"{trace.unresolved:.3f}" in html


def test_tokens_cannot_break_out_of_script_or_markup(trace, tmp_path):
    evil = copy.deepcopy(trace)
    p = evil.prompt_positions[3]
    evil.tokens[p] = "</script><b id=pwn>x</b><!--"
    html = render.write_html(evil, tmp_path / "evil.html").read_text(encoding="utf-8")
    assert "</script><b id=pwn>" not in html
    assert "<\\/script><b id=pwn>" in html  # inside JSON strings only
    in_bundle = render.bundle_js().count("<script")  # a literal "<script><\\/script>" in React
    assert html.count("<script") - in_bundle == html.count("</script>")
    outside = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert "<b id=pwn>" not in outside


def test_a_saved_and_loaded_trace_renders_the_same_views(trace, tmp_path):
    loaded = ftlens.Trace.load(trace.save(tmp_path / "t.json"))
    a = render.trace_page(trace).html()
    b = render.trace_page(loaded).html()
    strip = lambda s: re.sub(r"ft(cv|grid)-[0-9a-f]+", "ID", s)  # noqa: E731
    assert strip(a) == strip(b)


def test_ifr_span_trace_page_has_no_recursion_section(tiny_llama, tmp_path):
    tr = ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, method="ifr-span")
    html = render.write_html(tr, tmp_path / "s.html").read_text(encoding="utf-8")
    assert "Recursion:" not in html and html.count(BUNDLE_MARK) == 1


# ---------------------------------------------------------------- one head ranking (issue 11 item 6)
def _grid_cells(html: str) -> dict[tuple[int, int], float]:
    """``(layer, head) -> value`` each grid cell is coloured by (its ``data-v``)."""
    cells = re.findall(r'<td data-l="(\d+)" data-h="(\d+)" data-v="([^"]+)"', html)
    return {(int(l), int(h)): float(v) for l, h, v in cells}


def _routed_mass(trace, where="prompt"):
    return trace.head_attribution_routed[:, :, trace.positions(where)].sum(-1)


def test_head_grid_colours_by_the_default_ranking_and_opens_on_the_top_tables_first_head(trace):
    html = render.trace_page(trace).html()
    cells = _grid_cells(html)
    assert len(cells) == trace.n_layers * trace.n_heads
    grid = torch.tensor([[cells[l, h] for h in range(trace.n_heads)] for l in range(trace.n_layers)])
    torch.testing.assert_close(grid, _routed_mass(trace), rtol=1e-5, atol=0)
    table = re.search(r'<table class="ft-table ft-top-heads">(.*?)</table>', html, flags=re.S).group(1)
    first = re.search(r"<tr><td>1</td><td>(\d+)</td><td>(\d+)</td>", table)
    opened = max(cells, key=cells.get)  # the page's script selects the cell with the largest data-v
    assert opened == (int(first.group(1)), int(first.group(2))) == (trace.top_heads(1)[0].layer, trace.top_heads(1)[0].head)


def test_head_grid_heatmap_values_are_the_routed_attribution_the_cell_sums(trace):
    html = render.head_grid(trace).html()
    data = json.loads(re.search(r"var D=(\{.*?\});\n", html).group(1))
    a = trace.prompt_positions[0]
    expect = trace.head_attribution_routed[1, 2, a : trace.inputs_end]
    torch.testing.assert_close(torch.tensor(data["values"][1][2]), expect, rtol=1e-3, atol=1e-12)


def test_head_channels_show_the_values_they_rank_by(trace):
    part = [p for p in render.head_channels(trace, k=3).parts if p.component][0]
    a = trace.prompt_positions[0]
    for j, h in enumerate(trace.top_heads(3)):
        torch.testing.assert_close(
            part.props["values"][:, j], trace.head_attribution_routed[h.layer, h.head, a : trace.inputs_end]
        )


def test_every_head_view_states_the_route_weighted_unit(trace):
    for view in (render.head_grid(trace), render.head_channels(trace, k=3), render.top_table(trace, k=3)):
        assert "route-weighted" in view.html(), view.title


# ---------------------------------------------------------------- input mass split (issue 11 item 13)
def test_page_splits_input_mass_and_names_the_template_tokens_that_hold_mass(trace):
    html = render.trace_page(trace).html()
    for label, mass in (("user prompt", trace.prompt_mass), ("chat template", trace.template_mass),
                        ("other", trace.other_mass)):
        assert f"{label} <b>{mass:.3f}</b>" in html
    best_template = next(t for t in trace.top(len(trace.tokens), where="input") if t.role == "template")
    assert best_template.score > 0
    assert f"@{best_template.pos} {best_template.score:.4f}" in html
    assert 'where="input"' in html  # how to rank them with the prompt tokens
