#!/usr/bin/env python
"""Why each setting wins where it does: the recursion's choices, one at a time, against the reference.

ftlens' ``flashtrace`` and the reference package differ in four choices.  On the same held-out
examples (twohop, arith, vartrack, needle_multikey) and from the one capture pass per example,
this script runs every combination of them and scores Recovery@10% of the evidence tokens,
paired with the reference package (``flashtrace`` 0.1.1, hops=1) on the same example:

- ``span``: what hop 0 explains -- ``output`` (the answer; ftlens' default) or ``target``
  (reasoning + answer, ``explain="target"``);
- ``rows``: ``keep`` every row, or ``skip`` the target's stop tokens (``,`` ``.`` blank) as rows
  (``stop_rows="skip"``: they neither explain nor relay);
- ``handoff``: which mass a hop re-traces -- ``reasoning`` (the spec's recursion: the mass on
  the reasoning tokens; the mass on the answer's own tokens is reported, not recursed) or
  ``target`` (the mass on every target token, the answer's included, is re-traced: how the
  reference hands mass on);
- ``sources``: ``all`` input tokens ranked, or stop-token sources zeroed before ranking
  (``masked``: the mask the reference applies inside its method; the spec allows it only applied
  to every method alike, which is what this column is);

and hops 0..``--hops`` (hop 0 does not depend on ``handoff``).  Every variant is the library's own
recursion: one capture pass per example (:func:`ftlens.pipeline.prepare`), then
:func:`ftlens.pipeline.attribute` with ``explain=span, stop_rows=rows, handoff=handoff`` and
``Trace.scores_after(k)`` for each hop (the recursion stops once the pending mass is below
``PENDING_TOL``; later hops keep its scores); ``sources=masked`` zeroes the stop tokens among
the prompt sources before ranking.

Reported per variant: Recovery@10%, its paired difference to the reference (mean ± s.e.), and
``same top`` -- the share of examples whose top-10% prompt tokens are exactly the reference's
(1.0 means the variant ranks like the reference on every example).  Outputs under --out:
``<name>.csv`` (example x variant), ``<name>_summary.csv``, ``<name>.md`` (with the exact command).
"""

from __future__ import annotations

import time

import torch

from ftlens.eval import scaffold as S
from ftlens.eval.cases import build_case
from ftlens.eval.loading import load_model_for
from ftlens.eval.metrics import recovery, top_slots
from ftlens.eval.reference import reference_flashtrace
from ftlens.pipeline import attribute, prepare

TASKS = ("twohop", "arith", "vartrack", "needle_multikey")
SPANS, ROWS, HANDOFFS, SOURCES = ("output", "target"), ("keep", "skip"), ("reasoning", "target"), ("all", "masked")
METRICS = ("recovery", "d_recovery", "same_top")


def parse(argv=None):
    p = S.parser(__doc__)
    S.add_flags(p, "model", "n", "seed", "out", "quick", "no-progress", "threads", "from-csv",
                n={"default": 30, "help": "examples per task"},
                seed={"default": 100, "help": "dataset seed (default 100: held out, as the committed runs)"},
                quick={"help": "CI smoke run: 1 example of twohop and needle_multikey, 96 tokens, 1 hop"})
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--chain-length", type=int, default=128, help="prompt tokens of twohop / arith / vartrack")
    p.add_argument("--needle-length", type=int, default=256, help="prompt tokens of needle_multikey")
    p.add_argument("--hops", type=int, default=3, help="hops of the recursion (0..hops are scored)")
    p.add_argument("--pct", type=float, default=10.0)
    p.add_argument("--no-reference", action="store_true", help="skip the reference package")
    p.add_argument("--name", default="recovery_ingredients")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.chain_length, a.needle_length, a.hops = 1, 96, 96, 1
        if a.tasks == list(TASKS):
            a.tasks = ["twohop", "needle_multikey"]
    return a


def variant(span: str, rows: str, handoff: str, hop: int, sources: str) -> str:
    """The variant's name; hop 0 has no handoff."""
    mid = f"{handoff}/h{hop}" if hop else "h0"
    return f"{span}/{rows}/{mid}/{sources}"


def recursions(cap, hops: int) -> dict[tuple, torch.Tensor]:
    """``(span, rows, handoff, hop) -> F`` over positions (module docstring): the library's
    recursion on ``cap``'s state, one :func:`attribute` per ``span x rows x handoff``."""
    out = {}
    for rows in ROWS:
        for span in SPANS:
            for handoff in HANDOFFS:
                tr = attribute(cap, hops=hops, explain=span, stop_rows=rows, handoff=handoff)
                out[(span, rows, None, 0)] = tr.scores_after(0)
                for k in range(1, hops + 1):
                    out[(span, rows, handoff, k)] = tr.scores_after(k)
    return out


