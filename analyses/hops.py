#!/usr/bin/env python
"""Recursion dynamics: thinking ratio, unresolved mass and Recovery@10% for hops 0..H.

Two sweeps, one flashtrace trace (``hops=H``) per example; the scores after ``k`` hops are
``F_k`` = the sum of the first ``k + 1`` hop contributions, so one trace gives every ``k``:

- chain sweep: ``vartrack`` with a growing assignment chain (``--chains``), so the reasoning
  chain (which restates every link) grows with it;
- needle sweep: ``needle_single`` / ``needle_multikey`` at ``--needle-length`` tokens.

Per hop ``k``: ``thinking_ratio = |mu_k|`` (mass still on reasoning tokens after hop ``k``, the
``unresolved`` mass of a trace run with ``hops=k``), input mass ``sum F_k``, Recovery@10% of
``F_k``.  Outputs under --out: ``hops.csv``, ``hops_summary.csv``, ``hops.md``, ``hops.png``.
"""

from __future__ import annotations

import time

import torch

import ftlens
from ftlens.eval import scaffold as S
from ftlens.eval.cases import build_case
from ftlens.eval.loading import load_model_for
from ftlens.eval.metrics import recovery


def parse(argv=None):
    p = S.parser(__doc__)
    S.add_flags(p, "model", "n", "seed", "out", "quick", "no-progress", "threads",
                n={"help": "examples per setting"}, quick={"help": "CI smoke run: 1 example, short prompts"})
    p.add_argument("--hops", type=int, default=4)
    p.add_argument("--chains", nargs="+", type=int, default=[2, 3, 4, 6, 8], help="vartrack chain lengths")
    p.add_argument("--chain-length", type=int, default=256, help="prompt tokens of the vartrack prompts")
    p.add_argument("--needle-length", type=int, default=512)
    p.add_argument("--needle-tasks", nargs="*", default=["needle_single", "needle_multikey"])
    p.add_argument("--chain-tasks", nargs="*", default=["twohop", "arith"],
                   help="other reasoning tasks, at --chain-length prompt tokens")
    p.add_argument("--pct", type=float, default=10.0)
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.chains, a.chain_length, a.needle_length, a.hops = 1, [2, 4], 64, 64, 2
    return a


