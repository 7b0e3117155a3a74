#!/usr/bin/env python
"""Faithfulness benchmark: every method x task -> RISE, MAS, Recovery@10%, insertion AUC, s/example.

Metrics are ftlens.eval.metrics / ftlens.eval.scoring (method §13): deletion curve over k groups of user-prompt
tokens, each replaced by one fixed token (the same for every method), scored on the answer
span and on the whole target.  Two calibration rows: ``random`` (a random ordering) and
``evidence-first`` (evidence tokens deleted first).  Outputs under --out:
``faithfulness.csv`` (per example x method), ``faithfulness_summary.csv`` (mean, standard
error), ``faithfulness.md`` (tables, target checks, the exact command) and ``faithfulness.png``.
(``--name`` changes the stem.)  Datasets are written to ``<out>/datasets/<task>-<length>.jsonl``.

Full protocol:  python analyses/faithfulness.py --n 20   (all methods, 6 tasks, needles to 4k: too slow
for a 2-core CPU; analyses/README.md lists the runs actually committed and their exact commands)
"""

from __future__ import annotations

import time

import torch

from ftlens.eval import baselines as B
from ftlens.eval import scaffold as S
from ftlens.eval.cases import build_case
from ftlens.eval.loading import default_tokenizer_for, load_model_for
from ftlens.eval.metrics import recovery
from ftlens.eval.reference import reference_flashtrace
from ftlens.eval.scoring import Scorer, default_fill
from ftlens.eval.tasks import TASKS

FTLENS_OUTPUT = ["ifr-tokenwise", "ifr-span", "flashtrace-h0", "flashtrace-h1", "flashtrace-h2", "flashtrace-h3"]
# explain="target": hop 0 over reasoning + answer (what the whole-target metric scores)
FTLENS_TARGET = ["ifr-tokenwise-target", "ifr-span-target", "flashtrace-target-h0", "flashtrace-target-h1",
                 "flashtrace-target-h2", "flashtrace-target-h3"]
FTLENS = FTLENS_OUTPUT + FTLENS_TARGET
ALL_METHODS = list(B.BASELINES) + FTLENS + ["reference"]
CALIB = ["random", "evidence-first"]
CHAIN_TASKS = ("vartrack", "twohop", "arith")
METRICS = ["rise_answer", "rise_target", "mas_answer", "mas_target", "ins_answer", "ins_target", "recovery", "seconds"]


def parse(argv: list[str] | None = None):
    p = S.parser(__doc__)
    S.add_flags(p, "model", "n", "seed", "out", "quick", "no-progress", "threads", "from-csv",
                n={"help": "examples per task and length"},
                quick={"help": "CI smoke run: 2 examples, short prompts, k=5"})
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096],
                   help="prompt lengths (tokens) for the needle tasks")
    p.add_argument("--chain-length", type=int, default=256, help="prompt length (tokens) of vartrack/twohop/arith")
    p.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    p.add_argument("--k", type=int, default=20, help="deletion groups")
    p.add_argument("--pct", type=float, default=10.0, help="Recovery@pct%%")
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--ig-baseline", choices=["zero", "eos"], default="zero")
    p.add_argument("--occlusion-max", type=int, default=600, help="skip occlusion above this many prompt tokens")
    p.add_argument("--no-insertion", action="store_true", help="skip insertion curves (halves the cost)")
    p.add_argument("--mask-punct", action="store_true",
                   help="zero the scores of ',' '.' and whitespace-only tokens for every method before ranking "
                        "(the mask the reference package applies inside its own method); calibration rows unmasked")
    p.add_argument("--recovery-only", action="store_true",
                   help="no perturbation curves: only Recovery and seconds (for long needles, where curves cost "
                        "(k+1) forward passes per method)")
    p.add_argument("--name", default="faithfulness", help="file stem of the outputs (default faithfulness)")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.k, a.ig_steps = min(a.n, 2), 5, 4
        a.lengths, a.chain_length = [96], 96
        if a.tasks == list(TASKS):
            a.tasks = ["needle_multikey", "twohop"]
    return a


