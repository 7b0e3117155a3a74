"""The step graph (method §10b): its numbers against a slow reference written from the HF
modules (tests/hf_reference.py) and an absorbing chain solved by matrix inversion, its mass
bookkeeping, routes, per-edge heads, nodes; segments and Trace.aggregate / relayed_mass."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import ftlens
from ftlens.errors import TraceError
from ftlens.pipeline import prepare
from ftlens.segments import char_segments, split_run
from ftlens.stepgraph import absorb, graph_nodes, step_graph

from .hf_reference import HFReference

KW = dict(seed=0, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
PROMPT = "Note one: the sky is red. Note two: Maria has code 7351. Question: what is the code?"
TARGET = ("\n<think>The question asks for a code. Note two mentions Maria. Her code is 7351.</think>\n"
          "The code is 7351.")  # fmt: skip


@functools.cache
def _model(arch: str):
    from ftlens.models import tiny_model

    return tiny_model(arch, **KW)


@functools.cache
def _graph(arch: str):
    return step_graph(_model(arch), PROMPT, TARGET, chat_template=False)


def _reference_chain(arch: str, g, skip: frozenset[int] = frozenset()):
    """Absorbed mass per input node and expected visits per step, from the HF-module reference:
    each traced node's distribution from HFReference (float64), then the absorbing chain with
    self-loops solved as ``N = (I - Q)^-1`` (not ftlens' loop-folding recursion).  ``skip``:
    positions whose rows a node's pass leaves out (all of the node's rows when none is left)."""
    ref = HFReference(arch, torch.tensor(g.ids), **KW)
    n = len(g.nodes)
    W = np.zeros((len(g.traced), n))
    for row, i in enumerate(g.traced):
        node = g.nodes[i]
        rows = [t for t in range(node.start, node.end) if t not in skip] or list(range(node.start, node.end))
        v = ref.token_scores({t: 1.0 / len(rows) for t in rows}).numpy()
        p = v / v.sum()
        for j, other in enumerate(g.nodes):
            W[row, j] = p[other.start : other.end].sum()
    steps, inputs = g.traced[:-1], g.inputs
    Q = W[:-1][:, steps]  # step -> step (self-loops on the diagonal)
    R = W[:-1][:, inputs]  # step -> input
    start_steps, start_inputs = W[-1, steps], W[-1, inputs]
    visits = start_steps @ np.linalg.inv(np.eye(len(steps)) - Q)
    absorbed = start_inputs + visits @ R
    return W, visits, absorbed, W[-1, g.answer]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "neox"])
def test_step_graph_equals_an_hf_module_reference_and_a_matrix_solved_chain(arch):
    g = _graph(arch)
    W, visits, absorbed, answer_self = _reference_chain(arch, g)
    np.testing.assert_allclose(g.edges.double().numpy(), W, atol=1e-5)
    np.testing.assert_allclose(g.absorbed[g.inputs].double().numpy(), absorbed, atol=1e-5)
    keep = np.array([W[row, s] for row, s in enumerate(g.traced[:-1])])
    np.testing.assert_allclose(g.relayed[g.steps].double().numpy(), visits * (1 - keep), atol=1e-5)
    assert g.answer_self == pytest.approx(answer_self, abs=1e-5)
    assert float(g.completeness.max()) < 1e-5


def test_step_graph_conserves_mass_and_token_scores_add_up():
    g = _graph("llama")
    assert float(g.absorbed.sum()) + g.answer_self + g.unresolved == pytest.approx(1.0, abs=1e-6)
    assert float(g.token_scores.sum()) == pytest.approx(float(g.absorbed.sum()), abs=1e-6)
    for i in g.inputs:
        n = g.nodes[i]
        assert float(g.token_scores[n.start : n.end].sum()) == pytest.approx(float(g.absorbed[i]), abs=1e-6)
    assert float(g.token_scores[g.nodes[g.traced[0]].start :].abs().sum()) == 0.0
    torch.testing.assert_close(g.edges.sum(-1), torch.ones(len(g.traced)), atol=1e-5, rtol=0)


def test_routes_into_each_input_sum_to_its_absorbed_mass():
    g = _graph("llama")
    routes = g.routes(k=10_000)
    masses = [r.mass for r in routes]
    assert masses == sorted(masses, reverse=True)
    for r in routes:
        assert r.nodes[-1] == g.answer and r.nodes[0] in g.inputs
        assert all(a < b for a, b in zip(r.nodes, r.nodes[1:]))  # earlier -> later nodes
    for i in g.inputs:
        assert sum(r.mass for r in routes if r.nodes[0] == i) == pytest.approx(float(g.absorbed[i]), abs=1e-6)
    assert all(r.nodes[0] == g.inputs[1] for r in g.routes(3, to=g.inputs[1]))


def test_edge_heads_sum_to_the_edge_and_rank_by_route_weight():
    g = _graph("gemma2")
    torch.testing.assert_close(g.edge_heads.sum(dim=(-1, -2)), g.edges, atol=1e-5, rtol=0)
    s2 = g.steps[-2]
    share = g.top_edge_heads("A", s2, k=100, weighting="share")
    assert sum(h.score for h in share) == pytest.approx(g.edge("A", s2), abs=1e-5)
    route = g.top_edge_heads("A", s2, k=1)[0]
    want = (g.edge_heads[-1, s2] * g.route_w[-1][:, None]).max()
    assert route.score == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(TraceError, match="input segment: it is not traced"):
        g.edge("P0", "A")


def test_nodes_cover_every_position_once_in_order():
    g = _graph("llama")
    covered = [p for n in g.nodes for p in range(n.start, n.end)]
    assert covered == list(range(g.output[1]))
    kinds = [n.kind for n in g.nodes]
    assert kinds[-1] == "answer" and kinds.count("step") == 4  # 3 sentences + '</think>\n'
    assert [n.text.strip() for n in g.nodes if n.kind == "step"][:3] == [
        "The question asks for a code.", "Note two mentions Maria.", "Her code is 7351."]


def test_step_graph_reuses_the_capture_without_a_forward_pass(monkeypatch):
    model = _model("llama")
    cap = prepare(model, PROMPT, TARGET, chat_template=False)

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(model, "forward", no_forward)
    g = step_graph(model, captured=cap)
    torch.testing.assert_close(g.absorbed, _graph("llama").absorbed)


def test_a_target_without_reasoning_has_no_steps_and_absorbs_the_answer_pass():
    g = step_graph(_model("llama"), PROMPT, " The code is 7351.", chat_template=False)
    assert g.steps == [] and g.unresolved == 0.0
    tr = ftlens.trace(_model("llama"), PROMPT, " The code is 7351.", chat_template=False, hops=0)
    torch.testing.assert_close(g.token_scores, tr.scores, atol=1e-6, rtol=0)


def test_absorb_folds_self_loops_exactly_on_a_hand_made_chain():
    # nodes: I0, S1, S2, A ; traced = [S1, S2, A]
    W = torch.tensor([[0.5, 0.5, 0.0, 0.0],   # S1: half to I0, half to itself
                      [0.2, 0.3, 0.5, 0.0],   # S2: 0.2 I0, 0.3 S1, 0.5 itself
                      [0.1, 0.2, 0.4, 0.3]])  # A: 0.1 I0, 0.2 S1, 0.4 S2, 0.3 itself
    relayed, absorbed, answer_self, unresolved = absorb(W, [1, 2, 3], [0])
    assert answer_self == pytest.approx(0.3) and unresolved == 0.0
    assert float(relayed[2]) == pytest.approx(0.4)
    assert float(relayed[1]) == pytest.approx(0.2 + 0.4 * 0.3 / 0.5)
    assert float(absorbed[0]) == pytest.approx(0.7)


# --------------------------------------------------------------------------- segments


def test_sentences_lines_and_words_split_where_the_text_says():
    toks = ["The", " sky", " is", " 3", ".", "5", " m", ".", " Next", "!", "\n", "Line", " two", "."]
    sent = [s.text for s in split_run(toks, 0, len(toks), "prompt", "sentence")]
    assert sent == ["The sky is 3.5 m.", " Next!\n", "Line two."]  # a blank line joins the sentence before
    assert [s.text for s in split_run(toks, 0, len(toks), "prompt", "line")] == [
        "The sky is 3.5 m. Next!\n", "Line two."]
    words = [s.text for s in split_run(toks, 0, 6, "prompt", "word")]
    assert words == ["The", " sky", " is", " 3.5"]


def test_char_spans_keep_continuation_pieces_with_their_character():
    toks = ["A", " 東", "", "", " B"]
    segs = char_segments(toks, 0, 5, "prompt", [(1, 3)])
    assert (segs[0].start, segs[0].end, segs[0].text) == (1, 4, " 東")


def test_aggregate_keeps_the_mass_of_every_region():
    tr = ftlens.trace(_model("llama"), PROMPT, TARGET, chat_template=False, hops=2)
    for where in ("prompt", "input", "reasoning", "output", "target", "all"):
        for by in ("word", "sentence", "line"):
            segs = tr.aggregate(by, where)
            pos = [p for s in segs for p in range(s.start, s.end)]
            assert sum(s.score for s in segs) == pytest.approx(float(tr.scores[pos].sum()), abs=1e-6)
    assert [s.text for s in tr.aggregate("sentence")] == [
        "Note one: the sky is red.", " Note two: Maria has code 7351.", " Question: what is the code?"]
    with pytest.raises(TraceError, match="where must be"):
        tr.aggregate(where="nowhere")


def test_relayed_mass_is_the_pending_mass_per_hop_and_survives_a_file(tmp_path):
    tr = ftlens.trace(_model("llama"), PROMPT, TARGET, chat_template=False, hops=2)
    mu = tr.relayed_mass()
    assert mu.shape == (3, len(tr.tokens))
    assert mu.sum(-1).tolist() == pytest.approx(tr.thinking_ratios, abs=1e-6)
    r0, o0 = tr.reasoning[0], tr.output[0]
    assert float(mu[:, :r0].abs().sum()) == 0.0 and float(mu[:, o0:].abs().sum()) == 0.0
    back = ftlens.Trace.load(tr.save(tmp_path / "t.json"))
    torch.testing.assert_close(back.relayed_mass(), mu)


def test_graph_nodes_refuse_an_unknown_granularity():
    with pytest.raises(ftlens.SpanError, match="segments/steps must be one of"):
        graph_nodes(["a"], ["prompt"], (0, 1), None, segments="paragraph")


def test_grouping_the_batched_span_passes_changes_no_edge(monkeypatch):
    """Steps are traced in batched groups; groups of 2 give the same graph as one group."""
    import ftlens.stepgraph as sg

    whole = _graph("llama")
    assert len(whole.traced) > 2
    monkeypatch.setattr(sg, "BATCH", 2)
    split = step_graph(_model("llama"), PROMPT, TARGET, chat_template=False)
    torch.testing.assert_close(split.edges, whole.edges, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split.edge_heads, whole.edge_heads, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(split.completeness, whole.completeness, atol=1e-7, rtol=1e-5)


def test_step_graph_skipping_stop_rows_equals_the_hf_module_reference():
    """stop_rows="skip": each node's pass weighs only its tokens that are not ',' '.' or blank."""
    model = _model("llama")
    g = step_graph(model, PROMPT, TARGET, chat_template=False, stop_rows="skip")
    skip = frozenset(i for i, t in enumerate(g.ids) if model.tokenizer.decode([t]).strip() in ("", ",", "."))
    assert any(g.nodes[i].start <= s < g.nodes[i].end for i in g.traced for s in skip)
    W, visits, absorbed, answer_self = _reference_chain("llama", g, skip)
    np.testing.assert_allclose(g.edges.double().numpy(), W, atol=1e-5)
    np.testing.assert_allclose(g.absorbed[g.inputs].double().numpy(), absorbed, atol=1e-5)
    assert g.params["stop_rows"] == "skip"
    assert float((g.edges - _graph("llama").edges).abs().max()) > 1e-4
