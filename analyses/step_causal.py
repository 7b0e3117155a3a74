#!/usr/bin/env python
"""Is the step graph right?  A causal check of its step ranking on teacher-forced chains.

Per example (tasks with a ``<think>`` chain: twohop, arith, vartrack, needle_multivalue -- the
needle whose chain has one sentence per value), build the step graph
(:func:`ftlens.stepgraph.step_graph`, reasoning split into sentences) and, for every reasoning step
``S`` inside the reasoning span (the ``</think>`` tokens between reasoning and answer are a node
of the graph but not a candidate here), replace its tokens by the fixed filler token (``"_"``, as
in faithfulness.py, the same for every weighting) and measure the drop in the answer's
teacher-forced log-prob (answer span only):

    drop(S) = sum_{t in O} log p(x_t | x_<t) - the same with S's tokens replaced

Five step weightings, each ranks the same steps:

- ``graph``: the step graph's ``relayed[S]`` (the answer's mass passing through ``S``, over
  every path: directly from the answer and through later steps);
- ``graph-direct``: the answer's direct edge ``W[A, S]`` alone (a diagnostic: teacher-forced
  deletion keeps the later steps' tokens, so it cannot remove the paths through them);
- ``token-recursion``: a flashtrace trace with ``hops=2``: ``sum_k sum_{s in S} mu_k[s]``
  (``Trace.relayed_mass()``, the pending mass each hop hands on);
- ``recursion-hop0``: ``sum_{s in S} mu_0[s]`` only (the answer's own first pass: the direct part);
- ``rollout``: attention rollout (ftlens.eval.baselines), mean over the answer rows, summed over
  ``S``'s tokens.

Per example and weighting: the drop of its top-ranked step, of its lowest-ranked step, of one
random step (seeded per example, the same step for every weighting), the mean drop over all steps
(the expectation of a random pick), and the Spearman rank correlation (average ranks for ties)
between the weights and the measured drops over the steps (NaN when either is constant).  95 %
confidence intervals of means are percentile bootstraps over examples (2000 resamples, seeded).
Outputs under --out: ``step_causal.csv`` (per example x weighting, with the per-step weights and
drops), ``step_causal.md`` (tables and the exact command), ``step_causal_summary.csv``.
"""

from __future__ import annotations

import json
import random
import time

import torch

import ftlens
from ftlens.eval import baselines as B
from ftlens.eval import scaffold as S
from ftlens.eval.cases import build_case
from ftlens.eval.loading import load_model_for
from ftlens.eval.scoring import default_fill, target_logprobs
from ftlens.stepgraph import step_graph
from ftlens.study.stats import spearman

WEIGHTINGS = ("graph", "graph-direct", "token-recursion", "recursion-hop0", "rollout")
TASKS = ("twohop", "arith", "vartrack", "needle_multivalue")
METRICS = ("drop_top", "drop_random", "drop_low", "drop_mean", "top_minus_random", "top_minus_low", "spearman")


def parse(argv=None):
    p = S.parser(__doc__)
    S.add_flags(p, "model", "n", "seed", "out", "quick", "no-progress", "threads",
                n={"default": 12, "help": "examples per task (default 12: 48 in all)"},
                seed={"default": 100, "help": "dataset seed (default 100: held out, as the committed runs)"},
                quick={"help": "CI smoke run: 1 example of twohop and vartrack, 96-token prompts"})
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--chain-length", type=int, default=128, help="prompt tokens of twohop / arith / vartrack")
    p.add_argument("--needle-length", type=int, default=256, help="prompt tokens of needle_multivalue")
    p.add_argument("--recursion-hops", type=int, default=2, help="hops of the token-level flashtrace trace")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.chain_length, a.needle_length, a.boot = 1, 96, 96, 200
        if a.tasks == list(TASKS):
            a.tasks = ["twohop", "vartrack"]
    return a