def main(argv=None) -> int:
    args = parse(argv)
    run = S.Run.start("recovery_ingredients.py", args, argv)
    if args.from_csv:
        rows = S.read_csv(args.from_csv, floats=METRICS)
        write(run, rows, float("nan"))
        return 0
    model = load_model_for(args.model)
    tok = model.tokenizer
    jobs = run.task_jobs(args.tasks, tok, args.n, args.chain_length, args.needle_length)
    rows: list[dict] = []
    t_start = time.perf_counter()
    bar = run.progress(jobs, "recovery_ingredients")
    for label, ex in bar:
        bar.set_postfix_str(label)
        seq, case, fmt = build_case(model, ex)
        cap = prepare(model, ex["prompt"], ex["target"])
        if cap.seq.ids.tolist() != seq.ids.tolist():
            raise RuntimeError("the capture's ids differ from the evaluation sequence")
        stop = cap.stop
        got = recursions(cap, args.hops)
        ref = None if args.no_reference else reference_flashtrace(model, seq, fmt, hops=1)[case.prompt_pos].float()
        ref_top = None if ref is None else set(top_slots(ref, args.pct).tolist())
        ref_rec = float("nan") if ref is None else recovery(ref, case.evidence, args.pct)
        if ref is not None:
            rows.append({"task": label, "id": ex["id"], "variant": "reference", "recovery": ref_rec,
                         "d_recovery": 0.0, "same_top": 1.0})
        for (span, rws, handoff, k), f in got.items():
            for sources in SOURCES:
                ps = f[case.prompt_pos].float()
                if sources == "masked":
                    ps = ps.masked_fill(stop[case.prompt_pos], 0.0)
                rec = recovery(ps, case.evidence, args.pct)
                same = float("nan") if ref_top is None else float(set(top_slots(ps, args.pct).tolist()) == ref_top)
                rows.append({"task": label, "id": ex["id"], "variant": variant(span, rws, handoff, k, sources),
                             "recovery": rec, "d_recovery": rec - ref_rec, "same_top": same})
        S.write_csv(run.path(f"{args.name}.csv"), rows)
    elapsed = time.perf_counter() - t_start
    write(run, rows, elapsed)
    run.done(f"{args.name}.md", rows, elapsed)
    return 0


def _f(d: dict, m: str, signed: bool = False) -> str:
    v, se = d[m], d[m + "_se"]
    if v != v:
        return "-"
    return f"{v:+.3f} ± {se:.3f}" if signed else f"{v:.3f}"


#: The path from ftlens' default to the reference, one choice at a time (hops 1, as the reference).
PATH = (("ftlens default (explain=output)", "output/keep/reasoning/h1/all"),
        ("+ explain=target", "target/keep/reasoning/h1/all"),
        ("+ stop_rows=skip", "target/skip/reasoning/h1/all"),
        ("+ answer mass re-traced (handoff=target)", "target/skip/target/h1/all"),
        ("+ stop sources zeroed (= the reference's choices)", "target/skip/target/h1/masked"))


def write(run, rows, elapsed: float) -> None:
    args = run.args
    summary = S.summarise(rows, ("task", "variant"), METRICS)
    S.write_csv(run.path(f"{args.name}_summary.csv"), summary)
    by = {(d["task"], d["variant"]): d for d in summary}
    tasks = list(dict.fromkeys(d["task"] for d in summary))
    n_ex = len({r["id"] for r in rows})
    md = run.header("Recovery through the chain: the recursion's choices one at a time, against the reference") + [
        f"Model: {run.model_label}; {n_ex} held-out examples (seed {args.seed}); chain tasks at {args.chain_length} "
        f"prompt tokens, needle_multikey at {args.needle_length}; Recovery@{args.pct:g}% of the evidence tokens "
        f"among the user-prompt tokens; wall time {elapsed:.0f} s. Variant names are "
        "`span/rows/handoff/hop/sources` (module docstring). `vs reference`: paired difference to the reference "
        "package (hops=1) on the same example, mean ± s.e. (> 0: ftlens finds more evidence). `same top`: share of "
        "examples whose top-10% prompt tokens are exactly the reference's. Every variant is the library's recursion "
        "(`ftlens.pipeline.attribute` with `explain`, `stop_rows` and `handoff`, read after each hop with "
        "`Trace.scores_after`).", "",
        "## From ftlens' default to the reference, one choice at a time (hops = 1)", ""]
    md.append(S.markdown_table(["step"] + [f"{t}: Recovery / vs ref / same top" for t in tasks], [
        [name] + [(f"{_f(by[(t, v)], 'recovery')} / {_f(by[(t, v)], 'd_recovery', True)} / "
                   f"{_f(by[(t, v)], 'same_top')}") if (t, v) in by else "-" for t in tasks]
        for name, v in PATH] + [["reference"] + [_f(by[(t, "reference")], "recovery") if (t, "reference") in by
                                                 else "-" for t in tasks]]))
    hop_cols = [("h0", None, 0)] + [(f"{h} h{k}", h, k) for h in HANDOFFS for k in range(1, args.hops + 1)]
    for t in tasks:
        md += ["", f"## {t}: Recovery (vs reference) by span x rows x sources and hop", ""]
        body = []
        for span in SPANS:
            for rws in ROWS:
                for src in SOURCES:
                    cells = []
                    for _, h, k in hop_cols:
                        d = by.get((t, variant(span, rws, h, k, src)))
                        cells.append("-" if d is None else f"{_f(d, 'recovery')} ({_f(d, 'd_recovery', True)})")
                    body.append([f"{span}/{rws}/{src}"] + cells)
        md.append(S.markdown_table(["span/rows/sources"] + [c for c, _, _ in hop_cols], body))
        if (t, "reference") in by:
            md += ["", f"Reference: {_f(by[(t, 'reference')], 'recovery')} (n = {by[(t, 'reference')]['n']})."]
    S.write_text(run.path(f"{args.name}.md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
