"""Speed and memory of ftlens against the reference ``flashtrace`` and two forward floors.

Every measurement runs in its own fresh Python process (so peak RSS is the
contender's own), contenders are alternated within each repeat round (the order
rotates every round, so slow drifts of a shared machine hit everyone alike), and
``torch.set_num_threads`` is fixed in every child and printed.

Contenders (``--contenders``, default all):

    ft-flashtrace-h1   ftlens.trace(method="flashtrace", hops=1)
    ft-flashtrace-h2   ftlens.trace(method="flashtrace", hops=2)
    ft-ifr-span        ftlens.trace(method="ifr-span")
    ft-ifr-tokenwise   ftlens.trace(method="ifr-tokenwise")  (rows = answer tokens)
    ft-stepgraph       ftlens.stepgraph.step_graph (reasoning split into sentences: one span pass
                       per step and one for the answer on one capture; the step count is in
                       the CSV's timings column as n_steps)
    ft-flashtrace-h1-noguard  as ft-flashtrace-h1 with the completeness guard's gap computation
                       replaced by zeros (measures the guard's cost; not a user option)
    reference          flashtrace.FlashTrace(...).trace(method="flashtrace", hops=1) on the
                       plain Hugging Face model (eager attention, which it needs), same ids/spans
    bridge-forward     one forward of the same tokens through the TransformerBridge (logits)
    hf-sdpa            one forward of the same tokens through the Hugging Face decoder stack
                       with SDPA attention (``hf.model(ids)``: no LM head, the strict floor)

Inputs: a needle-in-a-haystack prompt of about N tokens (filler notes, one note
with a locker code, a question) and a target of about M tokens: a reasoning
chain in ``<think>...</think>`` (a repeated chain of thought) and a one-line
answer.  The output span is the answer, the reasoning span the chain.

Outputs (``--out``, default ``analyses/results``), with ``<tag>`` = ``--tag``:
``bench_speed_<tag>.csv`` (one row per run), ``bench_speed_<tag>.md`` (median
table with ratios), ``bench_speed_<tag>.png`` (time vs N and vs M).

Examples::

    .venv/bin/python analyses/bench_speed.py --quick
    .venv/bin/python analyses/bench_speed.py --configs 2000x400 --tag target
    .venv/bin/python analyses/bench_speed.py --configs 8192x1000 --contenders ft-flashtrace-h2 \\
        --repeats 1 --tag scale
    .venv/bin/python analyses/bench_speed.py --model random:llama3-8b --dtype bfloat16 \\
        --device cuda --configs 8192x512,32768x512 --contenders ft-flashtrace-h1,hf-sdpa
    .venv/bin/python analyses/bench_speed.py --model random:gemma2-9b --dtype bfloat16 \\
        --device cuda --configs 8192x512 --contenders ft-flashtrace-h1,hf-sdpa   (Gemma-style)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ftlens.bridge import device_of
from ftlens.eval import scaffold as S

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = (
    "ft-flashtrace-h1",
    "ft-flashtrace-h2",
    "ft-ifr-span",
    "ft-ifr-tokenwise",
    "ft-flashtrace-h1-noguard",
    "ft-stepgraph",
    "reference",
    "bridge-forward",
    "hf-sdpa",
)
FULL_GRID = [(n, m) for n in (512, 2048, 8192) for m in (16, 512, 2048)]
QUICK_GRID = [(512, 16), (2048, 512)]
# Real shapes for random-weight models (GPU runs where real weights are not at hand).
PRESETS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         vocab_size=49152, rope_theta=100000.0),
    "llama3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                      vocab_size=128256, rope_theta=500000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      vocab_size=128256, rope_theta=500000.0),
    # Gemma-style (post-attention norm folded by ftlens, sliding windows, soft-capping)
    "gemma2-9b": dict(config="Gemma2Config", hidden_size=3584, intermediate_size=14336,
                      num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8,
                      head_dim=256, vocab_size=256000, sliding_window=4096,
                      query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                      final_logit_softcapping=30.0),
    "gemma3-270m": dict(config="Gemma3TextConfig", architectures=["Gemma3ForCausalLM"],
                        hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                        vocab_size=262144, sliding_window=512, query_pre_attn_scalar=256),
}

# --------------------------------------------------------------------------- inputs

FILLER = (
    "Note {i}: The weather station on hill {i} recorded light rain in the morning and clear skies by the evening.\n",
    "Note {i}: The bakery on street {i} sells rye bread, butter croissants and a small lemon tart every day.\n",
    "Note {i}: Train number {i} to the coast departs a few minutes late when the harbour bridge is raised.\n",
    "Note {i}: The museum wing {i} holds old maps, a bronze compass and letters written by sailors.\n",
)
NEEDLE = "Note {i}: Maria's locker code is 4817.\n"
QUESTION = "Question: What is Maria's locker code?\n"
CHAIN = (
    "The question asks for Maria's locker code. I scan the notes one by one. Most notes talk "
    "about weather, bread, trains and maps, which are not relevant here. One note is about "
    "Maria's locker, and it says the code is 4817. Let me check that again before answering. "
)
ANSWER = "\nMaria's locker code is 4817."


def make_inputs(tokenizer, n_prompt: int, n_target: int) -> tuple[str, str]:
    """A needle-haystack prompt of ~n_prompt tokens and a <think> chain + answer of ~n_target."""

    def ntok(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    head = "Read the notes, then answer the question.\n"
    fillers, used = [], ntok(head + QUESTION) + ntok(NEEDLE.format(i=1))
    while True:  # lines end in a newline, so token counts add up line by line
        j = len(fillers)
        line = FILLER[j % 4].format(i=j + 1)
        cost = ntok(line)
        if used + cost > n_prompt and len(fillers) >= 2:
            break
        fillers.append(line)
        used += cost
    mid = len(fillers) // 2
    needle = NEEDLE.format(i=mid + 1)
    prompt = "".join([head, *fillers[:mid], needle, *fillers[mid:], QUESTION])
    budget = max(1, n_target - ntok("<think></think>" + ANSWER))
    chain = ""
    reps = CHAIN.split(" ")
    i = 0
    while True:  # grow word by word up to the token budget (long chains: the chain repeats)
        cand = (chain + " " + reps[i % len(reps)]).strip() if chain else reps[0]
        if ntok(cand) > budget:
            break
        chain, i = cand, i + 1
        if len(chain) > 20 * budget + 100:
            break
    chain = chain or reps[0]
    return prompt, "<think>" + chain.strip() + "</think>" + ANSWER


# --------------------------------------------------------------------------- child


def _load(args):
    """(bridge or None, hf model or None, tokenizer) as the contender needs them."""
    import torch

    import ftlens
    from ftlens.models import resolve_device, resolve_dtype

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    needs_bridge = args.contender.startswith("ft-") or args.contender == "bridge-forward"
    if args.model.startswith("random:"):
        import transformers
        from transformers import AutoModelForCausalLM

        preset = dict(PRESETS[args.model.split(":", 1)[1]])
        config_cls = getattr(transformers, preset.pop("config", "LlamaConfig"))
        cfg = config_cls(**preset, max_position_embeddings=131072, tie_word_embeddings=False,
                          bos_token_id=1, eos_token_id=2, pad_token_id=2,
                          attn_implementation="eager" if needs_bridge or args.contender == "reference"
                          else "sdpa")
        torch.manual_seed(0)
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        tok = ftlens.models.default_tokenizer()
        if needs_bridge:
            from ftlens.models import boot_bridge

            return boot_bridge(f"random-{args.model}", hf, tok, device, dtype), None, tok
        return None, hf, tok
    if needs_bridge:
        model = ftlens.load_model(args.model if args.model != "default" else None, device=device, dtype=dtype)
        return model, None, model.tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlens.models import default_model_dir

    path = str(default_model_dir()) if args.model == "default" else args.model
    impl = "eager" if args.contender == "reference" else "sdpa"
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=impl).to(device).eval()
    return None, hf, AutoTokenizer.from_pretrained(path)


def child(args) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    model, hf, tok = _load(args)
    load_s = time.perf_counter() - t_load
    from ftlens.spans import build_sequence

    device = device_of(model or hf)
    cuda = device.type == "cuda"
    # warm-up on a tiny input (one-time library initialisation is not what we measure)
    run_contender(args.contender, model, hf, tok, *make_inputs(tok, 48, 24), device, False)
    prompt, target = make_inputs(tok, args.n, args.m)
    seq = build_sequence(tok, prompt, target, chat_template=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    extra = run_contender(args.contender, model, hf, tok, prompt, target, device, args.child_progress)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_before,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
        "n_prompt": seq.prompt_len,
        "n_target": seq.n - seq.prompt_len,
        "n_total": seq.n,
        "n_output": seq.output[1] - seq.output[0],
        "n_reasoning": 0 if seq.reasoning is None else seq.reasoning[1] - seq.reasoning[0],
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_s": load_s,
        "timings": json.dumps(extra),
    }


def run_contender(c, model, hf, tok, prompt, target, device, progress) -> dict:
    """Run one contender once on (prompt, target); returns ftlens' own timings if any."""
    import torch

    import ftlens
    from ftlens.spans import build_sequence

    seq = build_sequence(tok, prompt, target, chat_template=False)
    ids = seq.ids[None]
    extra: dict = {}
    if c == "ft-stepgraph":
        from ftlens.stepgraph import step_graph

        g = step_graph(model, prompt, target, chat_template=False, progress=progress)
        extra = {"n_steps": len(g.steps), **{k: round(v, 3) for k, v in g.timings.items()}}
    elif c.startswith("ft-"):
        method = {"ft-flashtrace-h1": "flashtrace", "ft-flashtrace-h2": "flashtrace",
                  "ft-ifr-span": "ifr-span", "ft-ifr-tokenwise": "ifr-tokenwise",
                  "ft-flashtrace-h1-noguard": "flashtrace"}[c]
        hops = 2 if c.endswith("h2") else 1
        if c.endswith("-noguard"):
            import ftlens.aggregate as agg

            agg.completeness_gap = lambda y, *rest: torch.zeros(y.shape[0])
        tr = ftlens.trace(model, prompt, target, method=method, hops=hops if method == "flashtrace" else None,
                          chat_template=False,
                          progress=progress)
        extra = {k: round(v, 3) for k, v in tr.timings.items()}
    elif c == "bridge-forward":
        with torch.no_grad():
            model(ids.to(device))
    elif c == "hf-sdpa":
        with torch.no_grad():
            hf.model(ids.to(device), use_cache=False)
    elif c == "reference":
        from flashtrace import FlashTrace

        p = seq.prompt_len
        o0, o1 = seq.output
        r0, r1 = seq.reasoning if seq.reasoning is not None else (o0, o0)
        ft = FlashTrace(hf, tok, use_chat_template=False)
        ft.trace(prompt=prompt, target=target, output_span=(o0 - p, o1 - 1 - p),
                 reasoning_span=(r0 - p, r1 - 1 - p), hops=1, method="flashtrace")
    else:
        raise SystemExit(f"unknown contender {c}")
    return extra


