"""The ``ftlens`` command line: ``trace``, ``show``, ``batch``, ``study`` and ``demo``.

Exit codes: 0 ok, 1 failure (an ftlens error: bad input, missing model, bad file;
printed as one line ``ftlens: error: ...``), 2 usage error (argparse), 130 interrupted.

Text arguments (``--prompt``, ``--target``) take ``TEXT`` or ``@FILE`` (UTF-8 file
contents; ``@@text`` is the literal ``@text``).  Span arguments (``--output``,
``--reasoning``) take, relative to the target:

- ``auto``: the documented automatic rule (see :mod:`ftlens.spans`);
- ``A:B``: target-token indices, 0-based and half-open like a Python slice, the
  same ``(a, b)`` as the Python API (``0:3`` = the first three target tokens);
- ``re:REGEX``: the match of a Python regular expression;
- ``text:TEXT`` or any other ``TEXT``: a literal substring (``text:`` forces a
  literal, e.g. ``text:3:4`` or ``text:auto``);
- ``none`` (``--reasoning`` only): no reasoning span.

A substring or regex that occurs several times is refused unless ``--output-occurrence K``
/ ``--reasoning-occurrence K`` (0-based) picks one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import FtlensError, SpanError
from .options import STOP_AT, check_options

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130



# --------------------------------------------------------------------------- argument values


def read_text_arg(value: str, flag: str) -> str:
    """``TEXT`` as is, ``@FILE`` as the UTF-8 contents of FILE, ``@@TEXT`` as ``@TEXT``."""
    if value.startswith("@@"):
        return value[1:]
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpanError(
            f"{flag} file {str(path)!r} does not exist; check the path (write @@TEXT for a literal text starting with @)"
        ) from None
    except IsADirectoryError:
        raise SpanError(f"{flag} file {str(path)!r} is a folder; pass @FILE with a text file") from None
    except UnicodeDecodeError as exc:
        raise SpanError(
            f"{flag} file {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8"
        ) from None
    except OSError as exc:
        raise SpanError(f"cannot read {flag} file {str(path)!r}: {exc.strerror}") from None


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise SpanError("the prompt is empty; pass the question or instruction text with --prompt TEXT or @FILE")


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _positive_int(text: str) -> int:
    v = _nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected an integer >= 1, got 0")
    return v


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` with ``0 <= i < n``: this run does input lines ``L`` with ``(L - 1) % n == i``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise argparse.ArgumentTypeError(f"--shard wants i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path with none)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(value: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any model loads, an output folder that is a file or cannot be created/written."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise SpanError(f"{flag} {str(value)!r} is a file, not a folder; pass a folder path")
    _check_parent(path, flag, value)
    return path


def check_writable_file(value: str | os.PathLike | None, flag: str) -> None:
    """Refuse, before any model loads, an output file path that is a folder or cannot be written."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        example = path / ("trace.html" if flag == "--html" else "trace.json")
        raise SpanError(f"{flag} {str(value)!r} is a folder; pass a file name, e.g. {str(example)!r}")
    _check_parent(path.parent, flag, value)


def _check_parent(folder: Path, flag: str, value: str | os.PathLike) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise SpanError(f"{flag} {str(value)!r} cannot be written: {str(base)!r} is a file, not a folder; pick another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SpanError(
            f"{flag} {str(value)!r} cannot be written: the folder {str(base)!r} is not writable; "
            "pick another path or fix its permissions"
        )


def _check_spans_with_tokenizer(args: argparse.Namespace, prompt: str, target: str | None,
                                output: Any, reasoning: Any, chat_template: bool | None) -> None:
    """Resolve the spans with the default model's tokenizer (~0.1 s) before loading the model.

    Only for the default model (its tokenizer is available offline without the weights, and is
    exactly the one the loaded model uses); other models check spans once loaded.
    """
    if target is None or args.model not in (None, "default"):
        return
    from .models import default_tokenizer
    from .spans import build_sequence

    build_sequence(default_tokenizer(), prompt, target, output=output, reasoning=reasoning, chat_template=chat_template)


def check_model_options(args: argparse.Namespace) -> None:
    """``--device`` and ``--dtype`` checked before anything slow (no model is loaded)."""
    from .models import resolve_device, resolve_dtype

    resolve_device(args.device)
    resolve_dtype(args.dtype)


def set_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch's intra-op CPU threads for this run."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


# --------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace):
    import ftlens

    return ftlens.load_model(args.model, device=args.device, dtype=args.dtype)


