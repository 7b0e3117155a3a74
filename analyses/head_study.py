#!/usr/bin/env python
"""Per-head causal check: ablate the top-k heads by ftlens span share and measure the answer.

For every example: one flashtrace trace (hops=1) ranks (layer, head) by the attribution it
carries to user-prompt tokens (``Trace.top_heads(where="prompt")``, the mass-weighted per-head
shares).  Two comparison rankings: k random heads (seeded per example) and the top-k heads by
attention mass on the evidence (mean over the answer rows of the post-softmax attention summed
over evidence tokens).  Each head set is ablated at every position by replacing the head's
output ``z`` (the input of ``W_O``, hook ``blocks.{l}.attn.o.hook_in`` = ``hook_z``) with zeros
(zero-ablation) or with the head's mean ``z`` over the positions of the same sequence
(mean-ablation).  Reported: drop = ``log p(answer | clean) - log p(answer | ablated)``, summed
over the answer tokens, for k in --ks.  Outputs under --out: ``head_study.csv``,
``head_study_summary.csv``, ``head_study.md``, ``head_study.png``.
"""

from __future__ import annotations

import argparse
import csv
import random
import shlex
import sys
import time
from pathlib import Path

import torch

import ftlens
from ftlens import evaluate as E
from ftlens import tasks as T
from ftlens.capture import temporary_hooks

RANKINGS = ("ftlens", "random", "attention")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model name (default: ftlens default); 'tiny' = tiny random Llama")
    p.add_argument("--tasks", nargs="+", default=["needle_single", "twohop"], choices=list(T.TASKS))
    p.add_argument("--length", type=int, default=256, help="prompt tokens")
    p.add_argument("--n", type=int, default=20, help="examples per task")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 2, 3, 5, 10, 20])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="analyses/results")
    p.add_argument("--quick", action="store_true", help="CI smoke run: 1 example, short prompts")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from-csv", default=None,
                   help="only rebuild summary/markdown/PNG from an existing per-example CSV (e.g. a partial run)")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.length, a.ks, a.tasks = 1, 64, [1, 2, 5], ["needle_single"]
    return a