def main(argv=None) -> int:
    args = parse(argv)
    run = S.Run.start("hops.py", args, argv)
    model = load_model_for(args.model)
    tok = model.tokenizer
    jobs = []
    for c in args.chains:
        exs = run.dataset("vartrack", tok, args.n, args.chain_length, chain_len=c,
                          name=f"hops-vartrack-chain{c}-{args.chain_length}")
        jobs += [(f"vartrack chain={c}", c, ex) for ex in exs]
    for task, length in [(t, args.chain_length) for t in args.chain_tasks] + \
            [(t, args.needle_length) for t in args.needle_tasks]:
        jobs += [(f"{task}@{length}", 0, ex) for ex in run.dataset(task, tok, args.n, length)]
    rows = []
    t_start = time.perf_counter()
    for label, chain, ex in run.progress(jobs, "hops"):
        seq, case, _ = build_case(model, ex)
        t0 = time.perf_counter()
        tr = ftlens.trace(model, ex["prompt"], ex["target"], hops=args.hops)
        secs = time.perf_counter() - t0
        reg = regions(tr, case)
        cum = torch.zeros_like(tr.scores)
        for k, h in enumerate(tr.hops):
            cum = cum + h.scores
            total = float(h.scores.sum())
            where = {f"to_{name}": (float(h.scores[m].sum()) / total if total > 0 else float("nan"))
                     for name, m in reg.items()}
            rows.append({**where,
                "setting": label, "chain": chain, "id": ex["id"], "hop": k,
                "reasoning_tokens": (tr.reasoning[1] - tr.reasoning[0]) if tr.reasoning else 0,
                "thinking_ratio": h.thinking_ratio, "input_mass": float(cum.sum()),
                "output_mass": tr.output_mass,
                "recovery": recovery(cum[case.prompt_pos], case.evidence, args.pct),
                "seconds": secs,
            })
        S.write_csv(run.path("hops.csv"), rows)
    elapsed = time.perf_counter() - t_start
    summary = S.summarise(rows, ("setting", "hop"), ("thinking_ratio", "input_mass", "output_mass", "recovery")
                          + REGION_COLS, extra=lambda rs: {
                              "n": len(rs), "reasoning_tokens": sum(r["reasoning_tokens"] for r in rs) / len(rs)})
    S.write_csv(run.path("hops_summary.csv"), summary)
    md = run.header("Recursion dynamics (hops)") + [
          f"Model: {run.model_label}; {len(jobs)} examples; wall time {elapsed:.0f} s. "
          "`thinking ratio` = |mu_k|, the mass left on reasoning tokens after hop k (= the unresolved mass of a "
          "hops=k trace); `input mass` = sum of F_k; Recovery@10% of F_k over the evidence tokens. "
          "Mean ± standard error.", ""]
    header = ["setting", "reasoning tokens", "hop", "thinking ratio (unresolved)", "input mass", "Recovery@10%", "n"]
    md.append(S.markdown_table(header, [
        [d["setting"], f"{d['reasoning_tokens']:.0f}", d["hop"], f"{d['thinking_ratio']:.3f} ± {d['thinking_ratio_se']:.3f}",
         f"{d['input_mass']:.3f} ± {d['input_mass_se']:.3f}", f"{d['recovery']:.3f} ± {d['recovery_se']:.3f}", d["n"]]
        for d in summary]))
    md += ["", "## Where each hop's input mass lands", "",
           "Fractions of hop k's own contribution (`c_k p_k` on input tokens): chat template, the question "
           "(the prompt's last line), the evidence tokens, the rest of the prompt. Mean over examples.", ""]
    md.append(S.markdown_table(["setting", "hop", "template", "question", "evidence", "other prompt"], [
        [d["setting"], d["hop"]] + [f"{d[c]:.3f}" for c in REGION_COLS] for d in summary]))
    S.write_text(run.path("hops.md"), "\n".join(md) + "\n")
    plot(summary, run.path("hops.png"))
    run.done("hops.md", rows, elapsed)
    return 0


REGION_COLS = ("to_template", "to_question", "to_evidence", "to_other")


def regions(tr, case) -> dict[str, torch.Tensor]:
    """Position masks: template (every input position outside the user prompt), question (prompt
    tokens on the prompt's last line), evidence (the case's evidence tokens), other (the rest)."""
    n = len(tr.tokens)
    prompt = torch.zeros(n, dtype=torch.bool)
    prompt[case.prompt_pos] = True
    evidence = torch.zeros(n, dtype=torch.bool)
    evidence[[case.prompt_pos[j] for j in case.evidence]] = True
    question = torch.zeros(n, dtype=torch.bool)
    question[[case.prompt_pos[j] for j in case.meta["question"]]] = True
    inputs = torch.arange(n) < tr.inputs_end
    return {"template": inputs & ~prompt, "question": question & ~evidence, "evidence": evidence,
            "other": prompt & ~question & ~evidence}


def plot(summary, path):
    with S.figure(path, 1, 3, figsize=(13, 4)) as (fig, axes):
        _curves(axes, summary)


def _curves(axes, summary) -> None:
    settings = list(dict.fromkeys(d["setting"] for d in summary))
    for s in settings:
        ds = sorted([d for d in summary if d["setting"] == s], key=lambda d: d["hop"])
        x = [d["hop"] for d in ds]
        for ax, key in zip(axes, ("thinking_ratio", "input_mass", "recovery")):
            ax.errorbar(x, [d[key] for d in ds], yerr=[d[key + "_se"] for d in ds], marker="o", label=s, capsize=2)
    for ax, t in zip(axes, ("thinking ratio |mu_k| (unresolved)", "input mass sum F_k", "Recovery@10% of F_k")):
        ax.set_title(t)
        ax.set_xlabel("hop k")
    axes[2].legend(fontsize=7)


if __name__ == "__main__":
    raise SystemExit(main())