# ---------------------------------------------------------------------------- statistics
def boot_ci(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean and 95 % percentile-bootstrap interval over the non-NaN values; ``(mean, lo, hi, n)``."""
    v = [float(x) for x in values if x == x]
    if not v:
        return float("nan"), float("nan"), float("nan"), 0
    mu = sum(v) / len(v)
    if len(v) == 1:
        return mu, float("nan"), float("nan"), 1
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(v, k=len(v))) / len(v) for _ in range(n_boot))
    return mu, means[int(0.025 * n_boot)], means[min(n_boot - 1, int(0.975 * n_boot))], len(v)


# ---------------------------------------------------------------------------- one example
def deletion_logprobs(model, seq, steps: list[tuple[int, int]], fill: int) -> torch.Tensor:
    """``[1 + steps, target tokens]``: the target's per-token log-probs, unchanged (row 0) and
    with each step's tokens replaced by ``fill`` (row ``1 + i``), teacher-forced, one batch."""
    batch = [seq.ids.clone()]
    for a, b in steps:
        x = seq.ids.clone()
        x[a:b] = fill
        batch.append(x)
    return target_logprobs(model, torch.stack(batch), seq.prompt_len)


def span_drops(lp: torch.Tensor, start: int, a: int, b: int) -> list[float]:
    """Per deletion, the drop of the summed log-prob of positions ``[a, b)``: unchanged - deleted."""
    s = lp[:, a - start : b - start].sum(-1)
    return [float(s[0] - s[i]) for i in range(1, s.shape[0])]


def edge_rows(g, lp, seq, node_ids: list[int], label: str, ex_id: str) -> list[dict]:
    """The edge check: for every traced step ``X`` after at least two candidate steps ``Y``,
    Spearman between the graph's edges ``W[X, Y]`` and the drop of ``X``'s own log-prob when
    ``Y`` is replaced -- the same teacher-forced deletions, read at ``X`` instead of the answer.
    ``recency`` (the nearer ``Y``, the higher) is the baseline ranking."""
    rows = []
    for x in g.steps:
        a, b = g.nodes[x].start, g.nodes[x].end
        earlier = [j for j, i in enumerate(node_ids) if g.nodes[i].end <= a]
        if len(earlier) < 2:
            continue
        drops_all = span_drops(lp, seq.prompt_len, a, b)
        drops = [drops_all[j] for j in earlier]
        w = [g.edge(x, node_ids[j]) for j in earlier]
        top = max(range(len(w)), key=lambda i: (w[i], -i))
        rows.append({
            "task": label, "id": ex_id, "node": g.nodes[x].name, "n_earlier": len(earlier),
            "spearman_edge": spearman(w, drops), "spearman_recency": spearman([float(j) for j in earlier], drops),
            "top_minus_mean": drops[top] - sum(drops) / len(drops),
            "weights": json.dumps([round(v, 5) for v in w]), "drops": json.dumps([round(v, 4) for v in drops]),
        })
    return rows


def weightings(model, ex, seq, g, steps: list[tuple[int, int]], node_ids: list[int], hops: int) -> dict:
    """``name -> per-step weights`` for every weighting of :data:`WEIGHTINGS`."""
    tr = ftlens.trace(model, ex["prompt"], ex["target"], method="flashtrace", hops=hops)
    if list(tr.ids) != seq.ids.tolist():
        raise RuntimeError("trace ids differ from the evaluation sequence")
    rm = tr.relayed_mass()
    mu, mu0 = rm.sum(0), rm[0]
    ro = B.rollout(model, seq)
    return {
        "graph": [float(g.relayed[i]) for i in node_ids],
        "graph-direct": [g.edge(g.answer, i) for i in node_ids],
        "token-recursion": [float(mu[a:b].sum()) for a, b in steps],
        "recursion-hop0": [float(mu0[a:b].sum()) for a, b in steps],
        "rollout": [float(ro[a:b].sum()) for a, b in steps],
    }


def example_rows(model, ex, label, fill, args) -> tuple[list[dict], list[dict]]:
    seq, case, _ = build_case(model, ex)
    t0 = time.perf_counter()
    g = step_graph(model, ex["prompt"], ex["target"])
    if g.ids != seq.ids.tolist():
        raise RuntimeError("step graph ids differ from the evaluation sequence")
    r0, r1 = seq.reasoning
    node_ids = [i for i in g.steps if r0 <= g.nodes[i].start and g.nodes[i].end <= r1]
    steps = [(g.nodes[i].start, g.nodes[i].end) for i in node_ids]
    secs = time.perf_counter() - t0
    lp = deletion_logprobs(model, seq, steps, fill)
    drops = span_drops(lp, seq.prompt_len, *seq.output)
    ws = weightings(model, ex, seq, g, steps, node_ids, args.recursion_hops)
    pick = random.Random(f"{args.seed}:{ex['id']}").randrange(len(steps))
    rows = []
    for name, w in ws.items():
        top = max(range(len(w)), key=lambda i: (w[i], -i))
        low = min(range(len(w)), key=lambda i: (w[i], i))
        mean = sum(drops) / len(drops)
        rows.append({
            "task": label, "id": ex["id"], "weighting": name, "n_steps": len(steps),
            "drop_top": drops[top], "drop_random": drops[pick], "drop_low": drops[low], "drop_mean": mean,
            "top_minus_random": drops[top] - drops[pick], "top_minus_low": drops[top] - drops[low],
            "spearman": spearman(w, drops),
            "top_step": g.nodes[node_ids[top]].name, "low_step": g.nodes[node_ids[low]].name,
            "weights": json.dumps([round(x, 5) for x in w]), "drops": json.dumps([round(x, 4) for x in drops]),
            "graph_seconds": secs,
        })
    return rows, edge_rows(g, lp, seq, node_ids, label, ex["id"])


# ---------------------------------------------------------------------------- report
def summarise(rows: list[dict], n_boot: int) -> list[dict]:
    out = []
    tasks = list(dict.fromkeys(r["task"] for r in rows)) + ["all"]
    for t in tasks:
        for w in WEIGHTINGS:
            rs = [r for r in rows if r["weighting"] == w and (t == "all" or r["task"] == t)]
            if not rs:
                continue
            d = {"task": t, "weighting": w, "n": len(rs),
                 "steps_per_example": sum(r["n_steps"] for r in rs) / len(rs)}
            out.append(with_cis(d, rs, METRICS, n_boot, seed=len(out)))
    return out


def with_cis(d: dict, rs: list[dict], metrics, n_boot: int, seed: int) -> dict:
    """``d`` with, per metric ``m``, the mean ``m`` and ``m_lo`` / ``m_hi`` / ``m_n`` of :func:`boot_ci` over ``rs``."""
    for m in metrics:
        d[m], d[m + "_lo"], d[m + "_hi"], d[m + "_n"] = boot_ci([r[m] for r in rs], n_boot, seed=seed)
    return d


EDGE_METRICS = ("spearman_edge", "spearman_recency", "top_minus_mean")


def summarise_edges(edges: list[dict], n_boot: int) -> list[dict]:
    """Per task and over all: mean and bootstrap CI of the edge check's metrics over the checked nodes."""
    out = []
    for t in list(dict.fromkeys(e["task"] for e in edges)) + ["all"]:
        es = [e for e in edges if t == "all" or e["task"] == t]
        if not es:
            continue
        d = {"task": t, "n": len(es), "earlier_per_node": sum(e["n_earlier"] for e in es) / len(es)}
        out.append(with_cis(d, es, EDGE_METRICS, n_boot, seed=len(out)))
    return out


def _ci(d: dict, m: str) -> str:
    if d[m] != d[m]:
        return "-"
    if d[m + "_lo"] != d[m + "_lo"]:
        return f"{d[m]:.3f}"
    return f"{d[m]:.3f} [{d[m + '_lo']:.3f}, {d[m + '_hi']:.3f}]"


def checks(summary: list[dict]) -> list[list[str]]:
    lines = []
    for d in summary:
        if d["weighting"] != "graph":
            continue
        ok1 = d["top_minus_random_lo"] > 0 if d["top_minus_random_lo"] == d["top_minus_random_lo"] else False
        ok2 = d["spearman_lo"] > 0 if d["spearman_lo"] == d["spearman_lo"] else False
        lines.append([f"{d['task']}: top step's drop > random step's (95% CI of the paired difference > 0)",
                      _ci(d, "top_minus_random"), "met" if ok1 else ("met (point)" if d["top_minus_random"] > 0 else "MISSED")])
        lines.append([f"{d['task']}: Spearman(graph weights, drops) > 0 (95% CI > 0)",
                      _ci(d, "spearman"), "met" if ok2 else ("met (point)" if d["spearman"] > 0 else "MISSED")])
    return lines


def report(run, rows, summary, elapsed, fill, tok, edge_summary=()) -> str:
    args = run.args
    n_ex = len({r["id"] for r in rows})
    md = run.header("Causal check of the step graph: deleting reasoning steps") + [
        f"Model: {run.model_label}; {n_ex} held-out examples (seed {args.seed}); twohop / arith / vartrack at "
        f"{args.chain_length} prompt tokens, needle_multivalue at {args.needle_length}; steps = sentences of the "
        f"reasoning span (the `</think>` node excluded); replacement token id {fill} ({tok.decode([fill])!r}); "
        f"drop = answer log-prob (answer span only, teacher-forced) of the original minus that with the step "
        f"replaced, in nats; token recursion = flashtrace hops={args.recursion_hops}; wall time {elapsed:.0f} s.",
        "Mean and 95 % percentile-bootstrap CI over examples ([lo, hi]). `random` is one seeded random step per "
        "example (the same for every weighting); `mean` is the mean drop over all steps (what a random pick costs "
        "on average). Spearman is computed per example over its steps, then averaged (NaN -- a constant side -- "
        "dropped; n says how many are left).", "",
        "## Drops and rank correlation", "",
    ]
    header = ["task", "weighting", "n", "steps/ex", "drop top", "drop random", "drop lowest", "drop mean",
              "top - random", "top - lowest", "Spearman", "n (Spearman)"]
    md.append(S.markdown_table(header, [
        [d["task"], d["weighting"], d["n"], f"{d['steps_per_example']:.1f}", _ci(d, "drop_top"), _ci(d, "drop_random"),
         _ci(d, "drop_low"), _ci(d, "drop_mean"), _ci(d, "top_minus_random"), _ci(d, "top_minus_low"),
         _ci(d, "spearman"), d["spearman_n"]] for d in summary]))
    tasks = list(dict.fromkeys(d["task"] for d in summary))
    by = {(d["task"], d["weighting"]): d for d in summary}
    for metric, title in (("spearman", "Spearman(weights, drops), by task"),
                          ("top_minus_random", "Drop of the top step minus a random step's (nats), by task")):
        md += ["", f"## {title}", "", S.markdown_table(["weighting"] + tasks, [
            [w] + [_ci(by[(t, w)], metric) if (t, w) in by else "-" for t in tasks] for w in WEIGHTINGS])]
    md += ["", "## Target checks (graph weighting)", "",
           S.markdown_table(["target", "value", "status"], checks(summary)), ""]
    if edge_summary:
        md += ["## Edge check: the graph's step-to-step edges against the same deletions", "",
               "For every traced step `X` (the `</think>` node included) with at least two candidate steps `Y` "
               "before it: Spearman between the graph's edges `W[X, Y]` and the drop of `X`'s own teacher-forced "
               "log-prob when `Y` is replaced (the deletions above, read at `X` instead of the answer); `recency` "
               "ranks the nearer `Y` higher (a baseline); `top - mean` is the drop of the `Y` with the largest "
               "edge minus the mean drop over `X`'s candidates, in nats. Mean and 95 % bootstrap CI over the "
               "checked nodes (`n`); with two candidates a Spearman is +1 or -1.", "",
               S.markdown_table(["task", "nodes checked", "candidates/node", "Spearman W[X, Y]",
                                 "Spearman recency", "top - mean (nats)"], [
                   [d["task"], d["n"], f"{d['earlier_per_node']:.1f}", _ci(d, "spearman_edge"),
                    _ci(d, "spearman_recency"), _ci(d, "top_minus_mean")] for d in edge_summary]), ""]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    args = parse(argv)
    run = S.Run.start("step_causal.py", args, argv)
    torch.manual_seed(args.seed)
    model = load_model_for(args.model)
    tok = model.tokenizer
    fill = default_fill(tok)
    jobs = run.task_jobs(args.tasks, tok, args.n, args.chain_length, args.needle_length)
    rows: list[dict] = []
    edges: list[dict] = []
    t_start = time.perf_counter()
    bar = run.progress(jobs, "step_causal")
    for label, ex in bar:
        bar.set_postfix_str(label)
        ex_rows, ex_edges = example_rows(model, ex, label, fill, args)
        rows += ex_rows
        edges += ex_edges
        S.write_csv(run.path("step_causal.csv"), rows)
        S.write_csv(run.path("step_causal_edges.csv"), edges)
    elapsed = time.perf_counter() - t_start
    summary = summarise(rows, args.boot)
    S.write_csv(run.path("step_causal_summary.csv"), summary)
    edge_summary = summarise_edges(edges, args.boot)
    S.write_text(run.path("step_causal.md"), report(run, rows, summary, elapsed, fill, tok, edge_summary))
    run.done("step_causal.md", rows, elapsed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