def load(name):
    if name == "tiny":
        from ftlens.models import tiny_model

        return tiny_model("llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
    return ftlens.load_model(name)


def clean_pass(model, ids, output, evidence_pos):
    """Mean z per (layer, head) over positions, and attention mass of the answer rows on evidence."""
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    zmean = [None] * L
    mass = torch.zeros(L, H)
    a, b = output

    def zhook(layer):
        def f(x, hook):
            zmean[layer] = x[0].detach().float().mean(0)  # [head, dh]

        return f

    def phook(layer):
        def f(x, hook):
            mass[layer] = x[0, :, a:b][..., evidence_pos].detach().float().sum(-1).mean(-1).cpu()

        return f

    hooks = [(f"blocks.{l}.attn.o.hook_in", zhook(l)) for l in range(L)]
    hooks += [(f"blocks.{l}.attn.hook_pattern", phook(l)) for l in range(L)]
    with temporary_hooks(model, hooks), torch.no_grad():
        model.original_model(input_ids=ids[None].to(next(model.original_model.parameters()).device))
    return torch.stack(zmean), mass


def ablated_logprobs(model, ids, start, output, masks, means, chunk=6):
    """Answer log-prob for each row's ablation: ``masks[b, l, h]`` True = ablate;
    ``means[b]`` is None (zero) or the ``[L, H, dh]`` mean z."""
    L = int(model.cfg.n_layers)
    cur = {}

    def hook(layer):
        def f(x, hook):
            m = cur["mask"][:, layer][:, None, :, None].to(x.dtype)  # [b, 1, H, 1]
            repl = cur["repl"][:, layer][:, None].to(x.dtype)  # [b, 1, H, dh]
            return x * (1 - m) + repl * m

        return f

    res = []
    a, b = output
    with temporary_hooks(model, [(f"blocks.{l}.attn.o.hook_in", hook(l)) for l in range(L)]):
        for i in range(0, len(masks), chunk):
            mk = torch.stack(masks[i : i + chunk]).float()
            repl = torch.stack([m if m is not None else torch.zeros_like(means_ref(means)) for m in means[i : i + chunk]])
            cur["mask"], cur["repl"] = mk, repl
            lp = E.target_logprobs(model, ids[None].repeat(mk.shape[0], 1), start, chunk=chunk)
            res.append(lp[:, a - start : b - start].sum(-1))
    return torch.cat(res)


def means_ref(means):
    return next(m for m in means if m is not None)


def main(argv=None) -> int:
    args = parse(argv)
    cmd = "python analyses/head_study.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        with open(args.from_csv, newline="") as f:
            rows = [{**r, "k": int(r["k"]), "drop": float(r["drop"])} for r in csv.DictReader(f)]
        n_ex = len({r["id"] for r in rows})
        return finish(args, cmd, out, rows, n_ex, float("nan"), sorted({r["k"] for r in rows}))
    model = load(args.model)
    tok = model.tokenizer
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    ks = [k for k in args.ks if k <= L * H]
    jobs = []
    for task in args.tasks:
        exs = T.make_examples(task, tok, args.n, args.length, seed=args.seed)
        T.write_jsonl(exs, out / "datasets" / f"head-{task}-{args.length}.jsonl")
        jobs += [(task, ex) for ex in exs]
    from tqdm.auto import tqdm

    rows = []
    t_start = time.perf_counter()
    for i, (task, ex) in enumerate(tqdm(jobs, desc="head study", disable=args.no_progress)):
        seq, case, _ = T.build_case(model, ex)
        tr = ftlens.trace(model, ex["prompt"], ex["target"], hops=1)
        ev_pos = [case.prompt_pos[j] for j in case.evidence]
        zmean, mass = clean_pass(model, seq.ids, seq.output, ev_pos)
        order = {
            "ftlens": [(h.layer, h.head) for h in tr.top_heads(L * H, where="prompt")],
            "attention": [(int(x) // H, int(x) % H) for x in torch.argsort(mass.flatten(), descending=True)],
        }
        rng = random.Random(f"{args.seed}:{ex['id']}")
        allh = [(l, h) for l in range(L) for h in range(H)]
        order["random"] = rng.sample(allh, len(allh))
        masks, means, labels = [torch.zeros(L, H, dtype=torch.bool)], [zmean], [("clean", "-", 0)]
        for rk in RANKINGS:
            for k in ks:
                m = torch.zeros(L, H, dtype=torch.bool)
                for l, h in order[rk][:k]:
                    m[l, h] = True
                for mode in ("zero", "mean"):
                    masks.append(m)
                    means.append(zmean if mode == "mean" else None)
                    labels.append((rk, mode, k))
        lp = ablated_logprobs(model, seq.ids, seq.prompt_len, seq.output, masks, means)
        clean = float(lp[0])
        for (rk, mode, k), v in zip(labels[1:], lp[1:].tolist()):
            rows.append({"task": task, "id": ex["id"], "ranking": rk, "mode": mode, "k": k,
                         "drop": clean - v, "clean_logprob": clean,
                         "top_heads": ";".join(f"L{l}H{h}" for l, h in order[rk][:k])})
        E.write_csv(out / "head_study.csv", rows)
    elapsed = time.perf_counter() - t_start
    return finish(args, cmd, out, rows, len(jobs), elapsed, ks)


def finish(args, cmd, out, rows, n_examples, elapsed, ks) -> int:
    summary = []
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["ranking"], r["mode"], r["k"]), []).append(r["drop"])
    for (rk, mode, k), v in sorted(groups.items(), key=lambda x: (x[0][1], x[0][0], x[0][2])):
        mu, se, n = E.mean_se(v)
        summary.append({"ranking": rk, "mode": mode, "k": k, "drop": mu, "drop_se": se, "n": n})
    E.write_csv(out / "head_study_summary.csv", summary)
    by = {(d["ranking"], d["mode"], d["k"]): d for d in summary}
    checks = []
    if 5 in ks:
        for mode in ("zero", "mean"):
            f, r = by[("ftlens", mode, 5)]["drop"], by[("random", mode, 5)]["drop"]
            ratio = f / r if r > 0 else float("nan")
            checks.append([f"top-5 ftlens vs 5 random heads, {mode}-ablation: drop ratio >= 3",
                           f"{f:.3f} / {r:.3f} = {ratio:.2f}",
                           "met" if r > 0 and f >= 3 * r else
                           ("MISSED" if r > 0 else "undefined (random drop <= 0)")])
    md = ["# Head study: ablating the heads ftlens ranks highest", "", f"Command: `{cmd}`", "",
          f"Model: {args.model or 'default (SmolLM2-135M-Instruct)'}; {n_examples} examples "
          f"({', '.join(args.tasks)} at {args.length} prompt tokens, teacher-forced targets); wall time {elapsed:.0f} s. "
          "Drop = log p(answer | clean) - log p(answer | ablated), summed over answer tokens, mean ± standard error "
          "(positive = the ablation hurts the answer).", ""]
    md.append(E.markdown_table(["mode", "ranking", "k", "drop", "n"], [
        [d["mode"], d["ranking"], d["k"], f"{d['drop']:.3f} ± {d['drop_se']:.3f}", d["n"]] for d in summary]))
    md += ["", "## Target check", "", E.markdown_table(["target", "value", "status"], checks), ""]
    (out / "head_study.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    plot(summary, out / "head_study.png")
    print(f"wrote {out}/head_study.md ({len(rows)} rows, {elapsed:.0f} s)")
    return 0


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, ("zero", "mean")):
        for rk in RANKINGS:
            ds = sorted([d for d in summary if d["mode"] == mode and d["ranking"] == rk], key=lambda d: d["k"])
            ax.errorbar([d["k"] for d in ds], [d["drop"] for d in ds], yerr=[d["drop_se"] for d in ds],
                        marker="o", capsize=2, label=rk)
        ax.set_title(f"{mode}-ablation of top-k heads")
        ax.set_xlabel("k heads")
    axes[0].set_ylabel("drop in answer log-prob")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