def method_scores(model, ex, seq, fmt, methods, args, fill):
    """``name -> (scores[pos], seconds)`` for every requested method (errors -> skipped)."""
    out, errors = {}, {}
    for name in methods:
        if name in B.BASELINES:
            t0 = time.perf_counter()
            try:
                s = B.run_baseline(name, model, seq, fill=fill, seed=args.seed, ig_steps=args.ig_steps,
                                   ig_baseline=args.ig_baseline, occlusion_max=args.occlusion_max)
            except Exception as exc:  # recorded, reported in the markdown
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            out[name] = (s, time.perf_counter() - t0)
    for explain, family in (("output", FTLENS_OUTPUT), ("target", FTLENS_TARGET)):
        wanted = [m for m in methods if m in family]
        if not wanted:
            continue
        hops_max = max([int(m[-1]) for m in wanted if m.startswith("flashtrace")] + [0])
        fam = B.ftlens_scores(model, ex["prompt"], ex["target"], seq, hops_max=hops_max,
                              tokenwise=family[0] in wanted, explain=explain)
        for m in wanted:
            out[m] = fam[m][:2]
    if "reference" in methods:
        t0 = time.perf_counter()
        try:
            out["reference"] = (reference_flashtrace(model, seq, fmt, hops=1), time.perf_counter() - t0)
        except Exception as exc:
            errors["reference"] = f"{type(exc).__name__}: {exc}"
    return out, errors


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    run = S.Run.start("faithfulness.py", args, argv)
    if args.from_csv:
        return rebuild(run)
    torch.manual_seed(args.seed)
    model = load_model_for(args.model)
    tok = model.tokenizer
    fill = default_fill(tok)
    jobs = []
    for task in args.tasks:
        lengths = args.lengths if task.startswith("needle") else [args.chain_length]
        for length in lengths:
            jobs += [(f"{task}@{length}", ex) for ex in run.dataset(task, tok, args.n, length)]
    rows, errors = [], {}
    per_ex = run.path(f"{args.name}.csv")
    t_start = time.perf_counter()
    bar = run.progress(jobs, "faithfulness")
    for label, ex in bar:
        bar.set_postfix_str(label)
        seq, case, fmt = build_case(model, ex)
        sc = None if args.recovery_only else Scorer(model, case, fill=fill, k=args.k, insertion=not args.no_insertion)
        scores, errs = method_scores(model, ex, seq, fmt, args.methods, args, fill)
        for m, e in errs.items():
            errors.setdefault((label, m), e)
        if case.evidence:
            scores["evidence-first"] = (torch.zeros(seq.n).index_put_(
                (torch.tensor(case.prompt_pos)[case.evidence],), torch.tensor(1.0)), 0.0)
        punct = punct_mask(tok, seq.ids) if args.mask_punct else None
        for m, (s, secs) in scores.items():
            if punct is not None and m not in CALIB:
                s = s.float().masked_fill(punct.to(s.device), 0.0)
            if sc is not None:
                met = sc.evaluate(s[case.prompt_pos].float(), pct=args.pct)
            else:
                met = {key: float("nan") for key in METRICS if key not in ("recovery", "seconds")}
                met["recovery"] = recovery(s[case.prompt_pos].float(), case.evidence, args.pct) \
                    if case.evidence else float("nan")
            rows.append({"task": label, "id": ex["id"], "method": m, **met, "seconds": secs,
                         "n_prompt_tokens": len(case.prompt_pos), "n_evidence": len(case.evidence)})
        S.write_csv(per_ex, rows)
    elapsed = time.perf_counter() - t_start
    write_results(run, rows, errors, elapsed, fill, tok)
    run.done(f"{args.name}.md", rows, elapsed)
    return 0


def punct_mask(tok, ids: torch.Tensor) -> torch.Tensor:
    """True where the token decodes to ',' or '.' (surrounding spaces allowed) or to whitespace only
    (:func:`ftlens.tokens.stop_tokens`, the tokens ``stop_rows="skip"`` does not trace)."""
    from ftlens.tokens import stop_tokens

    return stop_tokens(tok, ids.tolist())


def write_results(run, rows, errors, elapsed, fill, tok) -> None:
    """Summary CSV, markdown report and PNG of the per-example ``rows``."""
    name = run.args.name
    summary = summarise(rows)
    S.write_csv(run.path(f"{name}_summary.csv"), summary)
    S.write_text(run.path(f"{name}.md"), report(summary, rows, errors, run, elapsed, fill, tok))
    plot(summary, run.path(f"{name}.png"))


def rebuild(run) -> int:
    """Summary, markdown and PNG from a per-example CSV (numbers parsed back to floats)."""
    args = run.args
    rows = S.read_csv(args.from_csv, floats=METRICS)
    tok = default_tokenizer_for(args.model)
    write_results(run, rows, {}, float("nan"), default_fill(tok), tok)
    print(f"rebuilt {run.out}/{args.name}.md from {args.from_csv} ({len(rows)} rows)")
    return 0


def summarise(rows: list[dict]) -> list[dict]:
    return S.summarise(rows, ("task", "method"), METRICS)


def _order(method: str) -> int:
    order = CALIB[:1] + [m for m in ALL_METHODS if m != "random"] + CALIB[1:]
    return order.index(method) if method in order else len(order)


def _fmt(d: dict, m: str) -> str:
    v, se = d.get(m, float("nan")), d.get(m + "_se", float("nan"))
    if v != v:
        return "-"
    return f"{v:.3f} ± {se:.3f}" if m != "seconds" else f"{v:.2f}"


