"""The ``ftlens`` commands: ``trace``, ``show``, ``batch``, ``study run``, ``study merge`` and ``demo``.

Each checks what it can before its model loads (:func:`~ftlens.cli.args.prelude`), then runs the
library: :func:`ftlens.trace`, :mod:`ftlens.batch`, :mod:`ftlens.study`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import FtlensError
from .args import EXIT_OK, check_prompt, check_spans_with_tokenizer, check_writable_dir, load, prelude, read_text_arg

__all__ = ["cmd_trace", "cmd_show", "cmd_batch", "cmd_study_run", "cmd_study_merge", "cmd_demo"]


def _write_html(tr, path) -> Path:
    try:
        from ..render import write_html
    except ImportError:
        raise FtlensError("HTML export needs ftlens.render, which this install lacks; use --json and `ftlens show`") from None
    return write_html(tr, path)


def cmd_trace(args: argparse.Namespace) -> int:
    """``ftlens trace``: one prompt (and target, or a generated one)."""
    import ftlens

    from ..spans import parse_span

    prompt = read_text_arg(args.prompt, "--prompt")
    check_prompt(prompt)
    target = read_text_arg(args.target, "--target") if args.target is not None else None
    output = parse_span(args.output, "--output", args.output_occurrence)
    reasoning = parse_span(args.reasoning, "--reasoning", args.reasoning_occurrence, allow_none=True)
    opts = prelude(args, out_files=[(args.json, "--json"), (args.html, "--html")])
    check_spans_with_tokenizer(args, prompt, target, output, reasoning, opts.chat_template)
    model = load(args)
    # target None: generates, then traces the generated ids themselves
    tr = ftlens.trace(model, prompt, target, output=output, reasoning=reasoning, progress=not args.no_progress,
                      **opts.kwargs())
    if target is None:
        rows = int(tr.params["rows"])
        generated = model.tokenizer.decode(tr.ids[len(tr.ids) - rows:], skip_special_tokens=False)
        eos = {"eos": " (stopped on EOS, not traced)", "line": " (cut at its first line break)",
               "length": " (max_new_tokens ran out)"}.get(tr.params.get("stopped_on"), "")
        print(f"generated target: {generated!r}{eos}")
    print(tr.summary(args.top))
    if args.json:
        print(f"wrote {tr.save(args.json)}")
    if args.html:
        print(f"wrote {_write_html(tr, args.html)}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """``ftlens show``: a saved trace, no model."""
    from ..result import Trace

    tr = Trace.load(args.trace)
    print(tr.summary(args.top))
    if args.html:
        print(f"wrote {_write_html(tr, args.html)}")
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    """``ftlens batch``: trace every record of a JSONL file (library: :mod:`ftlens.batch`)."""
    import ftlens

    from ..batch import Record, index_name, record_request, run_batch, run_settings
    from ..result import Trace

    opts = prelude(args, out_dir=args.out)
    settings = run_settings(args, opts)
    model: list[Any] = []

    def trace_fn(r: Record) -> Trace:
        if not model:  # load lazily: a finished --resume run needs no model
            model.append(load(args))
        return ftlens.trace(model[0], r.prompt, r.target, output=r.output, reasoning=r.reasoning, progress=False,
                            **opts.kwargs())

    def request_fn(r: Record) -> dict[str, Any]:
        return {**settings, **record_request(r, opts)}

    outcomes = run_batch(args.input, args.out, trace_fn, request_fn=request_fn, shard=args.shard,
                         resume=args.resume, progress=not args.no_progress)
    ok = [o for o in outcomes if o.status == "ok"]
    skipped = sum(o.skipped for o in ok)
    failed = [o for o in outcomes if o.status == "failed"]
    bad = [o for o in outcomes if o.status == "bad-line"]
    i, n = args.shard
    print(
        f"batch {args.input} shard {i}/{n}: {len(ok) + len(failed)} records, {len(ok) - skipped} traced, "
        f"{skipped} already done, {len(failed)} failed; {len(bad)} bad lines; index "
        f"{Path(args.out) / index_name(args.shard)}"
    )
    stale = [o for o in ok if o.stale and not o.skipped]
    if stale:
        counts: dict[str, int] = {}
        for o in stale:
            for why in o.stale:
                counts[why] = counts.get(why, 0) + 1
        print(f"re-traced {len(stale)} stale trace{'s' if len(stale) != 1 else ''} made differently from this run "
              f"(different {'; '.join(f'{k}: {v}' for k, v in counts.items())})")
    return _report_failures([(o.line, "bad line" if o.status == "bad-line" else "failed", o.error)
                             for o in sorted(bad + failed, key=lambda o: o.line)],
                            f"{len(bad)} bad lines and {len(failed)} failed records (lines {{lines}})")


def _report_failures(rows: list[tuple[int, str, str | None]], summary: str) -> int:
    """One ``ftlens: error: line N: KIND: ...`` line per failed input line, then ``summary``
    (``{lines}`` filled in); exit code 1 when there are any, else 0."""
    for line, kind, error in rows:
        print(f"ftlens: error: line {line}: {kind}: {error}", file=sys.stderr)
    if not rows:
        return 0
    lines = ", ".join(str(line) for line, _, _ in rows)
    print(f"ftlens: error: {summary.format(lines=lines)}; fix them and rerun with --resume", file=sys.stderr)
    return 1


def cmd_study_run(args: argparse.Namespace) -> int:
    """``ftlens study run``: a head study over a JSONL file (library: :mod:`ftlens.study`)."""
    from ..batch import run_settings
    from ..study import run_study, shard_from_env
    from ..study.aggregate import causal_lines
    from ..study.run import study_inputs

    opts = prelude(args, out_dir=args.out)
    shard = shard_from_env(args.shard)
    # a missing, unreadable or empty file, or a measure some record lacks, is refused before the model loads
    study_inputs(args.input, shard, rank_by=args.rank_by, dla=not args.no_dla)
    model = load(args)
    study = run_study(model, args.input, out=args.out, shard=shard, resume=args.resume, k=args.k, ks=args.ks,
                      draws=args.draws, causal=args.causal, causal_n=args.causal_n, rank_by=args.rank_by,
                      options=opts, rows=args.rows, dla=not args.no_dla, seed=args.seed,
                      settings=run_settings(args, opts),
                      progress=not args.no_progress)
    i, n = shard
    t = study.meta["timings"]
    print(f"study {args.input} shard {i}/{n}: {len(study.examples)} examples ({t['traced']} traced in "
          f"{t['extract_s']:.0f} s), {len({r['key'] for r in study.ablation})} ablated; folder {args.out}")
    if n == 1:
        top = ", ".join(f"L{l}H{h}" for l, h in study.top_heads(args.k, args.rank_by))
        print(f"top {args.k} heads by {args.rank_by}: {top}; tables written to {args.out}")
        for line in causal_lines(study.causal_summary):
            print(line)
    elif not study.ablation:
        print(f"next: ftlens study merge {args.out}, then rerun the shards with --resume for the causal pass")
    failed = study.meta["failed"]
    return _report_failures([(f["line"], f["status"], f["error"]) for f in failed],
                            f"{len(failed)} records failed or were bad")


def cmd_study_merge(args: argparse.Namespace) -> int:
    """``ftlens study merge``: the shards' results as the tables of one run."""
    from ..study import merge

    if args.out is not None:
        check_writable_dir(args.out, "--out")
    study = merge(args.folders, out=args.out)
    where = args.out or args.folders[0]
    print(f"merged {len(study.examples)} examples ({len({r['key'] for r in study.ablation})} ablated) from "
          f"{len(args.folders)} folder(s); tables written to {where}")
    if study.meta.get("causal_stale"):
        print(f"{len(study.meta['causal_stale'])} ablation results used other head sets and were left out; "
              "rerun the shards with --resume")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``ftlens demo``: the built-in needle example on the default model."""
    import ftlens

    from ..examples import NEEDLE_PROMPT, NEEDLE_TARGET

    opts = prelude(args, out_dir=args.out)
    model = load(args)
    tr = ftlens.trace(model, NEEDLE_PROMPT, NEEDLE_TARGET, hops=opts.hops, progress=not args.no_progress)
    print(tr.summary(args.top))
    out = Path(args.out)
    json_path = tr.save(out / "demo_trace.json")
    print(f"\nwrote {json_path}")
    try:
        from ..render import write_html
    except ImportError:
        write_html = None
    if write_html is not None:
        print(f"wrote {write_html(tr, out / 'demo_trace.html')}")
    t = tr.timings
    print(f"time: capture {t['capture']:.2f}s, attribution {t['attribution']:.2f}s, total {t['total']:.2f}s")
    return EXIT_OK