def _write_html(tr, path: str) -> Path:
    try:
        from .render import write_html
    except ImportError:
        raise FtlensError("HTML export needs ftlens.render, which this install lacks; use --json and `ftlens show`") from None
    return write_html(tr, path)


def _cmd_trace(args: argparse.Namespace) -> int:
    import ftlens

    from .spans import parse_span

    prompt = read_text_arg(args.prompt, "--prompt")
    _check_prompt(prompt)
    target = read_text_arg(args.target, "--target") if args.target is not None else None
    output = parse_span(args.output, "--output", args.output_occurrence)
    reasoning = parse_span(args.reasoning, "--reasoning", args.reasoning_occurrence, allow_none=True)
    check_options(args.method, args.hops, args.threshold, stop_rows=args.stop_rows)
    chat_template = False if args.no_chat_template else None
    check_writable_file(args.json, "--json")
    check_writable_file(args.html, "--html")
    check_model_options(args)
    _check_spans_with_tokenizer(args, prompt, target, output, reasoning, chat_template)
    set_threads(args)
    model = _load(args)
    tr = ftlens.trace(  # target None: generates, then traces the generated ids themselves
        model,
        prompt,
        target,
        output=output,
        reasoning=reasoning,
        hops=args.hops,
        method=args.method,
        explain=args.explain,
        stop_rows=args.stop_rows,
        threshold=args.threshold,
        chat_template=chat_template,
        max_new_tokens=args.max_new_tokens,
        stop_at=args.stop_at,
        progress=not args.no_progress,
    )
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


def _cmd_show(args: argparse.Namespace) -> int:
    from .result import Trace

    tr = Trace.load(args.trace)
    print(tr.summary(args.top))
    if args.html:
        print(f"wrote {_write_html(tr, args.html)}")
    return EXIT_OK


def _cmd_batch(args: argparse.Namespace) -> int:
    """``ftlens batch``: trace every record of a JSONL file (library: :mod:`ftlens.batch`)."""
    import ftlens

    from .batch import Record, index_name, record_request, run_batch, run_settings
    from .result import Trace

    check_options(args.method, args.hops, args.threshold, stop_rows=args.stop_rows)
    check_writable_dir(args.out, "--out")
    check_model_options(args)
    settings = run_settings(args)
    set_threads(args)
    chat_template = False if args.no_chat_template else None
    model: list[Any] = []

    def trace_fn(r: Record) -> Trace:
        if not model:  # load lazily: a finished --resume run needs no model
            model.append(_load(args))
        return ftlens.trace(
            model[0], r.prompt, r.target, output=r.output, reasoning=r.reasoning, hops=args.hops, explain=args.explain,
            stop_rows=args.stop_rows,
            method=args.method, threshold=args.threshold, chat_template=chat_template,
            max_new_tokens=args.max_new_tokens, stop_at=args.stop_at, progress=False,
        )

    def request_fn(r: Record) -> dict[str, Any]:
        return {**settings, **record_request(r, args.max_new_tokens, args.stop_at)}

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
    stale = [o for o in ok if o.info.get("stale")]
    if stale:
        counts: dict[str, int] = {}
        for o in stale:
            for why in o.info["stale"]:
                counts[why] = counts.get(why, 0) + 1
        print(f"re-traced {len(stale)} stale trace{'s' if len(stale) != 1 else ''} made differently from this run "
              f"(different {'; '.join(f'{k}: {v}' for k, v in counts.items())})")
    for o in sorted(bad + failed, key=lambda o: o.line):
        kind = "bad line" if o.status == "bad-line" else "failed"
        print(f"ftlens: error: line {o.line}: {kind}: {o.error}", file=sys.stderr)
    if bad or failed:
        lines = ", ".join(str(o.line) for o in sorted(bad + failed, key=lambda o: o.line))
        print(f"ftlens: error: {len(bad)} bad lines and {len(failed)} failed records (lines {lines}); "
              "fix them and rerun with --resume", file=sys.stderr)
        return 1
    return 0


