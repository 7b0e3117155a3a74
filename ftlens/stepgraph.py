"""Building the step graph of a target: its nodes and one span pass per step and the answer.

What the graph *is* (nodes, edges, the absorbing chain, routes, heads per edge, files) is
:mod:`ftlens.graph`; this module splits the sequence into nodes (:func:`graph_nodes`) and traces
each step and the answer on the state of one capture pass (:func:`step_graph`): one span pass
with uniform weights over the node's rows (:func:`ftlens.recursion.traced_rows`) gives
``p_X(s) = v_X(s) / sum v_X`` and the edges ``W[X, Y] = sum_{s in Y} p_X(s)``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ._version import __version__
from .aggregate import span_shares_many
from .errors import SpanError, TraceError
from .graph import Node, Route, StepGraph, absorb, fold_loops, loop_scale, token_scores, top_routes
from .options import TraceOptions
from .pipeline import Captured, prepare
from .recursion import uniform_weights
from .segments import BY, Segment, char_segments, role_runs, split_run

__all__ = ["Node", "Route", "StepGraph", "step_graph", "graph_nodes", "absorb", "fold_loops", "loop_scale",
           "top_routes"]

#: The keywords of :func:`ftlens.trace` a step graph takes (how the sequence is made).
INPUTS = ("target_ids", "messages", "system", "output", "reasoning", "chat_template", "max_new_tokens", "stop_at")

#: Traced nodes per batched span pass (bounds the ``[vec, layer, head, pos]`` shares held at once).
BATCH = 16


def _groups(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------- nodes


def graph_nodes(
    tokens: list[str],
    roles: list[str],
    output: tuple[int, int],
    reasoning: tuple[int, int] | None,
    steps: str | Sequence[tuple[int, int]] = "sentence",
    segments: str | Sequence[tuple[int, int]] = "sentence",
) -> list[Node]:
    """Input segments (user prompt split by ``segments``; each template / other run whole),
    reasoning steps (``steps``: a granularity of :mod:`ftlens.segments` or character spans of
    the reasoning text), the tokens between reasoning and answer as one more step, the answer.
    Every position up to the answer's end is in exactly one node."""
    for how in (steps, segments):
        if isinstance(how, str) and how not in BY:
            raise SpanError(f"segments/steps must be one of {', '.join(BY)} or character spans, got {how!r}")
    r0 = reasoning[0] if reasoning is not None else output[0]
    nodes: list[Node] = []
    count = {"prompt": 0, "template": 0, "other": 0}
    for a, b, role in role_runs(roles[:r0]):
        if role == "prompt":
            segs = _split(tokens, a, b, role, segments)
            kind = "prompt"
        else:
            segs, kind = [Segment(a, b, role, "".join(tokens[a:b]))], role if role == "template" else "other"
        for s in _cover(segs, a, b, role, tokens):
            nodes.append(Node(f"{kind[0].upper()}{count[kind]}", kind, s.start, s.end, s.text))
            count[kind] += 1
    n_steps = 0
    if reasoning is not None:
        segs = _cover(_split(tokens, reasoning[0], reasoning[1], "reasoning", steps), *reasoning, "reasoning", tokens)
        for s in segs:
            nodes.append(Node(f"S{n_steps}", "step", s.start, s.end, s.text))
            n_steps += 1
        if reasoning[1] < output[0]:
            a, b = reasoning[1], output[0]
            nodes.append(Node(f"S{n_steps}", "step", a, b, "".join(tokens[a:b])))
    nodes.append(Node("A", "answer", output[0], output[1], "".join(tokens[output[0] : output[1]])))
    return nodes


def _split(tokens, a: int, b: int, role: str, how) -> list[Segment]:
    if isinstance(how, str):
        return split_run(tokens, a, b, role, how)
    return char_segments(tokens, a, b, role, list(how))


def _cover(segs: list[Segment], a: int, b: int, role: str, tokens: list[str]) -> list[Segment]:
    """``segs`` with the gaps between them (character spans leave some) as segments of their own."""
    out, pos = [], a
    for s in sorted(segs, key=lambda s: s.start):
        if s.start > pos:
            out.append(Segment(pos, s.start, role, "".join(tokens[pos : s.start])))
        out.append(s)
        pos = s.end
    if pos < b:
        out.append(Segment(pos, b, role, "".join(tokens[pos:b])))
    return out


# ---------------------------------------------------------------------- building it


