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
import sys
from typing import Sequence

from ..errors import FtlensError
from .args import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, add_trace_flags, check_writable_dir,
                   check_writable_file, nonneg_int, parse_shard, positive_int, read_text_arg)
from .commands import cmd_batch, cmd_demo, cmd_show, cmd_study_merge, cmd_study_run, cmd_trace

__all__ = ["main", "build_parser", "version_text", "read_text_arg", "parse_shard", "check_writable_dir",
           "check_writable_file", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED"]


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
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads torch may use (torch.set_num_threads; default: torch's choice)")


def _method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attribution")
    add_trace_flags(g)  # every trace option's flag, from ftlens.options.TraceOptions
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def version_text() -> str:
    """``ftlens X (torch Y, transformer-lens Z, Python V)``: what a bug report needs."""
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__

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
    tr.add_argument("--output-occurrence", type=nonneg_int, default=None, metavar="K", help="which match of a repeated --output substring/regex (0-based)")
    tr.add_argument("--reasoning-occurrence", type=nonneg_int, default=None, metavar="K", help="which match of a repeated --reasoning substring/regex")
    tr.add_argument("--json", default=None, metavar="OUT", help="save the trace as JSON (OUT.json.gz: gzip)")
    tr.add_argument("--html", default=None, metavar="OUT", help="save a standalone HTML view")
    tr.add_argument("--top", type=nonneg_int, default=10, metavar="K", help="rows in the printed tables (default 10)")
    _model_options(tr)
    _method_options(tr)
    tr.set_defaults(func=cmd_trace)

    sh = sub.add_parser(
        "show", help="print (and render) a saved trace; no model needed",
        description="Print the summary of a saved trace, optionally write its HTML view; no model is loaded.",
        epilog=_SHOW_EPILOG, formatter_class=fmt,
    )
    sh.add_argument("trace", metavar="TRACE.json", help="a file written by `ftlens trace --json` or Trace.save")
    sh.add_argument("--html", default=None, metavar="OUT", help="write a standalone HTML view")
    sh.add_argument("--top", type=nonneg_int, default=10, metavar="K", help="rows in the printed tables (default 10)")
    sh.set_defaults(func=cmd_show)

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
    ba.set_defaults(func=cmd_batch)

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
    sr.add_argument("--k", type=positive_int, default=5, help="top-k for frequencies, stability and ablation (default 5)")
    sr.add_argument("--ks", type=positive_int, nargs="+", default=None, metavar="K",
                    help="head-set sizes to ablate (default: --k)")
    sr.add_argument("--draws", type=nonneg_int, default=5, help="random head sets per example (default 5)")
    sr.add_argument("--causal", choices=["auto", "yes", "no"], default="auto",
                    help="ablation pass: auto = one process, or a shard after `study merge` (default)")
    sr.add_argument("--causal-n", type=positive_int, default=None, metavar="N",
                    help="ablate only the first N examples (default all)")
    sr.add_argument("--rank-by", default="prompt", metavar="MEASURE",
                    help="measure ranking the study's heads: prompt (default), evidence, segment:NAME")
    sr.add_argument("--rows", type=nonneg_int, default=3, help="token rows kept per example (its top heads; default 3)")
    sr.add_argument("--no-dla", action="store_true", help="skip direct logit attribution per example")
    sr.add_argument("--seed", type=int, default=0, help="seed of random head sets and split halves")
    _model_options(sr)
    _method_options(sr)
    sr.set_defaults(func=cmd_study_run)
    sm = st_sub.add_parser("merge", help="combine shard outputs into the tables of one run",
                           description="Merge study folders (shards) into one study's tables.",
                           epilog=_STUDY_EPILOG, formatter_class=fmt)
    sm.add_argument("folders", nargs="+", metavar="DIR", help="study folders written by `ftlens study run`")
    sm.add_argument("--out", default=None, metavar="DIR", help="where to write the tables (default: the first DIR)")
    sm.set_defaults(func=cmd_study_merge)

    demo = sub.add_parser(
        "demo", help="trace the built-in needle example (with a reasoning chain) on the default model",
        epilog="example: ftlens demo --out results/demo --hops 2\n\n" + _EXIT_CODES, formatter_class=fmt,
    )
    demo.add_argument("--out", default="results/demo", help="folder for demo_trace.json/.html")
    _model_options(demo)
    demo.add_argument("--hops", type=int, default=1)
    demo.add_argument("--top", type=nonneg_int, default=10)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
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
