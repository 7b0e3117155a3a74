"""Flow graph of a step graph, relayed mass on reasoning tokens, the token-wise matrix.

Views build offline (no socket opened), carry the graph's data, and the numbers they draw
are the graph's: edge flows add up to each node's relayed / absorbed mass.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import ftlens
from ftlens import render
from ftlens.segments import role_runs
from ftlens.errors import TraceError
from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET
from ftlens.render.flow_views import flow_data
from ftlens.stepgraph import step_graph

BUNDLE_MARK = "var CircuitsVis="


@pytest.fixture(scope="module")
def graph(tiny_llama):
    return step_graph(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET)


@pytest.fixture(scope="module")
def trace(tiny_llama):
    return ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, hops=2)


@pytest.fixture(scope="module")
def tokenwise(tiny_llama):
    return ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, method="ifr-tokenwise")


def _page_data(html: str) -> dict:
    return json.loads(re.search(r"var D=(\{.*?\});\n", html).group(1))


# ---------------------------------------------------------------------- flow graph
def test_flow_page_is_offline_with_one_bundle_and_the_graphs_data(graph, tmp_path, no_network):
    path = render.write_flow_html(graph, tmp_path / "sub" / "flow.html")
    html = path.read_text(encoding="utf-8")
    assert html.count(BUNDLE_MARK) == 1 and "unpkg.com" not in html and "google.com" not in html
    assert not no_network
    assert [p.name for p in path.parent.iterdir()] == ["flow.html"]  # atomic
    data = _page_data(html)
    assert [n["name"] for n in data["nodes"]] == [n.name for n in graph.nodes]
    assert [n["kind"] for n in data["nodes"]] == [n.kind for n in graph.nodes]
    assert data["answer"] == graph.answer
    # the notebook repr carries the bundle too (offline by default)
    assert BUNDLE_MARK in render.flow_graph(graph)._repr_html_()


def test_flow_edges_carry_the_graphs_weights_and_heads(graph):
    data = flow_data(graph, min_flow=0.0)
    assert data["edges"], "no edges"
    for e in data["edges"]:
        x, y = e["x"], e["y"]
        assert graph.nodes[x].kind in ("step", "answer") and y != x
        assert e["w"] == pytest.approx(graph.edge(x, y), rel=1e-3, abs=1e-9)
        top = graph.top_edge_heads(x, y, 5)
        assert [h[:2] for h in e["heads"]] == [[h.layer, h.head] for h in top]
        assert [h[2] for h in e["heads"]] == pytest.approx([h.score for h in top], rel=1e-3, abs=1e-12)
    # every positive edge is drawn when nothing is hidden
    n_pos = sum(int((graph.edges[r] > 0).sum()) - int(graph.edges[r, x] > 0) for r, x in enumerate(graph.traced))
    assert len(data["edges"]) == n_pos and data["hidden"][0] == 0


def test_edge_flows_into_each_node_add_up_to_its_relayed_or_absorbed_mass(graph):
    data = flow_data(graph, min_flow=0.0, digits=8)
    into = torch.zeros(len(graph.nodes), dtype=torch.float64)
    for e in data["edges"]:
        into[e["y"]] += e["flow"]
    for i in graph.steps:
        assert float(into[i]) == pytest.approx(float(graph.relayed[i]), abs=1e-5)
        assert data["nodes"][i]["mass"] == pytest.approx(float(graph.relayed[i]), rel=1e-6)
    for i in graph.inputs:
        assert float(into[i]) == pytest.approx(float(graph.absorbed[i]), abs=1e-5)
        assert data["nodes"][i]["mass"] == pytest.approx(float(graph.absorbed[i]), rel=1e-6, abs=1e-12)
    assert data["nodes"][graph.answer]["mass"] == 1.0


def test_flow_routes_and_heatmap_rows_are_the_graphs(graph):
    data = flow_data(graph, k_routes=7)
    routes = graph.routes(7)
    assert [r["nodes"] for r in data["routes"]] == [list(r.nodes) for r in routes]
    assert [r["mass"] for r in data["routes"]] == pytest.approx([r.mass for r in routes], rel=1e-3)
    first = data["first"]
    assert len(data["dist"]) == len(graph.traced)
    for row in range(len(graph.traced)):
        torch.testing.assert_close(torch.tensor(data["dist"][row]), graph.dist[row, first : graph.output[1]],
                                   rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(torch.tensor(data["inputs"]), graph.token_scores[first : data["inputs_end"]],
                               rtol=1e-3, atol=1e-9)
    assert len(data["tokens"]) == graph.output[1] - first


def test_hidden_edges_are_counted_not_drawn(graph):
    full = flow_data(graph, min_flow=0.0)
    cut = sorted(e["flow"] for e in full["edges"])[len(full["edges"]) // 2]
    part = flow_data(graph, min_flow=cut)
    assert all(e["flow"] >= cut for e in part["edges"])
    assert len(part["edges"]) + part["hidden"][0] == len(full["edges"])
    assert 0 < part["hidden"][0]


def test_flow_view_escapes_segment_text(graph, tmp_path):
    import copy

    evil = copy.deepcopy(graph)
    n = evil.nodes[1]
    evil.nodes[1] = type(n)(n.name, n.kind, n.start, n.end, "</script><b id=pwn>x</b>")
    html = render.flow_graph(evil).html()
    assert "</script><b id=pwn>" not in html
    outside = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert "<b id=pwn>" not in outside


# ---------------------------------------------------------------------- relayed mass
def test_heatmap_colours_reasoning_tokens_by_their_relayed_mass(trace):
    view = render.token_heatmap(trace)
    comps = [p for p in view.parts if p.component is not None]
    mu = trace.relayed_mass().sum(0)
    reasoning = [(p, a, b) for p, (role, a, b) in zip(comps, [(role, a, b) for a, b, role in role_runs(trace.roles)]) if role == "reasoning"]
    assert reasoning
    for p, a, b in reasoning:
        torch.testing.assert_close(p.props["values"], mu[a:b])
        assert float(p.props["values"].sum()) > 0  # not white
        assert p.props["maxValue"] == pytest.approx(float(mu[a:b].max()))
        assert "relayed mass" in p.html
    assert "Trace.relayed_mass().sum(0)" in view.html() and "totals 1" in view.html()
    # without relayed, the old view: final scores everywhere
    plain = [p for p in render.token_heatmap(trace, relayed=False).parts if p.component is not None]
    for p, (role, a, b) in zip(plain, [(role, a, b) for a, b, role in role_runs(trace.roles)]):
        torch.testing.assert_close(p.props["values"], trace.scores[a:b].float())


def test_hop_channels_have_one_relayed_channel_per_hop(trace):
    part = [p for p in render.hop_channels(trace).parts if p.component][0]
    k = len(trace.hops)
    assert part.props["labels"] == ([f"hop {j}" for j in range(k)] + ["final"]
                                    + [f"relayed {j}" for j in range(k)] + ["relayed Σ"])
    a = trace.prompt_positions[0]
    mu = trace.relayed_mass()
    vals = part.props["values"]
    for j in range(k):
        torch.testing.assert_close(vals[:, k + 1 + j], mu[j, a : trace.output[1]])
        assert float(vals[:, k + 1 + j].sum()) == pytest.approx(trace.thinking_ratios[j], abs=1e-5)
    torch.testing.assert_close(vals[:, -1], mu.sum(0)[a : trace.output[1]])


def test_standalone_page_draws_relayed_mass(trace, tmp_path):
    html = render.write_html(trace, tmp_path / "t.html").read_text(encoding="utf-8")
    assert '"positiveColor": "#ff7f0e"' in html and "relayed Σ" in html


def test_no_relayed_mass_without_recursion(tiny_llama):
    tr = ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, method="ifr-span")
    assert render.relayed_values(tr) is None
    comps = [p for p in render.token_heatmap(tr).parts if p.component is not None]
    assert all("positiveColor" not in p.props for p in comps)


# ---------------------------------------------------------------------- token-wise matrix
def test_tokenwise_matrix_shows_every_row_and_value(tokenwise):
    view = render.tokenwise_matrix(tokenwise)
    html = view.html()
    rs = tokenwise.row_scores
    n_rows = rs.shape[0]
    assert html.count('<th class="ft-tgt"') == n_rows
    first = tokenwise.output[1] - n_rows
    a = tokenwise.prompt_positions[0]
    n_cols = tokenwise.output[1] - a
    assert html.count('<th class="ft-src"') == n_cols
    values = [float(v) for v in re.findall(r'data-v="([^"]+)"', html)]
    expected = [float(rs[r, s]) for r in range(n_rows) for s in range(a, tokenwise.output[1]) if s <= first + r]
    assert values == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert html.count('class="ft-future"') == n_rows * n_cols - len(expected)
    assert "tr.row_scores[row, pos]" in html and BUNDLE_MARK not in html


def test_tokenwise_matrix_can_drop_template_columns(tokenwise):
    html = render.tokenwise_matrix(tokenwise, show_template=False).html()
    a = tokenwise.prompt_positions[0]
    keep = [s for s in range(a, tokenwise.output[1]) if tokenwise.roles[s] != "template"]
    assert html.count('<th class="ft-src"') == len(keep) < tokenwise.output[1] - a


@pytest.mark.parametrize("method", ["flashtrace", "ifr-span"])
def test_tokenwise_matrix_refuses_other_methods(tiny_llama, method):
    tr = ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, method=method)
    with pytest.raises(TraceError, match='method="ifr-tokenwise"'):
        render.tokenwise_matrix(tr)
