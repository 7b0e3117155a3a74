"""The step graph: which reasoning steps relay which parts of the prompt to the answer.

Nodes (method §10b): the input segments (user-prompt sentences by default, each run of
chat-template tokens, other input tokens), the reasoning steps (sentences of the reasoning
span by default; the tokens between the reasoning and the answer, e.g. ``</think>``, are one
more step), and the answer.  Every step and the answer is *traced*: one span pass with
uniform weights over its tokens, on the state of the one capture pass (no new forward pass),
gives ``p_X(s) = v_X(s) / sum v_X`` over every earlier position, and the edge weights

    W[X, Y] = sum_{s in Y} p_X(s)          (rows sum to 1: every position is in a node)

An absorbing chain turns them into exact bookkeeping.  The answer's mass on its own tokens
is reported (``answer_self``), not recursed, as in FlashTrace.  A step's mass on itself is a
self-loop, folded exactly by renormalising its other edges, ``W'[S, Y] = W[S, Y] / (1 -
W[S, S])``; edges then only point to earlier nodes, so the chain is a DAG:

    relayed[S]  = W[A, S] + sum_{S' after S} relayed[S'] W'[S', S]
    absorbed[I] = W[A, I] + sum_S relayed[S] W'[S, I]
    sum_I absorbed[I] + answer_self (+ unresolved) = 1

``relayed[S]`` is the answer's mass that passes through step ``S``; ``absorbed[I]`` what
lands on input segment ``I`` over every path.  A *route* is one path ``I <- S_j <- ... <- A``;
its mass is the product of its edges, and the masses of all routes into ``I`` sum to
``absorbed[I]``.  Per edge, ``edge_heads[X, Y, l, h] = sum_{s in Y} e_X[l, h, s] / sum v_X``
says which heads carry it (they sum to ``W[X, Y]``).

How it relates to FlashTrace's token-level hops: a hop re-traces the whole pending span at
once, weighted by the pending mass; the step graph traces each step on its own and mixes the
normalised results linearly.  The L1 proximity is not additive, so the two differ unless the
reasoning is one step, and the step graph runs the chain to the end (no hop limit).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .aggregate import span_shares_many
from .errors import SpanError, TraceError
from .options import check_options
from .pipeline import Captured, model_name, prepare
from .records import HeadScore, unravel_head
from .recursion import uniform_rows
from .segments import BY, Segment, char_segments, role_runs, split_run
from .tokens import stop_tokens

__all__ = ["Node", "Route", "StepGraph", "step_graph", "graph_nodes", "absorb", "fold_loops", "loop_scale"]

#: Below this, a step is taken to keep all of its mass (it passes nothing on).
_STUCK = 1e-9

#: Traced nodes per batched span pass (bounds the ``[vec, layer, head, pos]`` shares held at once).
_BATCH = 16


def _groups(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class Node:
    """A node: ``kind`` is ``"prompt"``, ``"template"``, ``"other"`` (input segments), ``"step"``
    or ``"answer"``; positions ``[start, end)``."""

    name: str
    kind: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Route:
    """One path from an input segment to the answer: ``nodes[0]`` is the input, ``nodes[-1]``
    the answer (node indices); ``names`` the same nodes by name; ``mass`` the product of its
    edges (loop-folded)."""

    nodes: tuple[int, ...]
    mass: float
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.mass:.4f}  " + " <- ".join(self.names or map(str, self.nodes))

    def __repr__(self) -> str:
        return f"Route({' <- '.join(self.names or map(str, self.nodes))}, mass={self.mass:.4g})"


@dataclass
class StepGraph:
    """The step graph of one target (see the module docstring for every quantity)."""

    model: str
    ids: list[int]
    tokens: list[str]
    roles: list[str]
    output: tuple[int, int]
    reasoning: tuple[int, int] | None
    nodes: list[Node]
    traced: list[int]  # node indices of the traced nodes (steps, then the answer last)
    dist: Float[Tensor, "vec pos"]  # p_X over positions, one row per traced node
    edges: Float[Tensor, "vec node"]  # W[X, Y]
    edge_heads: Float[Tensor, "vec node layer head"]  # sums over (layer, head) to edges
    route_w: Float[Tensor, "vec layer"]  # route weights of each traced node's pass
    completeness: Float[Tensor, "vec layer"]
    relayed: Float[Tensor, " node"]
    absorbed: Float[Tensor, " node"]
    token_scores: Float[Tensor, " pos"]  # mass absorbed per input position
    answer_self: float
    unresolved: float
    params: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ questions
    def node_index(self, name: str) -> int:
        for i, n in enumerate(self.nodes):
            if n.name == name:
                return i
        raise TraceError(f"no node named {name!r}; names: {', '.join(n.name for n in self.nodes)}")

    @property
    def answer(self) -> int:
        return self.traced[-1]

    @property
    def steps(self) -> list[int]:
        return self.traced[:-1]

    @property
    def inputs(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.kind in ("prompt", "template", "other")]

    @property
    def folded(self) -> Float[Tensor, "vec node"]:
        """The loop-folded edges ``W'`` (:func:`fold_loops`) the chain and the routes run on."""
        return fold_loops(self.edges, self.traced)

    @property
    def inflow(self) -> Float[Tensor, " node"]:
        """The answer's mass entering each node: 1 for the answer, ``relayed`` for a step,
        ``absorbed`` for an input segment."""
        out = torch.zeros(len(self.nodes), dtype=torch.float64)
        out[self.inputs] = self.absorbed.double()[self.inputs]
        out[self.steps] = self.relayed.double()[self.steps]
        out[self.answer] = 1.0
        return out

    def edge(self, x: int | str, y: int | str) -> float:
        """``W[X, Y]``: the share of traced node ``x``'s mass that lands on node ``y`` (``y`` is
        ``x`` itself or an earlier node; a later ``y`` is refused, naming the direction)."""
        row, yi = self._edge(x, y, "edge")
        return float(self.edges[row, yi])

    def routes(self, k: int = 10, to: int | str | None = None) -> list[Route]:
        """The ``k`` heaviest routes input -> steps -> answer (optionally only into input ``to``)."""
        target = None if to is None else self._idx(to)
        return top_routes(self, k, target)

    def top_edge_heads(self, x: int | str, y: int | str, k: int = 5, weighting: str = "route") -> list[HeadScore]:
        """Heads carrying edge ``x <- y``; ``weighting="route"`` scales layer ``l`` by the route
        weight of ``x``'s pass (the README's default head ranking), ``"share"`` gives the
        additive shares that sum to the edge weight."""
        if weighting not in ("route", "share"):
            raise TraceError(f"weighting must be 'route' or 'share', got {weighting!r}")
        row, yi = self._edge(x, y, "top_edge_heads")
        heads = self.edge_heads[row, yi]
        if weighting == "route":
            heads = heads * self.route_w[row][:, None]
        flat = heads.flatten()
        order = torch.argsort(flat, descending=True)[: max(0, k)]
        return [HeadScore(*unravel_head(i, heads.shape[1]), float(flat[i])) for i in order]

    def summary(self, k: int = 5) -> str:
        lines = [
            f"ftlens step graph of {self.model}: {len(self.steps)} steps, {len(self.inputs)} input segments, "
            f"{len(self.tokens)} positions",
            f"mass: inputs {float(self.absorbed.sum()):.3f}, answer itself {self.answer_self:.3f}, "
            f"unresolved {self.unresolved:.3f}; completeness: max relative gap {float(self.completeness.max()):.1e}",
            "steps by relayed mass:",
        ]
        for i in sorted(self.steps, key=lambda j: -float(self.relayed[j]))[:k]:
            lines.append(f"  {self.nodes[i].name:>4} {float(self.relayed[i]):.3f}  {self.nodes[i].text.strip()[:60]!r}")
        lines.append("routes (input <- steps <- answer):")
        for r in self.routes(k):
            lines.append(f"  {r.mass:.3f}  " + " <- ".join(r.names))
        return "\n".join(lines)

    # ------------------------------------------------------------------ helpers
    def _idx(self, x: int | str) -> int:
        if isinstance(x, str):
            return self.node_index(x)
        if not 0 <= int(x) < len(self.nodes):
            raise TraceError(f"node index {x} out of range 0..{len(self.nodes) - 1}")
        return int(x)

    def _edge(self, x: int | str, y: int | str, what: str) -> tuple[int, int]:
        """The row of traced node ``x`` and the index of ``y`` for edge ``x <- y``; refuses a ``y``
        after ``x`` (causal attention: no mass flows there, the edge is the other way round)."""
        xi, yi = self._idx(x), self._idx(y)
        row = self._row(xi)
        nx, ny = self.nodes[xi], self.nodes[yi]
        if ny.start >= nx.end:
            raise TraceError(
                f"there is no edge {nx.name} <- {ny.name}: {ny.name} comes after {nx.name}, and an edge runs from a "
                f"traced node to itself or an earlier node; for the edge {ny.name} <- {nx.name} call "
                f"{what}({ny.name!r}, {nx.name!r})"
            )
        return row, yi

    def _row(self, node: int) -> int:
        if node not in self.traced:
            raise TraceError(f"node {self.nodes[node].name} is an input segment: it is not traced")
        return self.traced.index(node)


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


