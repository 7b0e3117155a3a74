"""Input records: one JSON object per line (JSONL), as ``ftlens batch`` and ``ftlens study run`` read them.

A record is ``{"prompt": ...}`` with optional ``target`` (missing or null: generate), ``output``
/ ``reasoning`` (CLI span syntax or ``[a, b]``; ``"reasoning": null`` = none) and ``id``; other
fields are left to the client (a head study's ``evidence`` and ``segments``).  Blank lines are
skipped.  A record's ``key`` names its result file: its ``id`` made file-safe, else
``line-NNNNNN`` (its 1-based line number).  A line that is not a usable record is a
:class:`BadLine` (with its ``id`` when it has a readable one); a repeated key is a bad line too.
Shard ``(i, n)`` takes lines ``L`` with ``(L - 1) % n == i``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import FtlensError, SpanError
from .options import TraceOptions

__all__ = ["Record", "BadLine", "file_key", "line_id", "parse_record", "read_records", "run_request", "record_request",
           "sha256",
           "ids_sha256"]

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
    output_spec: Any = "auto"  #: the line's raw "output" value (recorded with the trace)
    reasoning_spec: Any = "auto"  #: the line's raw "reasoning" value


@dataclass
class BadLine:
    """An input line that is not a usable record; ``id`` is its ``"id"`` when the line has a readable one."""

    line: int
    message: str
    id: str | None = None


def line_id(text: str) -> str | None:
    """The ``"id"`` of a JSON line that is otherwise unusable (``None`` when it has no readable id)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None


def file_key(record_id: Any, line: int) -> str:
    """File-safe name of a record: its id (unsafe characters -> ``_``) or ``line-NNNNNN``."""
    if record_id is None:
        return f"line-{line:06d}"
    key = _SAFE.sub("_", str(record_id)).strip("_")[:120]
    return key if key and not key.startswith(".") else f"id-{key}"


def parse_record(text: str, line: int) -> Record:
    """One JSONL line as a :class:`Record`; :class:`SpanError` says what is wrong with it."""
    from .spans import parse_span

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
    output_spec, reasoning_spec = obj.get("output", "auto"), obj.get("reasoning", "auto")
    output = parse_span(output_spec, '"output"')
    reasoning = parse_span(reasoning_spec, '"reasoning"', allow_none=True)
    return Record(line, file_key(rid, line), None if rid is None else str(rid), prompt, target, output, reasoning,
                  output_spec, reasoning_spec)


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
                bad.append(BadLine(lineno, str(exc), line_id(text)))
            continue
        if rec.key in seen:
            if mine:
                bad.append(BadLine(lineno, f"id {rec.id!r} (file {rec.key}.json) repeats line {seen[rec.key]}; make ids unique",
                                   rec.id))
            continue
        seen[rec.key] = lineno
        if mine:
            records.append(rec)
    return records, bad


def run_request(options: TraceOptions, model: str, dtype: str) -> dict[str, Any]:
    """The run-level part of a result's request (every record of a run): the options' request
    (:meth:`TraceOptions.request`) and the model and dtype it ran with."""
    return {**options.request(), "model": model, "dtype": dtype}


def record_request(r: Record, options: TraceOptions | None = None) -> dict[str, Any]:
    """The record-level part of a trace's request (hashes of the texts, raw span values; for a
    generated target also the generation options, ``max_new_tokens`` and ``stop_at``: traces
    generated before ``stop_at`` existed ran on past the first line and split their text by the
    given-target rule, so they are stale)."""
    opts = options if options is not None else TraceOptions()
    req: dict[str, Any] = {
        "prompt_sha256": sha256(r.prompt),
        "target_sha256": None if r.target is None else sha256(r.target),
        "output": r.output_spec,
        "reasoning": r.reasoning_spec,
    }
    if r.target is None:  # the generated target depends on them
        run_level = opts.request()
        req.update({k: v for k, v in opts.request(generated=True).items() if k not in run_level})
    return req


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def ids_sha256(ids: Sequence[int]) -> str:
    """SHA-256 of a token id list (as its compact JSON text)."""
    return sha256(json.dumps([int(i) for i in ids], separators=(",", ":")))