def checks(summary: list[dict]) -> list[list[str]]:
    """The issue's target figures, computed from the summary (met / missed)."""
    by = {(d["task"], d["method"]): d for d in summary}
    tasks = sorted({d["task"] for d in summary})
    lines = []
    for t in tasks:
        for fam in ("flashtrace", "flashtrace-target"):
            d = by.get((t, f"{fam}-h1"))
            if d is None:
                continue
            if t.startswith("needle"):
                r = d["recovery"]
                lines.append([f"{t}: {fam}-h1 Recovery@10% >= 0.9", f"{r:.3f}", "met" if r >= 0.9 else "MISSED"])
            for v in ("target", "answer"):
                key = f"rise_{v}"
                others = {m: by[(t, m)][key] for (tt, m) in by
                          if tt == t and m not in FTLENS + ["evidence-first"] and by[(t, m)][key] == by[(t, m)][key]}
                if not others or d[key] != d[key]:
                    continue
                best = min(others, key=others.get)
                ok = d[key] < others[best]
                lines.append([f"{t}: RISE({v}) {fam}-h1 < every baseline + reference",
                              f"{d[key]:.3f} vs best other {best} {others[best]:.3f}", "met" if ok else "MISSED"])
            h0 = by.get((t, f"{fam}-h0"))
            if h0 is not None and t.split("@")[0] in CHAIN_TASKS and d["rise_target"] == d["rise_target"]:
                ok_r = d["recovery"] > h0["recovery"]
                ok_s = d["rise_target"] < h0["rise_target"]
                lines.append([f"{t}: {fam} hops=1 beats hops=0 (Recovery, RISE target)",
                              f"Rec {d['recovery']:.3f} vs {h0['recovery']:.3f}; "
                              f"RISE {d['rise_target']:.3f} vs {h0['rise_target']:.3f}",
                              "met" if ok_r and ok_s else "MISSED"])
    return lines


def report(summary, rows, errors, run, elapsed, fill, tok) -> str:
    args = run.args
    n_ex = len({r["id"] for r in rows})
    parts = run.header("Faithfulness benchmark") + [
        f"Model: {run.model_label}; {n_ex} examples; k = {args.k} deletion groups; "
        f"replacement token id {fill} ({tok.decode([fill])!r}); Recovery@{args.pct:g}%; IG {args.ig_steps} steps, "
        f"{args.ig_baseline} baseline; occlusion up to {args.occlusion_max} prompt tokens; wall time {elapsed:.0f} s."
        + (" Punctuation mask ON: ',' '.' and whitespace-only tokens get score 0 for every method (not the "
           "calibration rows) before ranking." if getattr(args, "mask_punct", False) else "")
        + (" Recovery only (no perturbation curves)." if getattr(args, "recovery_only", False) else ""),
        "Targets are teacher-forced reference chains (`<think>...</think>` + an answer line).",
        "RISE / MAS: lower is better; insertion AUC and Recovery: higher is better. `answer` scores log p of the "
        "answer span only, `target` of the whole target (reasoning + answer). Mean ± standard error over examples. "
        "`random` and `evidence-first` are the calibration rows.",
        "",
    ]
    tasks = sorted({d["task"] for d in summary})
    header = ["method", "RISE target", "RISE answer", "MAS target", "MAS answer", "ins AUC target",
              "ins AUC answer", "Recovery@10%", "s/example", "n"]
    for t in tasks:
        ds = sorted([d for d in summary if d["task"] == t], key=lambda d: _order(d["method"]))
        parts += [f"## {t}", "", S.markdown_table(header, [
            [d["method"], _fmt(d, "rise_target"), _fmt(d, "rise_answer"), _fmt(d, "mas_target"),
             _fmt(d, "mas_answer"), _fmt(d, "ins_target"), _fmt(d, "ins_answer"), _fmt(d, "recovery"),
             _fmt(d, "seconds"), d["n"]] for d in ds]), ""]
    parts += ["## Target checks", "",
              S.markdown_table(["target", "value", "status"], checks(summary)), ""]
    if errors:
        parts += ["## Skipped", ""]
        seen = set()
        for (label, m), e in errors.items():
            if (m, e[:60]) in seen:
                continue
            seen.add((m, e[:60]))
            parts.append(f"- {m} on {label} (and maybe others): {e}")
        parts.append("")
    return "\n".join(parts)


def plot(summary: list[dict], path) -> None:
    tasks = sorted({d["task"] for d in summary})
    methods = sorted({d["method"] for d in summary}, key=_order)
    with S.figure(path, 1, 2, figsize=(max(8, 1.6 * len(tasks) + 4) * 2 / 2 + 4, 4.5), squeeze=False) as (fig, axes):
        _bars(axes, tasks, methods, summary)


def _bars(axes, tasks, methods, summary) -> None:
    width = 0.8 / max(1, len(methods))
    by = {(d["task"], d["method"]): d for d in summary}
    for ax, key in zip(axes[0], ("rise_target", "recovery")):
        for j, m in enumerate(methods):
            xs, ys, es = [], [], []
            for i, t in enumerate(tasks):
                d = by.get((t, m))
                if d is None or d[key] != d[key]:
                    continue
                xs.append(i + j * width)
                ys.append(d[key])
                es.append(d[key + "_se"])
            ax.bar(xs, ys, width, yerr=es, label=m)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))])
        ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=7)
        ax.set_title({"rise_target": "RISE (whole target, lower = better)", "recovery": "Recovery@10% (higher = better)"}[key])
    axes[0][1].legend(fontsize=6, ncol=2)


if __name__ == "__main__":
    raise SystemExit(main())