# ---------------------------------------------------------------------- the chain


def loop_scale(edges: Float[Tensor, "vec node"], traced: list[int]) -> Float[Tensor, " vec"]:
    """Per traced row, the factor that folds its self-loop: ``1 / (1 - W[S, S])`` for a step
    (0 for a step that keeps all of its mass, which passes nothing on), 1 for the answer (its
    self mass is reported, not recursed)."""
    keep = edges.double()[torch.arange(len(traced)), torch.tensor(traced)]
    scale = torch.where(1.0 - keep > _STUCK, 1.0 / (1.0 - keep).clamp_min(_STUCK), torch.zeros_like(keep))
    scale[-1] = 1.0
    return scale


def fold_loops(edges: Float[Tensor, "vec node"], traced: list[int]) -> Float[Tensor, "vec node"]:
    """The loop-folded rows ``W'[X, Y] = W[X, Y] / (1 - W[X, X])`` with ``W'[X, X] = 0`` (the
    answer's row is only stripped of its self mass), float64."""
    folded = edges.double() * loop_scale(edges, traced)[:, None]
    folded[torch.arange(len(traced)), torch.tensor(traced)] = 0.0
    return folded


def absorb(
    edges: Float[Tensor, "vec node"], traced: list[int], inputs: list[int]
) -> tuple[Float[Tensor, " node"], Float[Tensor, " node"], float, float]:
    """``(relayed, absorbed, answer_self, unresolved)`` of the absorbing chain (module doc).

    ``traced`` lists the traced nodes in position order, the answer last; ``edges[i]`` is the
    row of ``traced[i]``.  Steps only point to earlier nodes (causal attention).
    """
    n = edges.shape[1]
    folded, scale = fold_loops(edges, traced), loop_scale(edges, traced)
    relayed = torch.zeros(n, dtype=torch.float64)
    absorbed = torch.zeros(n, dtype=torch.float64)
    answer_self = float(edges.double()[-1, traced[-1]])
    unresolved = 0.0
    inflow = torch.zeros(n, dtype=torch.float64)
    inflow[traced[:-1]] = folded[-1, traced[:-1]]
    absorbed[inputs] = folded[-1, inputs]
    for row in range(len(traced) - 2, -1, -1):  # latest step first: all its inflow is known
        s = traced[row]
        relayed[s] = inflow[s]
        if scale[row] == 0:
            unresolved += float(inflow[s])
            continue
        absorbed[inputs] += inflow[s] * folded[row, inputs]
        earlier = traced[:row]
        inflow[earlier] += inflow[s] * folded[row, earlier]
    return relayed.float(), absorbed.float(), answer_self, unresolved