# --------------------------------------------------------------------------- parent


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        n, m = part.lower().split("x")
        out.append((int(n), int(m)))
    return out


def run_child(args, contender: str, n: int, m: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--contender", contender,
           "--n", str(n), "--m", str(m), "--threads", str(args.threads), "--model", args.model,
           "--device", args.device or "", "--dtype", args.dtype or ""]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout>{args.timeout}s", "loadavg": load}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"status": f"error rc={proc.returncode}: {tail[0][:200]}", "loadavg": load}
    res = json.loads(lines[-1][len("RESULT "):])
    res["status"] = "ok"
    res["loadavg"] = load
    return res


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def summarise(rows: list[dict], contenders: list[str]) -> list[dict]:
    table = []
    configs = sorted({(r["N"], r["M"]) for r in rows})
    for n, m in configs:
        med = {}
        for c in contenders:
            rs = [r for r in rows if (r["N"], r["M"], r["contender"]) == (n, m, c) and r["status"] == "ok"]
            if not rs:
                continue
            med[c] = dict(
                wall=median([float(r["wall_s"]) for r in rs]),
                rss=max(float(r["peak_rss_mb"]) for r in rs),
                cuda=max(float(r["peak_cuda_mb"]) for r in rs),
                runs=len(rs),
                T=rs[0]["n_total"],
            )
        for c, v in med.items():
            ref, fwd = med.get("reference"), med.get("hf-sdpa")
            table.append(dict(
                N=n, M=m, T=v["T"], contender=c, runs=v["runs"], median_s=v["wall"],
                peak_rss_mb=v["rss"], peak_cuda_mb=v["cuda"],
                vs_reference=v["wall"] / ref["wall"] if ref and c.startswith("ft-") else float("nan"),
                vs_hf_sdpa=v["wall"] / fwd["wall"] if fwd and c != "hf-sdpa" else float("nan"),
            ))
    return table


