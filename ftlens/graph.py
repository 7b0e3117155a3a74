"""The step graph's result: nodes, routes and the chain algebra (what :func:`ftlens.stepgraph.step_graph` builds).

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

:class:`StepGraph` knows nothing about models or hooks: it answers questions (edges, routes,
heads per edge, summary) and saves/loads itself as versioned JSON (:mod:`ftlens.schema_graph`),
like :class:`ftlens.result.Trace`.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from . import jsonfile, schema_graph
from .errors import TraceError
from .records import HeadScore, unravel_head

__all__ = ["Node", "Route", "StepGraph", "absorb", "fold_loops", "loop_scale", "top_routes", "token_scores"]

#: Below this, a step is taken to keep all of its mass (it passes nothing on).
STUCK = 1e-9


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
    version: str = ""

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

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (:mod:`ftlens.schema_graph`): float32 values with the fewest digits
        that read back exactly."""
        return schema_graph.encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepGraph":
        """Rebuild a step graph; :class:`~ftlens.errors.SchemaError` on an unknown schema or bad content."""
        fields = schema_graph.decode(d)
        fields["nodes"] = [Node(*n) for n in fields["nodes"]]
        return cls(**fields)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (``.gz``: gzip); an existing file is replaced only when complete."""
        return jsonfile.write(self.to_dict(), path, "step graph")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StepGraph":
        """Read a step graph written by :meth:`save`; :class:`~ftlens.errors.SchemaError` if it is not one."""
        return cls.from_dict(jsonfile.parse(jsonfile.read(path, "step graph"), str(Path(path)), "step graph"))

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


def loop_scale(edges: Float[Tensor, "vec node"], traced: list[int]) -> Float[Tensor, " vec"]:
    """Per traced row, the factor that folds its self-loop: ``1 / (1 - W[S, S])`` for a step
    (0 for a step that keeps all of its mass, which passes nothing on), 1 for the answer (its
    self mass is reported, not recursed)."""
    keep = edges.double()[torch.arange(len(traced)), torch.tensor(traced)]
    scale = torch.where(1.0 - keep > STUCK, 1.0 / (1.0 - keep).clamp_min(STUCK), torch.zeros_like(keep))
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


def token_scores(dist, edges, traced, relayed, nodes, n) -> Float[Tensor, " pos"]:
    """Mass absorbed per input position: the answer's own distribution on inputs plus each
    step's loop-folded distribution times the mass it relays."""
    inputs_end = nodes[traced[0]].start
    scale = loop_scale(edges, traced)
    out = dist[-1].clone()
    for row, s in enumerate(traced[:-1]):
        out += relayed[s] * dist[row] * scale[row]
    out[inputs_end:] = 0.0
    return out.float()