def top_routes(g: StepGraph, k: int, target: int | None = None, max_pops: int = 200_000) -> list[Route]:
    """Best-first search of the loop-folded DAG from the answer; routes in decreasing mass."""
    inputs = set(g.inputs)
    rows = {node: i for i, node in enumerate(g.traced)}
    folded = {node: row for node, row in zip(g.traced, g.folded)}
    heap: list[tuple[float, tuple[int, ...]]] = [(-1.0, (g.answer,))]
    out: list[Route] = []
    pops = 0
    while heap and len(out) < k and pops < max_pops:
        neg, path = heapq.heappop(heap)
        pops += 1
        node = path[-1]
        if node in inputs:
            if target is None or node == target:
                nodes = tuple(reversed(path))
                out.append(Route(nodes, -neg, tuple(g.nodes[j].name for j in nodes)))
            continue
        row = folded[node]
        for nxt in torch.nonzero(row > 0).flatten().tolist():
            if nxt in inputs or nxt in rows:
                heapq.heappush(heap, (neg * float(row[nxt]), path + (nxt,)))
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
    ``reasoning``, ``chat_template``, ``max_new_tokens`` are as in :func:`ftlens.trace`; a target
    without a reasoning span has no steps (the graph is the answer's own span pass).  ``steps``
    and ``segments`` say how the reasoning and the user prompt are split (``"sentence"``,
    ``"line"``, ``"word"``, ``"token"``, or character spans of that text).  ``captured``: reuse
    :func:`ftlens.pipeline.prepare`'s state (no new forward pass).  ``stop_rows="skip"``: a
    node's pass weighs only its tokens that are not stop tokens (``,`` ``.`` blank;
    :func:`ftlens.tokens.stop_tokens`), all of them when it has no other; every position still
    belongs to its node, so the bookkeeping is unchanged.
    """
    check_options("ifr-span", None, threshold, "output", completeness_tol, stop_rows)
    t0 = time.perf_counter()
    cap = captured if captured is not None else prepare(
        model, prompt, target, progress=progress, completeness_tol=completeness_tol, **inputs
    )
    seq = cap.seq
    nodes = graph_nodes(seq.tokens, seq.roles, seq.output, seq.reasoning, steps, segments)
    traced = [i for i, n in enumerate(nodes) if n.kind in ("step", "answer")]
    inputs_idx = [i for i, n in enumerate(nodes) if n.kind not in ("step", "answer")]
    node_of = torch.empty(seq.n, dtype=torch.long)
    for i, n in enumerate(nodes):
        node_of[n.start : n.end] = i
    n_pos, row_start = seq.n, seq.prompt_len
    keep = torch.ones(n_pos, dtype=torch.bool)
    if stop_rows == "skip":
        keep = ~stop_tokens(model.tokenizer, seq.ids.tolist())
    dists, edge_rows, head_rows, route_rows, gaps = [], [], [], [], []
    t1 = time.perf_counter()
    for group in _groups(traced, _BATCH):
        w = torch.zeros(len(group), n_pos - row_start)
        for r, i in enumerate(group):
            node = nodes[i]
            w[r, node.start - row_start : node.end - row_start] = 1.0
            w[r] = uniform_rows(w[r], keep[row_start:])
        passes = span_shares_many(cap.states, cap.info, cap.row_pos, w.to(cap.row_pos.device), threshold, tol=cap.tol)
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
    token_scores = _token_scores(torch.stack(dists).double(), edges.double(), traced, relayed.double(), nodes, seq.n)
    return StepGraph(
        model=model_name(model), ids=seq.ids.tolist(), tokens=seq.tokens, roles=seq.roles,
        output=seq.output, reasoning=seq.reasoning, nodes=nodes, traced=traced,
        dist=torch.stack(dists), edges=edges, edge_heads=torch.stack(head_rows),
        route_w=torch.stack(route_rows), completeness=torch.stack(gaps), relayed=relayed, absorbed=absorbed,
        token_scores=token_scores, answer_self=answer_self, unresolved=unresolved,
        params={"steps": steps if isinstance(steps, str) else [list(s) for s in steps],
                "segments": segments if isinstance(segments, str) else [list(s) for s in segments],
                "threshold": threshold, "stop_rows": stop_rows, "completeness_tol": cap.tol, "family": cap.info.family.kind},
        timings={**cap.timings, "graph": time.perf_counter() - t1, "total": time.perf_counter() - t0},
    )  # fmt: skip


def _token_scores(dist, edges, traced, relayed, nodes, n) -> Tensor:
    """Mass absorbed per input position: the answer's own distribution on inputs plus each
    step's loop-folded distribution times the mass it relays."""
    inputs_end = nodes[traced[0]].start
    scale = loop_scale(edges, traced)
    out = dist[-1].clone()
    for row, s in enumerate(traced[:-1]):
        out += relayed[s] * dist[row] * scale[row]
    out[inputs_end:] = 0.0
    return out.float()