def _fmt(x, nd=2):
    return "–" if x != x else f"{x:.{nd}f}"


def write_outputs(args, rows, contenders, header: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_speed_{args.tag}"
    fields = ["N", "M", "repeat", "contender", "status", "wall_s", "peak_rss_mb", "rss_after_load_mb",
              "peak_cuda_mb", "n_prompt", "n_target", "n_total", "n_output", "n_reasoning", "threads",
              "device", "load_s", "loadavg", "timings"]
    S.write_csv(f"{stem}.csv", rows, fields)
    table = summarise(rows, contenders)
    lines = [f"<!-- written by analyses/bench_speed.py; {json.dumps(header)} -->",
             f"Machine: {header['machine']}; torch threads: {header['threads']}; device: {header['device']}; "
             f"model: {header['model']} ({header['dtype']}); date: {header['date']}; "
             f"load average at start: {header['loadavg']}.",
             "",
             "| N (prompt) | M (target) | T | contender | runs | median time (s) | peak RSS (MB) |"
             + (" peak CUDA (MB) |" if header["device"].startswith("cuda") else "")
             + " ftlens / reference | / HF SDPA forward |",
             "|---:|---:|---:|---|---:|---:|---:|" + ("---:|" if header["device"].startswith("cuda") else "")
             + "---:|---:|"]
    for t in table:
        cuda = f" {_fmt(t['peak_cuda_mb'], 0)} |" if header["device"].startswith("cuda") else ""
        lines.append(f"| {t['N']} | {t['M']} | {t['T']} | {t['contender']} | {t['runs']} | "
                     f"{_fmt(t['median_s'])} | {_fmt(t['peak_rss_mb'], 0)} |{cuda} "
                     f"{_fmt(t['vs_reference'])} | {_fmt(t['vs_hf_sdpa'])} |")
    ratios = [(t["N"], t["M"], t["median_s"] / h1["median_s"]) for t in table if t["contender"] == "ft-stepgraph"
              for h1 in table if h1["contender"] == "ft-flashtrace-h1" and (h1["N"], h1["M"]) == (t["N"], t["M"])]
    if ratios:
        lines += [""] + [f"ft-stepgraph / ft-flashtrace-h1 at N={n} M={m}: {r:.2f}x (medians)" for n, m, r in ratios]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "Failed runs:"] + [f"- N={r['N']} M={r['M']} {r['contender']}: {r['status']}" for r in bad]
    S.write_text(f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines[1:]))
    try:
        plot(table, contenders, f"{stem}.png", header)
    except Exception as exc:  # a missing matplotlib must not lose the numbers
        print(f"(no plot: {exc})")


