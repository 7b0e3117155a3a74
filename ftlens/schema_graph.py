"""The step graph file format: versioned JSON (exact float32 round trip), and its checks.

Layout (``format`` ``"ftlens.step_graph"``, ``schema_version`` 1): ``model``, ``ftlens_version``,
``params``, ``ids``, ``tokens``, ``roles``, ``output``, ``reasoning``, ``nodes`` (``[name, kind,
start, end, text]`` each), ``traced`` (node indices of the traced rows), the tensors ``dist``
``[vec, pos]``, ``edges`` ``[vec, node]``, ``edge_heads`` ``[vec, node, layer, head]``, ``route_w``
and ``completeness`` ``[vec, layer]``, ``relayed``, ``absorbed`` ``[node]``, ``token_scores``
``[pos]``, and ``answer_self``, ``unresolved``, ``timings``.  A file is refused with
:class:`~ftlens.errors.SchemaError` when it is not a step graph, is of a newer schema, or its
shapes, nodes or mass bookkeeping disagree (method §10b: edge rows sum to 1; absorbed mass,
the answer's own mass and the unresolved mass sum to 1).
"""

from __future__ import annotations

from typing import Any

from . import jsonfile as jf
from .errors import SchemaError
from .jsonfile import as_dict, as_float, as_int, as_list, as_str, tolist

#: Version of the layout written by :func:`encode`; readers refuse newer ones.
SCHEMA_VERSION = 1
FORMAT_NAME = "ftlens.step_graph"
#: Node kinds: input segments, reasoning steps, the answer.
NODE_KINDS = ("prompt", "template", "other", "step", "answer")
#: Slack for sums read back from float32 JSON.
_MASS_TOL = 1e-3
#: Tensor fields and their number of dimensions.
TENSORS = {"dist": 2, "edges": 2, "edge_heads": 4, "route_w": 2, "completeness": 2, "relayed": 1, "absorbed": 1,
           "token_scores": 1}


def encode(g: Any) -> dict[str, Any]:
    """A JSON-ready dict of a :class:`~ftlens.graph.StepGraph` (tensors as shortest float32 decimals)."""
    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "ftlens_version": g.version,
        "model": g.model,
        "params": g.params,
        "ids": list(g.ids),
        "tokens": list(g.tokens),
        "roles": list(g.roles),
        "output": list(g.output),
        "reasoning": list(g.reasoning) if g.reasoning is not None else None,
        "nodes": [[n.name, n.kind, n.start, n.end, n.text] for n in g.nodes],
        "traced": list(g.traced),
        **{name: tolist(getattr(g, name)) for name in TENSORS},
        "answer_self": g.answer_self,
        "unresolved": g.unresolved,
        "timings": dict(g.timings),
    }


def decode(d: Any) -> dict[str, Any]:
    """The constructor fields of a step graph (``nodes`` as ``(name, kind, start, end, text)``);
    :class:`SchemaError` on an unknown schema or bad content."""
    jf.check_header(d, FORMAT_NAME, SCHEMA_VERSION)
    with jf.fields_of("step graph"):
        out = {
            **jf.sequence_fields(d),
            "nodes": [_node(n) for n in as_list(d["nodes"])],
            "traced": [as_int(i) for i in as_list(d["traced"])],
            **{name: jf.tensor(d[name], ndim, "step graph") for name, ndim in TENSORS.items()},
            "answer_self": as_float(d["answer_self"]),
            "unresolved": as_float(d["unresolved"]),
            "params": dict(as_dict(d["params"])),
            "timings": {as_str(k): as_float(v) for k, v in as_dict(d.get("timings", {})).items()},
            "version": as_str(d.get("ftlens_version", "")),
        }
    check(out)
    return out


def _node(x: Any) -> tuple[str, str, int, int, str]:
    name, kind, start, end, text = as_list(x)
    return as_str(name), as_str(kind), as_int(start), as_int(end), as_str(text)


def check(g: dict[str, Any]) -> None:
    """Shapes, nodes and mass bookkeeping agree, so every StepGraph method works on a loaded graph."""

    def bad(what: str) -> SchemaError:
        return SchemaError(f"corrupt ftlens step graph: {what}; re-create the file with ftlens")

    n, nodes, traced = len(g["tokens"]), g["nodes"], g["traced"]
    if len(g["roles"]) != n or len(g["ids"]) != n or g["token_scores"].numel() != n:
        raise bad("tokens, roles, ids and token scores differ in length")
    if not nodes or nodes[-1][1] != "answer" or any(kind not in NODE_KINDS for _, kind, *_ in nodes):
        raise bad(f"nodes must be of the kinds {', '.join(NODE_KINDS)} and end with the answer")
    pos = 0
    for _, _, start, end, _ in nodes:
        if start != pos or end <= start:
            raise bad("nodes do not cover the positions in order")
        pos = end
    if pos != g["output"][1] or tuple(nodes[-1][2:4]) != tuple(g["output"]):
        raise bad("the answer node is not the output span")
    if traced != [i for i, (_, kind, *_) in enumerate(nodes) if kind in ("step", "answer")]:
        raise bad("traced rows are not the steps and the answer")
    v, m = len(traced), len(nodes)
    shapes = {"dist": (v, n), "edges": (v, m), "relayed": (m,), "absorbed": (m,)}
    if any(tuple(g[k].shape) != s for k, s in shapes.items()):
        raise bad("tensor shapes do not match the nodes and positions")
    eh, rw, gap = g["edge_heads"], g["route_w"], g["completeness"]
    if tuple(eh.shape[:2]) != (v, m) or rw.shape[0] != v or tuple(gap.shape) != tuple(rw.shape) or \
            rw.shape[1] != eh.shape[2]:
        raise bad("per-edge head tensors do not match the nodes and layers")
    if any(float(g[k].min()) < 0 for k in ("dist", "edges", "relayed", "absorbed", "token_scores") if g[k].numel()):
        raise bad("negative masses")
    if float((g["edges"].sum(-1) - 1).abs().max()) > _MASS_TOL:
        raise bad("an edge row does not sum to 1")
    total = float(g["absorbed"].sum()) + g["answer_self"] + g["unresolved"]
    if abs(total - 1) > _MASS_TOL:
        raise bad(f"mass is not conserved (absorbed + answer itself + unresolved = {total:.4f}, not 1)")
