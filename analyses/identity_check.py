#!/usr/bin/env python
"""Behaviour identity check: the outputs a refactor must not change, written to a folder and compared.

Three artifacts on the default model (SmolLM2-135M-Instruct, float32, CPU):

- ``needle_summary.txt``: ``ftlens.trace(model, NEEDLE_PROMPT, NEEDLE_TARGET, hops=2).summary(10)``;
- ``step_graph.txt`` + ``step_graph.npz``: a step graph of a short teacher-forced chain -- its
  summary, every non-tensor field as JSON text, every tensor as float32/int64 arrays (timings
  left out: they are measured);
- ``study/<table>.csv``: a head study of three short needle records with its causal pass
  (k 3, 2 random draws), every table of ``ftlens.study.SCHEMA`` as CSV (the measured ``trace_s``
  column blanked).

``--write DIR`` writes them; ``--compare DIR`` writes them to a temporary folder and compares
each file with ``DIR``'s byte for byte, printing ``identical`` / ``DIFFERENT`` per file (exit 1
if any differs).  ``--tolerance REL`` compares numbers within a relative tolerance instead and
text exactly (for another machine, where float kernels may round differently); the test suite
uses it through :func:`compare` when the machine is not the one the folder was written on
(``machine.json``).  Committed reference: ``tests/golden/`` (written before the issue-20
refactor).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

STEP_PROMPT = ("Note one: the sky is red today. Note two: Maria has the locker code 7351. "
               "Note three: the bus leaves at noon. Question: what is Maria's locker code?")
STEP_TARGET = ("\n<think>The question asks for a locker code. Note two mentions Maria. "
               "Her code is 7351.</think>\nMaria's locker code is 7351.")


def _study_records() -> list[dict]:
    fill = "The farmer carried the green basket near the market. "
    out = []
    for i in range(3):
        code = str(4000 + 37 * i)
        needle = f"The code for box {i} is {code}."
        out.append({"id": f"r{i}", "prompt": fill * (1 + i % 2) + needle + " " + fill + f"\nWhat is the code for box {i}?",
                    "target": f"The code is {code}.", "evidence": needle})
    return out


def machine() -> dict:
    """What float results depend on: the processor, torch and its thread count."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}


#: The step graph's fields compared (those it had before the refactor; timings are measured).
GRAPH_FIELDS = ("model", "ids", "tokens", "roles", "output", "reasoning", "nodes", "traced", "answer_self",
                "unresolved", "params")
GRAPH_TENSORS = ("dist", "edges", "edge_heads", "route_w", "completeness", "relayed", "absorbed", "token_scores")


def _graph_fields(g) -> tuple[dict, dict]:
    """A step graph as (JSON-able non-tensor fields, named arrays)."""
    meta = {name: getattr(g, name) for name in GRAPH_FIELDS}
    meta["nodes"] = [[n.name, n.kind, n.start, n.end, n.text] for n in g.nodes]
    meta["output"], meta["reasoning"] = list(g.output), None if g.reasoning is None else list(g.reasoning)
    arrays = {name: getattr(g, name).detach().cpu().numpy() for name in GRAPH_TENSORS}
    return meta, arrays


def write(out: Path, model=None) -> Path:
    """Write the three artifacts (and ``machine.json``) into ``out``."""
    import ftlens
    from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET
    from ftlens.stepgraph import step_graph
    from ftlens.study import SCHEMA, run_study

    model = model if model is not None else ftlens.load_model()
    out.mkdir(parents=True, exist_ok=True)
    tr = ftlens.trace(model, NEEDLE_PROMPT, NEEDLE_TARGET, hops=2)
    (out / "needle_summary.txt").write_text(tr.summary(10) + "\n")
    g = step_graph(model, STEP_PROMPT, STEP_TARGET)
    meta, arrays = _graph_fields(g)
    (out / "step_graph.txt").write_text(g.summary(10) + "\n" + json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (out / "step_graph.npz").write_bytes(buf.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        study = run_study(model, _study_records(), out=Path(tmp) / "s", k=3, draws=2, rank_by="evidence")
    (out / "study").mkdir(exist_ok=True)
    for name, cols in SCHEMA.items():
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow([c for c, _ in cols])
        for r in study.tables.get(name, []):
            w.writerow(["" if c == "trace_s" or r.get(c) is None else repr(r[c]) if t == "float" else r[c]
                        for c, t in cols])
        (out / "study" / f"{name}.csv").write_text(text.getvalue())
    (out / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")
    return out


def files(folder: Path) -> list[str]:
    """The files under ``folder`` (relative paths), ``machine.json`` left out."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "machine.json")


def _close_text(a: str, b: str, rel: float) -> bool:
    """Text equal except numbers, which agree within ``rel`` (relative) or 1e-9 (absolute)."""
    import re

    num = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")
    if num.sub("#", a) != num.sub("#", b):
        return False
    for x, y in zip(num.findall(a), num.findall(b)):
        fx, fy = float(x), float(y)
        if not (math.isclose(fx, fy, rel_tol=rel, abs_tol=1e-9) or (math.isnan(fx) and math.isnan(fy))):
            return False
    return True


def _close_npz(a: bytes, b: bytes, rel: float) -> bool:
    za, zb = np.load(io.BytesIO(a)), np.load(io.BytesIO(b))
    if sorted(za.files) != sorted(zb.files):
        return False
    return all(za[k].shape == zb[k].shape and np.allclose(za[k], zb[k], rtol=rel, atol=1e-9, equal_nan=True)
               for k in za.files)


def compare(reference: Path, fresh: Path, rel: float | None = None) -> dict[str, bool]:
    """Per file of ``reference``: whether ``fresh`` holds the same bytes (``rel=None``) or the
    same text and numbers within ``rel``."""
    out = {}
    names = sorted(set(files(reference)) | set(files(fresh)))
    for name in names:
        a, b = reference / name, fresh / name
        if not (a.exists() and b.exists()):
            out[name] = False
        elif rel is None:
            out[name] = a.read_bytes() == b.read_bytes()
        elif name.endswith(".npz"):
            out[name] = _close_npz(a.read_bytes(), b.read_bytes(), rel)
        else:
            out[name] = _close_text(a.read_text(), b.read_text(), rel)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path, metavar="DIR")
    g.add_argument("--compare", type=Path, metavar="DIR")
    p.add_argument("--tolerance", type=float, default=None, metavar="REL")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"machine: {machine()}")
    if a.write:
        write(a.write)
        print(f"wrote {', '.join(files(a.write))} to {a.write}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = compare(a.compare, write(Path(tmp)), a.tolerance)
    how = "byte for byte" if a.tolerance is None else f"within relative {a.tolerance:g}"
    for name, same in res.items():
        print(f"{'identical' if same else 'DIFFERENT'}  {name}  ({how})")
    return 0 if all(res.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
