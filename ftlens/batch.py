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

Crash safety, resume, the clash check, the error policy and the index are those of the one
job runner, :mod:`ftlens.jobs`: every file is written atomically (temp + rename), so a killed
run leaves complete traces or none; ``--resume`` keeps each record whose trace exists,
loads (:meth:`Trace.load`) and was made the way this run would make it, and traces
the rest.  Without ``--resume`` a run refuses to overwrite existing traces.

Staleness: each trace written here records, in ``params["request"]``, what it was
made from (:meth:`ftlens.options.TraceOptions.request`: method, hops, threshold, explain,
chat template (and options added later when not at their default), plus model and dtype;
:func:`record_request`: SHA-256 of the prompt and target texts, the raw output/reasoning span
values, the generation options for generated targets) and
``ids_sha256``, the SHA-256 of the token ids it traced.  A resumed run re-traces
a trace whose request differs from its own, whose ids no longer hash to
``ids_sha256``, or that has no request (written by the API, by hand or by an older
ftlens), and reports how many and why (:func:`ftlens.jobs.stale_reasons`).  Sharding: ``--shard I/N`` takes lines ``L``
with ``(L - 1) % N == I``, so N independent jobs cover the file with no overlap;
``cat DIR/index*.jsonl`` merges their indexes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import FtlensError
from .jobs import Outcome, ids_sha256, index_name, run_jobs
from .jsonl import BadLine, Record, file_key, line_id, parse_record, read_records, record_request, run_request
from .options import TraceOptions
from .result import Trace

__all__ = ["Record", "BadLine", "Outcome", "file_key", "line_id", "parse_record", "read_records", "ids_sha256",
           "index_name", "run_settings", "record_request", "run_batch", "TraceStore"]


def run_settings(args: Any, options: TraceOptions | None = None) -> dict[str, Any]:
    """The run-level part of a trace's request for parsed ``ftlens`` flags (:func:`run_request`:
    the options and the model and dtype asked for)."""
    from .models import resolve_dtype

    return run_request(options if options is not None else TraceOptions.from_args(args),
                       "default" if args.model is None else str(args.model),
                       str(resolve_dtype(args.dtype)).removeprefix("torch."))


def existing_ok(path: Path) -> Trace | None:
    """The trace at ``path`` if it exists and loads, else ``None``."""
    if not path.exists():
        return None
    try:
        return Trace.load(path)
    except FtlensError:
        return None


@dataclass
class TraceStore:
    """The batch client of :func:`ftlens.jobs.run_jobs`: one trace ``<key>.json`` per record,
    its request in ``params["request"]``."""

    out: Path
    trace_fn: Callable[[Record], Trace]
    request_fn: Callable[[Record], dict[str, Any]]
    noun: str = "traces"
    clash_hint: str = "pass --resume to keep them and do the rest, or use another --out folder"

    def path(self, key: str) -> Path:
        return self.out / f"{key}.json"

    def request(self, r: Record) -> dict[str, Any]:
        return self.request_fn(r)

    def load(self, path: Path) -> tuple[Trace, Any, list[int]] | None:
        tr = existing_ok(path)
        return None if tr is None else (tr, tr.params.get("request"), tr.ids)

    def make(self, r: Record) -> tuple[Trace, list[int]]:
        tr = self.trace_fn(r)
        return tr, tr.ids

    def save(self, path: Path, tr: Trace, request: dict[str, Any]) -> None:
        tr.params["request"] = request
        tr.save(path)

    def keep(self, tr: Trace) -> dict[str, Any]:
        """Of a trace, what the index shows: ``positions``, ``output`` and the top-5 prompt tokens."""
        return {"positions": len(tr.tokens), "output": list(tr.output),
                "top": [[t.pos, t.token, round(t.score, 6)] for t in tr.top(5)]}

    def index_row(self, o: Outcome) -> dict[str, Any]:
        """``line, id, file, status, error`` and, for ``ok`` records, what :meth:`keep` kept and
        (when re-traced) ``stale``."""
        ok = o.status == "ok"
        row: dict[str, Any] = {"line": o.line, "id": o.id, "file": f"{o.key}.json" if ok else None,
                               "status": o.status, "error": o.error}
        if ok:
            row.update(o.result)
            if o.stale and not o.skipped:
                row["stale"] = o.stale
        return row


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
    kept only when :func:`ftlens.jobs.stale_reasons` finds no difference (else re-traced, the
    reasons in ``Outcome.stale``).  Returns one :class:`~ftlens.jobs.Outcome` per input line of
    the shard (bad lines included), in line order; the index file is (re)written at the end,
    also after Ctrl-C or a crash.  Raises :class:`~ftlens.errors.SpanError` without touching
    anything when, without ``resume``, traces of these records already exist.
    """
    records, bad = read_records(input_path, shard)
    out = Path(out_dir)
    store = TraceStore(out, trace_fn, request_fn)
    return run_jobs(records, bad, out, store, shard=shard, resume=resume, progress=progress, desc="batch")