def plot(table, contenders, path, header) -> None:
    """Left: median time vs total tokens T (every config).  Right: time vs M at the N with most M values."""
    with S.figure(path, 1, 2, figsize=(11, 4.2)) as (fig, axes):
        _curves(fig, axes, table, contenders, header)


def _curves(fig, axes, table, contenders, header) -> None:
    by_n: dict[int, set] = {}
    for t in table:
        by_n.setdefault(t["N"], set()).add(t["M"])
    n_fix = max(by_n, key=lambda n: (len(by_n[n]), n == 2048, n)) if by_n else None
    for c in contenders:
        pts = sorted((t["T"], t["median_s"]) for t in table if t["contender"] == c)
        if pts:
            axes[0].plot(*zip(*pts), marker="o", label=c)
        pts = sorted((t["M"], t["median_s"]) for t in table if t["contender"] == c and t["N"] == n_fix)
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=c)
    axes[0].set(xlabel="total tokens T = prompt N + target M", ylabel="median wall time (s)",
                title="time vs sequence length (all configs)")
    axes[1].set(xlabel="target length M (tokens)", ylabel="median wall time (s)", title=f"time vs M (N={n_fix})")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ftlens bench: {header['model']} on {header['device']}, {header['threads']} thread(s), "
                 f"{header['date']}", fontsize=9)


