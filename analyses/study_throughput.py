#!/usr/bin/env python
"""Head-study throughput: ``ftlens study run`` over needle records of ~1k tokens, 1 and 2 processes.

The records are held-out ``needle_single`` examples (``--length`` prompt tokens, seeds from
``--seed``) in the head atlas' form: the answer line as target, the needle value as the
explained span, the needle as evidence.  Each configuration runs the real command line in a
fresh process (model load included), extraction only (``--causal no``: the causal pass is its
own step, see docs/study.md), 1 torch thread per process:

- ``--procs 1``: ``ftlens study run recs.jsonl --out <work>/p1 --causal no --threads 1``;
- ``--procs 2``: the same under ``torchrun --nproc_per_node 2 --no-python`` (records sharded by
  RANK/WORLD_SIZE), then ``ftlens study merge``.

Wall time is measured around each command; traces/minute = records / wall minutes (model load
and merge included).  Per-example file sizes are read from ``<work>/p*/examples/`` (``--work``, default
``results/study_throughput``, not committed).  The
report is ``<out>/study_throughput.md`` with the machine, thread count and load average.
Run it alone: two torch-heavy jobs on a 2-core machine halve each other's speed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ftlens.eval import scaffold as S


def parse(argv=None):
    p = S.parser(__doc__)
    S.add_flags(p, "n", "seed", "out", "quick", "no-progress",
                n={"type": int, "default": 200, "help": "records (default 200)"},
                seed={"type": int, "default": 2000, "help": "first example seed (default 2000: held out)"},
                quick={"help": "CI smoke run: 4 records of 64 tokens"})
    p.add_argument("--length", type=int, default=1000, help="prompt tokens (default 1000)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to run (default 1 2)")
    p.add_argument("--n-one", type=int, default=None,
                   help="records for the 1-process run (default --n; fewer keeps the run short)")
    p.add_argument("--work", default=None, help="working folder (default results/study_throughput, not committed)")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.length, a.n_one = 4, 64, 2
    return a


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
    return wall


def main(argv=None) -> int:
    args = parse(argv)
    args.threads, args.model = 1, None
    run = S.Run.start("study_throughput.py", args, argv)
    from ftlens.models import load_model

    tok = load_model().tokenizer
    exs = run.dataset("needle_single", tok, args.n, args.length, name=f"throughput-{args.length}")
    work = Path(args.work or "results/study_throughput")
    work.mkdir(parents=True, exist_ok=True)
    recs = [{"id": e["id"], "prompt": e["prompt"], "target": e["target"].split("\n")[-1], "output": e["answer"],
             "evidence": e["evidence"]} for e in exs]
    rows = []
    for procs in args.procs:
        n = min(args.n_one or args.n, args.n) if procs == 1 else args.n
        data = work / f"recs{n}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in recs[:n]))
        out = work / f"p{procs}"
        if out.exists():  # a previous run of this script: its study folder, nothing else, is replaced
            if not (out / "examples").is_dir():
                raise SystemExit(f"{out} exists and is not a study folder; pass another --work")
            shutil.rmtree(out)
        cmd = [_bin("ftlens"), "study", "run", str(data), "--out", str(out), "--causal", "no", "--threads", "1",
               "--no-progress"]
        if procs > 1:
            cmd = [_bin("torchrun"), "--nproc_per_node", str(procs), "--master_port", "0", "--no-python"] + cmd
        load = os.getloadavg()
        wall = _run(cmd)
        if procs > 1:
            wall += _run([_bin("ftlens"), "study", "merge", str(out)])
        sizes = [p.stat().st_size for p in (out / "examples").glob("*.json")]
        if len(sizes) != n:
            raise SystemExit(f"{procs} process(es): {len(sizes)} example files for {n} records")
        rows.append({"procs": procs, "records": n, "wall_s": wall, "per_min": n / (wall / 60),
                     "size_kb_mean": sum(sizes) / len(sizes) / 1000, "size_kb_max": max(sizes) / 1000,
                     "load": " ".join(f"{x:.1f}" for x in load)})
        print(f"{procs} process(es): {n} records in {wall:.0f} s = {rows[-1]['per_min']:.1f} traces/min")
    mean_len = sum(len(tok(e["prompt"])["input_ids"]) for e in exs) / len(exs)
    lines = run.header("Head study throughput (SmolLM2-135M-Instruct, CPU)")
    lines += [
        f"Records: {args.n} held-out `needle_single` examples at {args.length} prompt tokens ({mean_len:.0f} on "
        f"average; seeds {args.seed}-{args.seed + args.n - 1}); target = the answer line, explained span = the "
        "needle value, evidence = the needle.  Extraction with DLA read in the trace's own forward pass "
        "(`--causal no`), float32, 1 torch thread per process; wall time of the whole command (model load and, "
        "for 2 processes, `ftlens study merge` included); load average before each run in the table.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d')}.",
        "",
        S.markdown_table(
            ["processes", "records", "wall (s)", "traces/minute", "200 records (min)", "KB/example (mean, max)",
             "load before"],
            [[r["procs"], r["records"], f"{r['wall_s']:.0f}", f"{r['per_min']:.1f}", f"{200 / r['per_min']:.1f}",
              f"{r['size_kb_mean']:.1f}, {r['size_kb_max']:.1f}", r["load"]] for r in rows]),
    ]
    S.write_text(run.path("study_throughput.md"), "\n".join(lines) + "\n")
    run.done("study_throughput.md", rows, sum(r["wall_s"] for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