def _cmd_study_run(args: argparse.Namespace) -> int:
    """``ftlens study run``: a head study over a JSONL file (library: :mod:`ftlens.study`)."""
    from .batch import run_settings
    from .study import run_study, shard_from_env
    from .study.aggregate import causal_lines
    from .study.run import study_inputs

    check_options(args.method, args.hops, args.threshold, stop_rows=args.stop_rows)
    check_writable_dir(args.out, "--out")
    check_model_options(args)
    shard = shard_from_env(args.shard)
    # a missing, unreadable or empty file, or a measure some record lacks, is refused before the model loads
    study_inputs(args.input, shard, rank_by=args.rank_by, dla=not args.no_dla)
    set_threads(args)
    chat_template = False if args.no_chat_template else None
    model = _load(args)

    study = run_study(model, args.input, out=args.out, shard=shard, resume=args.resume, k=args.k, ks=args.ks,
                      draws=args.draws, causal=args.causal, causal_n=args.causal_n, rank_by=args.rank_by,
                      method=args.method, hops=args.hops, threshold=args.threshold, explain=args.explain,
                      stop_rows=args.stop_rows,
                      chat_template=chat_template, max_new_tokens=args.max_new_tokens, stop_at=args.stop_at,
                      rows=args.rows,
                      dla=not args.no_dla, seed=args.seed, settings=run_settings(args),
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
    for f in failed:
        print(f"ftlens: error: line {f['line']}: {f['status']}: {f['error']}", file=sys.stderr)
    if failed:
        print(f"ftlens: error: {len(failed)} records failed or were bad; fix them and rerun with --resume",
              file=sys.stderr)
        return 1
    return 0


def _cmd_study_merge(args: argparse.Namespace) -> int:
    """``ftlens study merge``: the shards' results as the tables of one run."""
    from .study import merge

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


def _cmd_demo(args: argparse.Namespace) -> int:
    import ftlens

    from .examples import NEEDLE_PROMPT, NEEDLE_TARGET

    check_options("flashtrace", args.hops)
    check_writable_dir(args.out, "--out")
    check_model_options(args)
    set_threads(args)
    model = _load(args)
    tr = ftlens.trace(model, NEEDLE_PROMPT, NEEDLE_TARGET, hops=args.hops, progress=not args.no_progress)
    print(tr.summary(args.top))
    out = Path(args.out)
    json_path = tr.save(out / "demo_trace.json")
    print(f"\nwrote {json_path}")
    try:
        from .render import write_html
    except ImportError:
        write_html = None
    if write_html is not None:
        print(f"wrote {write_html(tr, out / 'demo_trace.html')}")
    t = tr.timings
    print(f"time: capture {t['capture']:.2f}s, attribution {t['attribution']:.2f}s, total {t['total']:.2f}s")
    return EXIT_OK


# --------------------------------------------------------------------------- parser

_EXIT_CODES = "exit codes: 0 ok, 1 failure (one line 'ftlens: error: ...'), 2 usage error, 130 interrupted."

_SPAN_HELP = (
    "span syntax (relative to the target): auto | A:B (target tokens, 0-based, half-open, like the "
    "Python API's (a, b)) | re:REGEX | text:TEXT or TEXT (literal substring). A substring or regex "
    "found several times needs --output-occurrence K (0-based)"
)

_TRACE_EPILOG = f"""\
{_SPAN_HELP}; --reasoning also takes none.
--prompt/--target take TEXT or @FILE (UTF-8; @@TEXT = literal @TEXT).

examples:
  ftlens trace --prompt "The code is 4817. What is the code?" --target " The code is 4817."
  ftlens trace --prompt @question.txt --target @answer.txt --output re:[0-9]+ --hops 2 --json tr.json
  ftlens trace --prompt "Name a prime." --max-new-tokens 20          # generate, then trace
  ftlens trace --prompt @q.txt --target @a.txt --output 10:14 --reasoning 0:9 --method ifr-span

{_EXIT_CODES}"""

_SHOW_EPILOG = f"""\
examples:
  ftlens show trace.json --top 5
  ftlens show trace.json --html trace.html

{_EXIT_CODES}"""

_BATCH_EPILOG = f"""\
INPUT.jsonl: one JSON object per line: {{"prompt": ...}} required; optional "target" (omit or null to
generate), "output" and "reasoning" (CLI span syntax, or [a, b]; "reasoning": null = none), "id"
(names the output file; default line-NNNNNN). Other fields are ignored. Blank lines are skipped.
Output: DIR/<id>.json per record and DIR/index.jsonl (DIR/index.shard-I-of-N.jsonl with --shard).
Bad lines and failed records are reported with their line numbers at the end; the rest still runs.

examples:
  ftlens batch prompts.jsonl --out runs/sweep
  ftlens batch prompts.jsonl --out runs/sweep --resume               # after a crash or Ctrl-C
  ftlens batch prompts.jsonl --out runs/sweep --shard 3/8 --resume   # job 3 of 8 (any launcher)

{_EXIT_CODES} Exit 1 if any line was bad or any record failed."""


_STUDY_EPILOG = f"""\
INPUT.jsonl: the records of `ftlens batch` plus optional "evidence" (a substring of the prompt or
[[start, end], ...] character ranges) and "segments" ({{"name": substring or ranges}}). See docs/study.md.
The shard comes from --shard I/N, else torchrun's RANK/WORLD_SIZE, else Slurm's SLURM_ARRAY_TASK_ID/COUNT.
One process: trace, aggregate, ablate, write the tables. Sharded: run the shards, `ftlens study merge DIR`,
rerun the shards with --resume (the causal pass), merge again.

examples:
  ftlens study run records.jsonl --out study/ --k 5 --draws 5
  torchrun --nproc_per_node 2 --no-python ftlens study run records.jsonl --out study/ --resume
  ftlens study merge study/

{_EXIT_CODES}"""


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF name or local checkpoint folder (default: bundled SmolLM2-135M-Instruct, offline)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    g.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads torch may use (torch.set_num_threads; default: torch's choice)")


def _method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attribution")
    g.add_argument("--method", default="flashtrace", help="flashtrace (default), ifr-span or ifr-tokenwise")
    g.add_argument("--hops", type=int, default=None,
                   help="recursion hops through the reasoning span (flashtrace only; default 1)")
    g.add_argument("--explain", choices=["output", "target"], default="output",
                   help="what hop 0 explains: output = the answer span (default), target = reasoning + answer")
    g.add_argument("--stop-rows", choices=["keep", "skip"], default="keep",
                   help="the target's ',' '.' and blank rows: keep = trace them (default), skip = do not trace them")
    g.add_argument("--threshold", type=float, default=None, help="zero normalised per-layer shares below this, in [0, 1)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=128, help="tokens to generate when there is no target (default 128)")
    g.add_argument("--stop-at", choices=list(STOP_AT), default="auto",
                   help="where a generated target stops: auto = at its first line break when the prompt is raw text "
                   "(--no-chat-template or no template), at EOS with the chat template (default); line; eos")
    g.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text, without the chat template")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def version_text() -> str:
    """``ftlens X (torch Y, transformer-lens Z, Python V)``: what a bug report needs."""
    from importlib.metadata import PackageNotFoundError, version

    from ._version import __version__

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    py = ".".join(str(x) for x in sys.version_info[:3])
    return f"ftlens {__version__} (torch {dist('torch')}, transformer-lens {dist('transformer-lens')}, Python {py})"


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ftlens",
        description="FlashTrace attribution on TransformerLens: which prompt tokens, through which "
        "layers and heads, produced a span of the model's output.",
        epilog="commands: trace (one prompt), show (a saved trace), batch (a JSONL file), study (head studies), demo.\n"
        "run `ftlens COMMAND --help` for examples.\n" + _EXIT_CODES,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the ftlens, torch and TransformerLens versions and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = sub.add_parser(
        "trace", help="attribute one output span to the prompt; print top tokens and heads",
        description="Trace one prompt (and target, or generate one): print the top prompt tokens and heads.",
        epilog=_TRACE_EPILOG, formatter_class=fmt,
    )
    tr.add_argument("--prompt", required=True, metavar="TEXT|@FILE", help="the user prompt")
    tr.add_argument("--target", default=None, metavar="TEXT|@FILE", help="the model's answer to attribute (default: generate it)")
    tr.add_argument("--output", default="auto", metavar="SPAN", help="output span of the target (default auto)")
    tr.add_argument("--reasoning", default="auto", metavar="SPAN", help="reasoning span of the target, or none (default auto)")
    tr.add_argument("--output-occurrence", type=_nonneg_int, default=None, metavar="K", help="which match of a repeated --output substring/regex (0-based)")
    tr.add_argument("--reasoning-occurrence", type=_nonneg_int, default=None, metavar="K", help="which match of a repeated --reasoning substring/regex")
    tr.add_argument("--json", default=None, metavar="OUT", help="save the trace as JSON (OUT.json.gz: gzip)")
    tr.add_argument("--html", default=None, metavar="OUT", help="save a standalone HTML view")
    tr.add_argument("--top", type=_nonneg_int, default=10, metavar="K", help="rows in the printed tables (default 10)")
    _model_options(tr)
    _method_options(tr)
    tr.set_defaults(func=_cmd_trace)

    sh = sub.add_parser(
        "show", help="print (and render) a saved trace; no model needed",
        description="Print the summary of a saved trace, optionally write its HTML view; no model is loaded.",
        epilog=_SHOW_EPILOG, formatter_class=fmt,
    )
    sh.add_argument("trace", metavar="TRACE.json", help="a file written by `ftlens trace --json` or Trace.save")
    sh.add_argument("--html", default=None, metavar="OUT", help="write a standalone HTML view")
    sh.add_argument("--top", type=_nonneg_int, default=10, metavar="K", help="rows in the printed tables (default 10)")
    sh.set_defaults(func=_cmd_show)

    ba = sub.add_parser(
        "batch", help="trace every record of a JSONL file; resumable and shardable",
        description="Trace every record of INPUT.jsonl into DIR: one JSON trace per record plus an index.",
        epilog=_BATCH_EPILOG, formatter_class=fmt,
    )
    ba.add_argument("input", metavar="INPUT.jsonl", help="one JSON object per line")
    ba.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    ba.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N", help="do only lines L with (L-1) %% N == I (0 <= I < N)")
    ba.add_argument("--resume", action="store_true", help="keep each trace that loads and was made with these settings from this record's text; "
                    "(re)trace the rest, saying how many were stale and why")
    _model_options(ba)
    _method_options(ba)
    ba.set_defaults(func=_cmd_batch)

    st = sub.add_parser(
        "study", help="head studies over a dataset: run (sharded, resumable) and merge",
        description="Per-head attribution studies with causal validation (library: ftlens.study).",
        epilog=_STUDY_EPILOG, formatter_class=fmt,
    )
    st_sub = st.add_subparsers(dest="study_command", required=True, metavar="STEP")
    sr = st_sub.add_parser("run", help="trace, extract, aggregate and ablate (this shard)",
                           description="Run a head study on INPUT.jsonl (this process' shard).",
                           epilog=_STUDY_EPILOG, formatter_class=fmt)
    sr.add_argument("input", metavar="INPUT.jsonl", help="one JSON object per line")
    sr.add_argument("--out", required=True, metavar="DIR", help="study folder (created if missing)")
    sr.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                    help="do only lines L with (L-1) %% N == I (default: from torchrun/Slurm, else 0/1)")
    sr.add_argument("--resume", action="store_true", help="keep results made the same way; redo stale ones")
    sr.add_argument("--k", type=_positive_int, default=5, help="top-k for frequencies, stability and ablation (default 5)")
    sr.add_argument("--ks", type=_positive_int, nargs="+", default=None, metavar="K",
                    help="head-set sizes to ablate (default: --k)")
    sr.add_argument("--draws", type=_nonneg_int, default=5, help="random head sets per example (default 5)")
    sr.add_argument("--causal", choices=["auto", "yes", "no"], default="auto",
                    help="ablation pass: auto = one process, or a shard after `study merge` (default)")
    sr.add_argument("--causal-n", type=_positive_int, default=None, metavar="N",
                    help="ablate only the first N examples (default all)")
    sr.add_argument("--rank-by", default="prompt", metavar="MEASURE",
                    help="measure ranking the study's heads: prompt (default), evidence, segment:NAME")
    sr.add_argument("--rows", type=_nonneg_int, default=3, help="token rows kept per example (its top heads; default 3)")
    sr.add_argument("--no-dla", action="store_true", help="skip direct logit attribution per example")
    sr.add_argument("--seed", type=int, default=0, help="seed of random head sets and split halves")
    _model_options(sr)
    _method_options(sr)
    sr.set_defaults(func=_cmd_study_run)
    sm = st_sub.add_parser("merge", help="combine shard outputs into the tables of one run",
                           description="Merge study folders (shards) into one study's tables.",
                           epilog=_STUDY_EPILOG, formatter_class=fmt)
    sm.add_argument("folders", nargs="+", metavar="DIR", help="study folders written by `ftlens study run`")
    sm.add_argument("--out", default=None, metavar="DIR", help="where to write the tables (default: the first DIR)")
    sm.set_defaults(func=_cmd_study_merge)

    demo = sub.add_parser(
        "demo", help="trace the built-in needle example (with a reasoning chain) on the default model",
        epilog="example: ftlens demo --out results/demo --hops 2\n\n" + _EXIT_CODES, formatter_class=fmt,
    )
    demo.add_argument("--out", default="results/demo", help="folder for demo_trace.json/.html")
    _model_options(demo)
    demo.add_argument("--hops", type=int, default=1)
    demo.add_argument("--top", type=_nonneg_int, default=10)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        return int(args.func(args))
    except FtlensError as exc:
        print(f"ftlens: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. --json into a read-only folder
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ftlens: error: cannot write or read{where}: {exc.strerror or exc}; check the path and permissions", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        hint = ""
        if args.command == "batch":
            hint = "; the traces written so far are kept: rerun the same command with --resume to do the rest"
        print(f"ftlens: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