def step_graph(
    model: Any,
    prompt: str | None = None,
    target: str | None = None,
    *,
    steps: str | Sequence[tuple[int, int]] = "sentence",
    segments: str | Sequence[tuple[int, int]] = "sentence",
    threshold: float | None = None,
    completeness_tol: float | int | None = None,
    stop_rows: str = "keep",
    progress: bool = False,
    captured: Captured | None = None,
    **inputs: Any,
) -> StepGraph:
    """Build the step graph of ``target`` (see the module docstring).

    ``prompt``, ``target`` and the keywords ``target_ids``, ``messages``, ``system``, ``output``,
    ``reasoning``, ``chat_template``, ``max_new_tokens``, ``stop_at`` are as in :func:`ftlens.trace`; a target
    without a reasoning span has no steps (the graph is the answer's own span pass).  ``steps``
    and ``segments`` say how the reasoning and the user prompt are split (``"sentence"``,
    ``"line"``, ``"word"``, ``"token"``, or character spans of that text).  ``captured``: reuse
    :func:`ftlens.pipeline.prepare`'s state (no new forward pass).  ``stop_rows="skip"``: a
    node's pass weighs only its tokens that are not stop tokens (``,`` ``.`` blank;
    :func:`ftlens.tokens.stop_tokens`), all of them when it has no other; every position still
    belongs to its node, so the bookkeeping is unchanged.
    """
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:  # e.g. hops= or explain=: a step graph traces every step itself, they would be ignored
        raise TypeError(f"step_graph() got an unexpected keyword argument {unknown[0]!r}; it takes "
                        f"{', '.join(INPUTS)} besides its own")
    option_values = {k: inputs.pop(k) for k in ("chat_template", "max_new_tokens", "stop_at") if k in inputs}
    opts = TraceOptions(threshold=threshold, completeness_tol=completeness_tol, stop_rows=stop_rows, **option_values)
    t0 = time.perf_counter()
    cap = captured if captured is not None else prepare(model, prompt, target, options=opts, progress=progress,
                                                        **inputs)
    seq = cap.seq
    nodes = graph_nodes(seq.tokens, seq.roles, seq.output, seq.reasoning, steps, segments)
    traced = [i for i, n in enumerate(nodes) if n.kind in ("step", "answer")]
    inputs_idx = [i for i, n in enumerate(nodes) if n.kind not in ("step", "answer")]
    node_of = torch.empty(seq.n, dtype=torch.long)
    for i, n in enumerate(nodes):
        node_of[n.start : n.end] = i
    n_pos, row_start = seq.n, seq.prompt_len
    skip = cap.skip(opts)
    dists, edge_rows, head_rows, route_rows, gaps = [], [], [], [], []
    t1 = time.perf_counter()
    for group in _groups(traced, BATCH):
        w = torch.stack([uniform_weights(nodes[i].start, nodes[i].end, skip, row_start, n_pos - row_start)
                         for i in group])
        passes = span_shares_many(cap.states, cap.info, cap.row_pos, w.to(cap.row_pos.device), opts.threshold,
                                  tol=cap.tol)
        for i, sh in zip(group, passes):
            node = nodes[i]
            v = sh.raw_scores.cpu().double()
            norm = float(v.sum())
            if norm <= 0:
                raise TraceError(f"node {node.name} has no attribution mass (all shares zero); lower the threshold")
            p = v / norm
            p[node.end :] = 0.0  # causal: nothing after the node (exact zeros already)
            dists.append(p.float())
            edge_rows.append(torch.zeros(len(nodes), dtype=torch.float64).index_add_(0, node_of, p))
            heads = sh.heads.cpu().double() / norm  # layer head pos
            per_node = torch.zeros(len(nodes), *heads.shape[:2], dtype=torch.float64)
            per_node.index_add_(0, node_of, heads.permute(2, 0, 1))
            head_rows.append(per_node.float())
            route_rows.append(sh.route_weights.cpu().float())
            gaps.append(sh.gap.cpu().float())
    edges = torch.stack(edge_rows).float()
    relayed, absorbed, answer_self, unresolved = absorb(edges, traced, inputs_idx)
    scores = token_scores(torch.stack(dists).double(), edges.double(), traced, relayed.double(), nodes, seq.n)
    return StepGraph(
        model=cap.model, ids=seq.ids.tolist(), tokens=seq.tokens, roles=seq.roles,
        output=seq.output, reasoning=seq.reasoning, nodes=nodes, traced=traced,
        dist=torch.stack(dists), edges=edges, edge_heads=torch.stack(head_rows),
        route_w=torch.stack(route_rows), completeness=torch.stack(gaps), relayed=relayed, absorbed=absorbed,
        token_scores=scores, answer_self=answer_self, unresolved=unresolved, version=__version__,
        params={"steps": steps if isinstance(steps, str) else [list(s) for s in steps],
                "segments": segments if isinstance(segments, str) else [list(s) for s in segments],
                "threshold": threshold, "stop_rows": stop_rows, "completeness_tol": cap.tol, "family": cap.info.family.kind},
        timings={**cap.timings, "graph": time.perf_counter() - t1, "total": time.perf_counter() - t0},
    )  # fmt: skip


