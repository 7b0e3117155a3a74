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
leaves complete traces or none; ``--resume`` keeps each record whose trace exists,
loads (:meth:`Trace.load`) and was made the way this run would make it, and traces
the rest.  Without ``--resume`` a run refuses to overwrite existing traces.

Staleness: each trace written here records, in ``params["request"]``, what it was
made from (:func:`run_settings`: method, hops, threshold, explain, chat template,
model, dtype; :func:`record_request`: SHA-256 of the prompt and target texts, the
raw output/reasoning span values, ``max_new_tokens`` for generated targets) and
``ids_sha256``, the SHA-256 of the token ids it traced.  A resumed run re-traces
a trace whose request differs from its own, whose ids no longer hash to
``ids_sha256``, or that has no request (written by the API, by hand or by an older
ftlens), and reports how many and why (:func:`stale_reasons`).  Sharding: ``--shard I/N`` takes lines ``L``
with ``(L - 1) % N == I``, so N independent jobs cover the file with no overlap;
``cat DIR/index*.jsonl`` merges their indexes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import FtlensError, ModelLoadError, SpanError
from .fileio import atomic_write_text
from .result import Trace

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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def ids_sha256(ids: list[int]) -> str:
    """SHA-256 of a token id list (as its compact JSON text)."""
    return _sha256(json.dumps([int(i) for i in ids], separators=(",", ":")))


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run-level part of a trace's request: what every record of this run is traced with."""
    from .models import resolve_dtype

    hops = (1 if args.hops is None else args.hops) if args.method == "flashtrace" else 0
    return {
        "method": args.method,
        "hops": hops,
        "threshold": args.threshold,
        "explain": args.explain,
        "chat_template": False if args.no_chat_template else None,
        "model": "default" if args.model is None else str(args.model),
        "dtype": str(resolve_dtype(args.dtype)).removeprefix("torch."),
        **stop_rows_setting(getattr(args, "stop_rows", "keep")),
    }


def stop_rows_setting(stop_rows: str) -> dict[str, str]:
    """``stop_rows`` in a request only when it is not the default ``"keep"``: results made before
    the option existed were all made with ``keep`` and stay valid (not stale)."""
    return {} if stop_rows == "keep" else {"stop_rows": stop_rows}


def record_request(r: Record, max_new_tokens: int | None = None, stop_at: str = "auto") -> dict[str, Any]:
    """The record-level part of a trace's request (hashes of the texts, raw span values; for a
    generated target also ``max_new_tokens`` and ``stop_at``: traces generated before ``stop_at``
    existed ran on past the first line and split their text by the given-target rule, so they are
    stale)."""
    req: dict[str, Any] = {
        "prompt_sha256": _sha256(r.prompt),
        "target_sha256": None if r.target is None else _sha256(r.target),
        "output": r.output_spec,
        "reasoning": r.reasoning_spec,
    }
    if r.target is None:  # the generated target depends on it
        req["max_new_tokens"] = max_new_tokens
        req["stop_at"] = stop_at
    return req


#: How :func:`stale_reasons` names a request key that differs.
_LABELS = {"prompt_sha256": "prompt", "target_sha256": "target", "output": "output span",
           "reasoning": "reasoning span", "chat_template": "chat_template"}


def stale_reasons(tr: Trace, request: dict[str, Any]) -> list[str]:
    """Why ``tr`` is not what ``request`` would make (empty list: it is)."""
    have = tr.params.get("request")
    if not isinstance(have, dict):
        return ["no record of its settings (written by the API, by hand or by an older ftlens)"]
    return request_stale(have, request, tr.ids)


def request_stale(have: dict[str, Any], request: dict[str, Any], ids: list[int]) -> list[str]:
    """Why a stored request ``have`` (with its ``ids_sha256``) differs from ``request`` for the
    traced ``ids``: the labels of the settings that differ, and ``"input ids"``."""
    keys = list(request) + [k for k in have if k not in request and k != "ids_sha256"]
    reasons = [_LABELS.get(k, k) for k in keys if have.get(k) != request.get(k)]
    if have.get("ids_sha256") != ids_sha256(ids):
        reasons.append("input ids")
    return reasons


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
    request_fn: Callable[[Record], dict[str, Any]],
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    progress: bool = True,
) -> list[Outcome]:
    """Trace each record of ``input_path`` in ``shard`` with ``trace_fn`` into ``out_dir``.

    ``request_fn(record)`` is what the trace of ``record`` is made from; it is saved in
    ``params["request"]`` (with ``ids_sha256``), and with ``resume`` an existing trace is
    kept only when :func:`stale_reasons` finds no difference (else re-traced, the reasons
    in ``Outcome.info["stale"]``).
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
    outcomes = {b.line: Outcome(b.line, None, b.id, "bad-line", b.message) for b in bad}
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
            request = request_fn(r)
            done = existing_ok(path) if resume else None
            stale = stale_reasons(done, request) if done is not None else []
            if done is not None and not stale:
                o.status, o.skipped, o.info = "ok", True, _info(done)
            else:
                try:
                    tr = trace_fn(r)
                    tr.params["request"] = {**request, "ids_sha256": ids_sha256(tr.ids)}
                    tr.save(path)
                    o.status, o.info = "ok", _info(tr)
                    if stale:
                        o.info["stale"] = stale
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
