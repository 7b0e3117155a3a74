"""``ftlens batch``: trace every record of a JSONL file, resumably and in shards.

Input: one JSON object per line, ``{"prompt": ...}`` required; optional ``target``
(missing or null: generate), ``output`` / ``reasoning`` (CLI span syntax or
``[a, b]``; ``"reasoning": null`` = none) and ``id``.  Blank lines are skipped.

Output in ``DIR``: one trace ``<key>.json`` per record, where ``key`` is the record's
``id`` made file-safe, else ``line-NNNNNN`` (its 1-based line number); and an index,
``index.jsonl`` (``index.shard-I-of-N.jsonl`` with ``--shard I/N``), one JSON object
per record of this run in input order: ``line``, ``id``, ``file``, ``status``
(``ok`` / ``failed`` / ``bad-line`` / ``pending``), ``error`` and, for ``ok``
records, ``positions``, ``output`` and the top-5 prompt tokens ``top``.

Crash safety: every file is written atomically (temp + rename), so a killed run
leaves complete traces or none; ``--resume`` keeps each record whose trace exists
and loads (:meth:`Trace.load`) and traces the rest.  Without ``--resume`` a run
refuses to overwrite existing traces.  Sharding: ``--shard I/N`` takes lines ``L``
with ``(L - 1) % N == I``, so N independent jobs cover the file with no overlap;
``cat DIR/index*.jsonl`` merges their indexes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import FtlensError, ModelLoadError, SpanError
from .trace import Trace, atomic_write_text

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Record:
    """One usable input line."""

    line: int
    key: str
    id: str | None
    prompt: str
    target: str | None
    output: Any = "auto"
    reasoning: Any = "auto"


@dataclass
class BadLine:
    line: int
    message: str


@dataclass
class Outcome:
    line: int
    key: str | None
    id: str | None
    status: str  # ok | failed | bad-line | pending
    error: str | None = None
    skipped: bool = False  # ok because a valid trace already existed (--resume)
    info: dict[str, Any] = field(default_factory=dict)

    def index_row(self) -> dict[str, Any]:
        done = self.status == "ok" and self.key
        row = {"line": self.line, "id": self.id, "file": f"{self.key}.json" if done else None,
               "status": self.status, "error": self.error}
        row.update(self.info)
        return row


def file_key(record_id: Any, line: int) -> str:
    """File-safe name of a record: its id (unsafe characters -> ``_``) or ``line-NNNNNN``."""
    if record_id is None:
        return f"line-{line:06d}"
    key = _SAFE.sub("_", str(record_id)).strip("_")[:120]
    return key if key and not key.startswith(".") else f"id-{key}"


def parse_record(text: str, line: int) -> Record:
    """One JSONL line as a :class:`Record`; :class:`SpanError` says what is wrong with it."""
    from .cli import parse_span

    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise SpanError(f"not JSON ({msg}); write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise SpanError(f"a JSON {type(obj).__name__}, not an object; write {{\"prompt\": ...}} per line")
    if "prompt" not in obj:
        raise SpanError('no "prompt" field; every line needs {"prompt": "..."}')
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpanError('"prompt" must be a non-empty string')
    target = obj.get("target")
    if target is not None and not isinstance(target, str):
        raise SpanError('"target" must be a string, or null/missing to generate')
    rid = obj.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise SpanError('"id" must be a string or an integer')
    output = parse_span(obj.get("output", "auto"), '"output"')
    reasoning = parse_span(obj.get("reasoning", "auto"), '"reasoning"', allow_none=True)
    return Record(line, file_key(rid, line), None if rid is None else str(rid), prompt, target, output, reasoning)


def read_records(path: str | Path, shard: tuple[int, int] = (0, 1)) -> tuple[list[Record], list[BadLine]]:
    """The records and bad lines of ``path`` that belong to ``shard`` (duplicate keys are bad)."""
    i, n = shard
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpanError(f"batch input {str(p)!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise SpanError(f"batch input {str(p)!r} is a folder; pass a .jsonl file") from None
    records: list[Record] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for lineno, chunk in enumerate(raw.split(b"\n"), 1):
        mine = (lineno - 1) % n == i  # every line is parsed, so repeated ids are seen across shards
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            if mine:
                bad.append(BadLine(lineno, "not UTF-8 text; save the file as UTF-8"))
            continue
        if not text.strip():
            continue
        try:
            rec = parse_record(text, lineno)
        except FtlensError as exc:
            if mine:
                bad.append(BadLine(lineno, str(exc)))
            continue
        if rec.key in seen:
            if mine:
                bad.append(BadLine(lineno, f"id {rec.id!r} (file {rec.key}.json) repeats line {seen[rec.key]}; make ids unique"))
            continue
        seen[rec.key] = lineno
        if mine:
            records.append(rec)
    return records, bad


def existing_ok(path: Path) -> Trace | None:
    """The trace at ``path`` if it exists and loads, else ``None``."""
    if not path.exists():
        return None
    try:
        return Trace.load(path)
    except FtlensError:
        return None


def _info(tr: Trace) -> dict[str, Any]:
    return {
        "positions": len(tr.tokens),
        "output": list(tr.output),
        "top": [[t.pos, t.token, round(t.score, 6)] for t in tr.top(5)],
    }


def index_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return "index.jsonl" if n == 1 else f"index.shard-{i}-of-{n}.jsonl"


def run_batch(
    input_path: str | Path,
    out_dir: str | Path,
    trace_fn: Callable[[Record], Trace],
    *,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    progress: bool = True,
) -> list[Outcome]:
    """Trace each record of ``input_path`` in ``shard`` with ``trace_fn`` into ``out_dir``.

    Returns one :class:`Outcome` per input line of the shard (bad lines included), in
    line order; the index file is (re)written at the end, also after Ctrl-C or a crash.
    Raises :class:`SpanError` without touching anything when, without ``resume``,
    traces of these records already exist.
    """
    records, bad = read_records(input_path, shard)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpanError(f"--out {str(out)!r} is a file; pass a folder")
    if not resume:
        clash = [r.key for r in records if (out / f"{r.key}.json").exists()]
        if clash:
            raise SpanError(
                f"{out} already holds traces for {len(clash)} of these records (e.g. {clash[0]}.json); "
                "pass --resume to keep them and do the rest, or use another --out folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    outcomes = {b.line: Outcome(b.line, None, None, "bad-line", b.message) for b in bad}
    for r in records:
        outcomes[r.line] = Outcome(r.line, r.key, r.id, "pending")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="batch", unit="rec")
    try:
        for r in records:
            o = outcomes[r.line]
            path = out / f"{r.key}.json"
            done = existing_ok(path) if resume else None
            if done is not None:
                o.status, o.skipped, o.info = "ok", True, _info(done)
            else:
                try:
                    tr = trace_fn(r)
                    tr.save(path)
                    o.status, o.info = "ok", _info(tr)
                except ModelLoadError:
                    raise  # no record can succeed: stop, with the model's message
                except (FtlensError, RuntimeError) as exc:
                    o.status, o.error = "failed", " ".join(str(exc).split())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        rows = [outcomes[k].index_row() for k in sorted(outcomes)]
        atomic_write_text(out / index_name(shard), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return [outcomes[k] for k in sorted(outcomes)]


def run_cli(args: argparse.Namespace) -> int:
    """``ftlens batch``: see :func:`ftlens.cli.build_parser` for the options."""
    import ftlens

    from .cli import _check_trace_options, _load

    _check_trace_options(args.method, args.hops, args.threshold)
    chat_template = False if args.no_chat_template else None
    model: list[Any] = []

    def trace_fn(r: Record) -> Trace:
        if not model:  # load lazily: a finished --resume run needs no model
            model.append(_load(args))
        return ftlens.trace(
            model[0], r.prompt, r.target, output=r.output, reasoning=r.reasoning, hops=args.hops, explain=args.explain,
            method=args.method, threshold=args.threshold, chat_template=chat_template,
            max_new_tokens=args.max_new_tokens, progress=False,
        )

    outcomes = run_batch(args.input, args.out, trace_fn, shard=args.shard, resume=args.resume,
                         progress=not args.no_progress)
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
    for o in sorted(bad + failed, key=lambda o: o.line):
        kind = "bad line" if o.status == "bad-line" else "failed"
        print(f"ftlens: error: line {o.line}: {kind}: {o.error}", file=sys.stderr)
    if bad or failed:
        lines = ", ".join(str(o.line) for o in sorted(bad + failed, key=lambda o: o.line))
        print(f"ftlens: error: {len(bad)} bad lines and {len(failed)} failed records (lines {lines}); "
              "fix them and rerun with --resume", file=sys.stderr)
        return 1
    return 0
