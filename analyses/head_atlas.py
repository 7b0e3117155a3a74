#!/usr/bin/env python
"""Head atlas: which heads carry the needle into the answer, by ftlens' head study and by copy
behaviour (retrieval heads), each checked by ablation.

For each held-out needle example (``--tasks``, ``--length`` prompt tokens, seeds from ``--seed``,
disjoint from the other analyses' seed 0..) the target is the answer line ``The special magic
number for KEY is VALUE.`` (teacher-forced) and the explained span is VALUE.  The study
(:func:`ftlens.study.run_study`) ranks heads by their mean route-weighted attribution to the
needle (``rank_by="evidence"``); it also keeps the prompt ranking (``study-prompt``) and DLA.

Retrieval heads (Wu et al. 2024, copy-paste score): at each answer step whose emitted token also
occurs in the needle, a head scores a hit when its strongest attention (argmax over all keys, at
the row that predicts the token) is on a needle position holding that same token; its score is
hits / such steps, averaged over examples.

Comparisons: top-k overlap and Spearman rank correlation (all heads) between the study's mean
evidence attribution, the retrieval score and DLA; ablation (zero and mean, :mod:`ftlens.study.causal`)
of the top-k of each ranking vs ``--draws`` random sets of k heads, drop in the answer's summed
log-prob with 95% intervals.  Outputs under ``--out``: ``head_atlas_<name>.md``, ``.png``,
``head_atlas_<name>_retrieval.csv`` and the study's tables in ``head_atlas_<name>/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ftlens.bridge import act_name, device_of, hf_model, temporary_hooks
from ftlens.eval import scaffold as S
from ftlens.eval.loading import load_model_for
from ftlens.spans import build_sequence
from ftlens.study import Study, run_study
from ftlens.study.records import as_record, prompt_regions
from ftlens.study.stats import mean_ci, spearman, top_k


def parse(argv=None):
    p = S.parser(__doc__)
    S.add_flags(p, "model", "n", "seed", "out", "quick", "no-progress", "threads",
                n={"type": int, "default": 50, "help": "examples per task (default 50)"},
                seed={"type": int, "default": 1000, "help": "first example seed (default 1000: held out)"},
                quick={"help": "CI smoke run: 2 examples, short prompts, 1 random draw"})
    p.add_argument("--tasks", nargs="+", default=["needle_single", "needle_multikey"])
    p.add_argument("--length", type=int, default=256, help="prompt tokens (default 256)")
    p.add_argument("--k", type=int, default=5, help="heads per ablated set (default 5)")
    p.add_argument("--draws", type=int, default=3, help="random head sets per example (default 3)")
    p.add_argument("--causal-n", type=int, default=None, help="ablate only the first N examples (default all)")
    p.add_argument("--no-chat-template", action="store_true", help="raw prompts (base models, e.g. gemma-3-270m)")
    p.add_argument("--name", default=None, help="output name (default: from --model)")
    p.add_argument("--work", default=None, help="study working folder with the per-example files "
                   "(default: results/head_atlas/<name>, not committed)")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.length, a.tasks, a.draws = 1, 64, ["needle_single", "needle_multikey"], 1
    a.name = a.name or (a.model or "smollm2").split("/")[-1].replace(".", "")
    return a


def records_for(run, tok, args) -> list[dict]:
    """Study records: the answer line as target, the needle value as the output span."""
    recs = []
    for task in args.tasks:
        for ex in run.dataset(task, tok, args.n, args.length, name=f"atlas-{args.name}-{task}-{args.length}"):
            line = ex["target"].split("\n")[-1]
            target = ("\n" if args.no_chat_template else "") + line
            recs.append({"id": ex["id"], "prompt": ex["prompt"], "target": target, "output": ex["answer"],
                         "evidence": ex["evidence"], "task": task})
    return recs


def retrieval_hits(model, rec: dict, chat_template) -> tuple[torch.Tensor, int]:
    """Per (layer, head): copy-paste hits on one example, and the number of needle-token steps."""
    tok = model.tokenizer
    seq = build_sequence(tok, rec["prompt"], rec["target"], output=rec["output"], chat_template=chat_template)
    ids = seq.ids
    pp = [i for i, r in enumerate(seq.roles) if r == "prompt"]
    ev, _ = prompt_regions(tok, as_record(rec, 1), pp, chat_template)
    needle = [pp[j] for j in ev]
    needle_ids = {int(ids[j]) for j in needle}
    a, b = seq.output
    steps = [t for t in range(a, b) if int(ids[t]) in needle_ids]
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    hits = torch.zeros(L, H)
    if not steps:
        return hits, 0
    rows = torch.tensor([t - 1 for t in steps])
    emitted = ids[steps]
    is_needle = torch.zeros(len(ids), dtype=torch.bool)
    is_needle[needle] = True

    def hook(layer):
        def f(x, hook):
            arg = x[0][:, rows].float().argmax(-1).cpu()  # [head, step]: strongest key per step
            hits[layer] = (is_needle[arg] & (ids[arg] == emitted[None])).float().sum(-1)

        return f

    with temporary_hooks(model, [(act_name(l, "attn.hook_pattern"), hook(l)) for l in range(L)]), torch.no_grad():
        hf_model(model)(input_ids=ids[None].to(device_of(model)))
    return hits, len(steps)


def main(argv=None) -> int:
    args = parse(argv)
    run = S.Run.start("head_atlas.py", args, argv)
    model = load_model_for(args.model)
    ct = False if args.no_chat_template else None
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    recs = records_for(run, model.tokenizer, args)
    t0 = time.perf_counter()
    scores = []
    for r in run.progress(recs, "retrieval scores"):
        hits, n = retrieval_hits(model, r, ct)
        if n:
            scores.append(hits / n)
    retr = torch.stack(scores).mean(0) if scores else torch.zeros(L, H)
    t_retr = time.perf_counter() - t0
    retr_rank = [(i // H, i % H) for i in top_k(retr.flatten().tolist(), L * H)]
    work = Path(args.work or f"results/head_atlas/{args.name}")
    common = dict(out=work, resume=True, k=args.k, ks=[args.k], draws=args.draws, chat_template=ct,
                  rank_by="evidence", progress=not args.no_progress, seed=args.seed)
    t1 = time.perf_counter()
    first = run_study(model, recs, causal=False, **common)
    t_extract = time.perf_counter() - t1
    extra = {"study-prompt": first.top_heads(args.k, "prompt"), "retrieval": retr_rank[: args.k]}
    t2 = time.perf_counter()
    study = run_study(model, recs, causal=True, causal_n=args.causal_n, extra_sets=extra, **common)
    t_causal = time.perf_counter() - t2
    study.save(run.path(f"head_atlas_{args.name}"))
    S.write_csv(run.path(f"head_atlas_{args.name}_retrieval.csv"),
                [{"layer": l, "head": h, "retrieval_score": float(retr[l, h])} for l in range(L) for h in range(H)])
    report(run, args, study, retr, len(scores), {"retrieval": t_retr, "extract": t_extract, "causal": t_causal,
                                                 "traced": first.meta["timings"]["traced"]})
    return 0


def _grid(study: Study, measure: str, L: int, H: int) -> torch.Tensor:
    g = torch.full((L, H), float("nan"))
    for r in study.head_summary:
        if r["measure"] == measure:
            g[r["layer"], r["head"]] = r["mean"]
    return g


def report(run, args, study: Study, retr: torch.Tensor, n_retr: int, times: dict) -> None:
    L, H = retr.shape
    ev, pr, dla = (_grid(study, m, L, H).flatten().tolist() for m in ("evidence", "prompt", "dla"))
    rt = retr.flatten().tolist()
    k = args.k
    names = {"study (evidence)": ev, "study-prompt": pr, "retrieval": rt, "dla": dla}
    tops = {n: set(top_k(v, k)) for n, v in names.items()}
    pairs = [("study (evidence)", "retrieval"), ("study (evidence)", "dla"), ("retrieval", "dla"),
             ("study (evidence)", "study-prompt")]
    comp = [[f"{a} vs {b}", f"{len(tops[a] & tops[b])}/{k}", f"{spearman(names[a], names[b]):.3f}"] for a, b in pairs]
    fmt = lambda idx: ", ".join(f"L{i // H}H{i % H}" for i in idx)  # noqa: E731
    top_rows = [[n, fmt(top_k(v, k))] for n, v in names.items()]
    cs = study.causal_summary
    causal_rows = [[r["set"], r["mode"], r["k"], r["n"], f"{r['mean_drop']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                    "" if r["ratio_to_random"] is None else (r.get("ratio_note") or f"{r['ratio_to_random']:.2f}"),
                    "" if r["diff_vs_random"] is None else
                    f"{r['diff_vs_random']:.3f} [{r['diff_ci_low']:.3f}, {r['diff_ci_high']:.3f}]"] for r in cs]
    stab = {}
    for r in study.stability:
        stab.setdefault(r["measure"], []).append(r)
    stab_rows = [[m, len(v), "{:.3f}".format(mean_ci([x["spearman"] for x in v])["mean"]),
                  "{:.2f}".format(mean_ci([x["overlap"] for x in v])["mean"])] for m, v in stab.items()]
    ex = study.examples
    n_tok = mean_ci([e["n_positions"] for e in ex])["mean"] if ex else float("nan")
    traced = times.get("traced", len(ex))
    extraction = ("study extraction resumed from the work folder (no example traced in this run)" if traced == 0 else
                  f"study extraction {times['extract']:.0f} s for {traced} traced examples "
                  f"({traced / times['extract'] * 60:.1f} examples/min incl. DLA)")
    md = run.header(f"Head atlas ({run.model_label}): study heads vs retrieval heads, checked by ablation") + [
        f"Model: {run.model_label}; {len(ex)} held-out examples ({', '.join(args.tasks)}, {args.length} prompt tokens, "
        f"{n_tok:.0f} positions on average, seeds {args.seed}+); target = the answer line, explained span = the needle "
        f"value; chat template {'off' if args.no_chat_template else 'on'}.  Times: retrieval scores "
        f"{times['retrieval']:.0f} s, {extraction}, ablation {times['causal']:.0f} s (examples ablated in an earlier "
        "run of the same study are kept).",
        f"Retrieval scores from {n_retr} examples with at least one needle-token step.", "",
        "## Top heads", "", S.markdown_table(["ranking", f"top {k}"], top_rows), "",
        "## Agreement", "", S.markdown_table(["rankings", f"top-{k} overlap", "Spearman (all heads)"], comp), "",
        "## Ablation (drop in the answer's summed log-prob; mean [95% CI] over examples)", "",
        "`random`: each example's mean over its random sets; ratio = mean drop / random mean drop, defined only "
        "when the random mean drop is positive with a 95% interval that excludes 0; "
        "diff = paired difference to random.", "",
        S.markdown_table(["set", "mode", "k", "n", "drop", "ratio to random", "diff vs random"], causal_rows), "",
        "## Split-half stability (20 random halvings)", "",
        S.markdown_table(["measure", "splits", "Spearman between halves", f"top-{k} overlap"], stab_rows), "",
    ]
    S.write_text(run.path(f"head_atlas_{args.name}.md"), "\n".join(md) + "\n")
    plot(study, retr, run.path(f"head_atlas_{args.name}.png"), run.model_label)
    run.done(f"head_atlas_{args.name}.md", ex, sum(times.values()))


def plot(study: Study, retr: torch.Tensor, path, label: str) -> None:
    L, H = retr.shape
    with S.figure(path, 1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.3]}) as (fig, axes):
        for ax, g, title in [(axes[0], _grid(study, "evidence", L, H), "study: mean attribution to the needle"),
                             (axes[1], retr, "retrieval score (copy-paste)")]:
            im = ax.imshow(g.T.numpy(), aspect="auto", cmap="viridis")
            ax.set(xlabel="layer", ylabel="head", title=title)
            ax.set_yticks(range(H))
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax = axes[2]
        rows = study.causal_summary
        sets = list(dict.fromkeys(r["set"] for r in rows))
        for q, mode in enumerate(("zero", "mean")):
            for j, s in enumerate(sets):
                r = next((x for x in rows if x["set"] == s and x["mode"] == mode), None)
                if r is None:
                    continue
                ax.bar(q + j * 0.8 / len(sets), r["mean_drop"], 0.8 / len(sets), color=f"C{j}",
                       label=s if q == 0 else None,
                       yerr=[[r["mean_drop"] - r["ci_low"]], [r["ci_high"] - r["mean_drop"]]], capsize=2)
        ax.set_xticks([0.4 - 0.4 / max(len(sets), 1), 1.4 - 0.4 / max(len(sets), 1)], ["zero-ablation", "mean-ablation"])
        ax.axhline(0, color="k", lw=0.5)
        ax.set(ylabel="drop in answer log-prob", title=f"{label}: ablating 5 heads (95% CI)")
        ax.legend(fontsize=7)


if __name__ == "__main__":
    raise SystemExit(main())