def replot(args, contenders) -> None:
    """Re-write the table and plot of ``--tag`` from its CSV (no runs)."""
    stem = Path(args.out) / f"bench_speed_{args.tag}"
    rows = list(csv.DictReader(open(f"{stem}.csv")))
    for r in rows:
        r["N"], r["M"] = int(r["N"]), int(r["M"])
        for k in ("n_total",):
            r[k] = int(r[k]) if r.get(k) else r.get(k)
    header = json.loads(Path(f"{stem}.md").read_text().split("-->")[0].split(";", 1)[1].strip())
    present = [c for c in contenders if any(r["contender"] == c for r in rows)]
    write_outputs(args, rows, present, header)


def main(argv=None) -> None:
    ap = S.parser(__doc__.split("\n\n")[0], epilog=__doc__)
    S.add_flags(ap, "quick", quick={"help": f"small grid {QUICK_GRID}; --repeats runs at N<2048, 1 run at N>=2048"})
    ap.add_argument("--configs", help="comma list of NxM (prompt x target tokens), e.g. 2000x400,8192x1000")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list from " + ", ".join(CONTENDERS))
    ap.add_argument("--repeats", type=int, default=3, help="runs per contender and config (median reported)")
    ap.add_argument("--slow-repeats", type=int, default=None,
                    help="runs per contender at configs with N>=2048 (default: --repeats; --quick: 1)")
    S.add_flags(ap, "threads", "model",
                threads={"default": 2, "metavar": None, "help": "torch.set_num_threads in every child"},
                model={"default": "default", "help": "'default' (SmolLM2-135M), a HF id/dir, or random:<preset> "
                       "with preset in " + ", ".join(PRESETS)})
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per child before it is killed")
    S.add_flags(ap, "out", out={"default": str(ROOT / "analyses" / "results")})
    ap.add_argument("--tag", default=None, help="output name suffix (default: quick or full)")
    S.add_flags(ap, "no-progress")
    ap.add_argument("--replot", action="store_true", help="only re-write table and plot of --tag from its CSV")
    # child mode (internal)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--m", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-progress", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or "cpu"
    args.dtype = args.dtype or "float32"
    if args.child:
        res = child(args)
        print("RESULT " + json.dumps(res), flush=True)
        return

    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}")
    grid = parse_configs(args.configs) if args.configs else (QUICK_GRID if args.quick else FULL_GRID)
    slow = args.slow_repeats if args.slow_repeats is not None else (1 if args.quick else args.repeats)
    args.tag = args.tag or ("quick" if args.quick else "full")
    if args.replot:
        replot(args, contenders)
        return
    import torch

    header = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()} (CPU model "
                f"{_cpu_model()}), torch {torch.__version__}",
        threads=args.threads, device=args.device, model=args.model, dtype=args.dtype,
        loadavg=" ".join(f"{x:.1f}" for x in os.getloadavg()),
    )
    print(f"torch.set_num_threads({args.threads}) in every child; device {args.device}; model {args.model}; "
          f"configs {grid}; contenders {contenders}; repeats {args.repeats} (at N>=2048: {slow})")
    jobs = []
    for n, m in grid:
        for rep in range(args.repeats):
            k = rep % len(contenders)
            order = contenders[k:] + contenders[:k]  # rotate: alternate who goes first
            for c in order:
                if n >= 2048 and rep >= slow:
                    continue
                jobs.append((n, m, rep, c))
    rows = []
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="bench", unit="run")
    for n, m, rep, c in jobs:
        if bar is not None:
            bar.set_postfix_str(f"N={n} M={m} {c} #{rep + 1}")
        res = run_child(args, c, n, m)
        row = dict(N=n, M=m, repeat=rep, contender=c, **res)
        rows.append(row)
        if bar is not None:
            bar.update(1)
            bar.write(f"N={n} M={m} {c:18s} #{rep + 1}: "
                      + (f"{row['wall_s']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB" if row["status"] == "ok"
                         else row["status"]))
        write_outputs_quiet(args, rows, contenders, header)
    if bar is not None:
        bar.close()
    write_outputs(args, rows, contenders, header)


def write_outputs_quiet(args, rows, contenders, header) -> None:
    """Checkpoint the CSV/table after every run (a long bench killed midway keeps its numbers)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        write_outputs(args, rows, contenders, header)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    main()
