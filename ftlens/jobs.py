"""One resumable job runner: one result file per input record, in shards, resumable, with an index.

``ftlens batch`` (a trace per record) and ``ftlens study run`` (a head study's per-example
extraction) are its clients; a client (:class:`Store`) says where a record's result lives, what
it is made from (its *request*), how to make, load and save it, and what its index row holds.
The runner does the rest, the same way for both:

- **clash check**: without ``resume``, a folder already holding results of these records is
  refused before anything runs (nothing is overwritten);
- **resume with staleness**: with ``resume``, a stored result is kept only when its stored
  request equals this run's and its token ids still hash to the stored ``ids_sha256``
  (:func:`stale_reasons`); otherwise it is made again, and the reasons are reported;
- **error policy**: a record whose result fails (:class:`~ftlens.errors.FtlensError`, a
  ``RuntimeError``) is reported and the rest still runs; a :class:`~ftlens.errors.ModelLoadError`
  stops the run (no record can succeed);
- **atomic writes**: every file is written to a temp file and renamed, so a killed run leaves
  complete results or none;
- **the index**: ``index.jsonl`` (``index.shard-I-of-N.jsonl`` for shard ``I/N``), one row per
  input line of the shard in line order, rewritten at the end, also after Ctrl-C or a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from .errors import FtlensError, ModelLoadError, SpanError
from .fileio import atomic_write_text
from .jsonl import BadLine, Record, ids_sha256

__all__ = ["Outcome", "Store", "run_jobs", "check_no_clash", "stale_reasons", "ids_sha256", "index_name", "NO_REQUEST"]

#: The stale reason of a stored result that records no request.
NO_REQUEST = "no record of its settings (written by the API, by hand or by an older ftlens)"

#: How :func:`stale_reasons` names a request key that differs.
LABELS = {"prompt_sha256": "prompt", "target_sha256": "target", "output": "output span",
          "reasoning": "reasoning span", "chat_template": "chat_template"}


@dataclass
class Outcome:
    """What became of one input line: ``status`` is ``ok``, ``failed``, ``bad-line`` or
    ``pending`` (not reached); ``skipped``: kept from an earlier run (``resume``); ``stale``: why a
    stored result was made again; ``result``: what the client keeps of its result
    (:meth:`Store.keep`; ``ok`` only)."""

    line: int
    key: str | None
    id: str | None
    status: str
    error: str | None = None
    skipped: bool = False
    stale: list[str] = field(default_factory=list)
    result: Any = None


@runtime_checkable
class Store(Protocol):
    """What a client of :func:`run_jobs` provides."""

    #: what the folder holds, for the clash message ("traces", "results")
    noun: str
    #: how to go on, at the end of the clash message (the flag or keyword of the client)
    clash_hint: str

    def path(self, key: str) -> Path:
        """Where the result of the record with ``key`` lives in the folder."""

    def request(self, record: Record) -> dict[str, Any]:
        """What the record's result is made from (stored with it, compared on resume)."""

    def load(self, path: Path) -> tuple[Any, dict[str, Any] | None, list[int]] | None:
        """A stored result, its stored request and its token ids; ``None`` when missing or unreadable."""

    def make(self, record: Record) -> tuple[Any, list[int]]:
        """A new result and its token ids (may raise :class:`~ftlens.errors.FtlensError`)."""

    def save(self, path: Path, result: Any, request: dict[str, Any]) -> None:
        """Store ``result`` with ``request`` (which holds ``ids_sha256``), atomically."""

    def keep(self, result: Any) -> Any:
        """What the outcome keeps of a result made or loaded (``Outcome.result``): a large result
        (a whole trace) is reduced here, so a long run does not hold every one in memory."""

    def index_row(self, outcome: Outcome) -> dict[str, Any]:
        """The index line of one outcome."""


def stale_reasons(have: dict[str, Any] | None, request: dict[str, Any], ids: Sequence[int]) -> list[str]:
    """Why a stored request ``have`` (with its ``ids_sha256``) is not what ``request`` would make
    for the stored token ``ids``: the labels of the settings that differ, and ``"input ids"``
    when the ids no longer hash to ``ids_sha256``.  Empty: the stored result is current."""
    if not isinstance(have, dict):
        return [NO_REQUEST]
    keys = list(request) + [k for k in have if k not in request and k != "ids_sha256"]
    reasons = [LABELS.get(k, k) for k in keys if have.get(k) != request.get(k)]
    if have.get("ids_sha256") != ids_sha256(ids):
        reasons.append("input ids")
    return reasons


def index_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return "index.jsonl" if n == 1 else f"index.shard-{i}-of-{n}.jsonl"


def check_no_clash(records: Sequence[Record], store: Store, folder: Path) -> None:
    """Refuse, before anything runs, a folder that already holds results of ``records``."""
    clash = [r.key for r in records if store.path(r.key).exists()]
    if clash:
        name = store.path(clash[0]).relative_to(folder)
        raise SpanError(f"{folder} already holds {store.noun} for {len(clash)} of these records (e.g. {name}); "
                        f"{store.clash_hint}")


def run_jobs(records: Sequence[Record], bad: Sequence[BadLine], folder: Path | None, store: Store, *,
             shard: tuple[int, int] = (0, 1), resume: bool = False, progress: bool = False,
             desc: str = "jobs", on_ready: Callable[[], None] | None = None) -> list[Outcome]:
    """Make (or keep) the result of every record of this shard; see the module docstring.

    ``folder=None``: nothing is read or written (results only in the outcomes).  ``on_ready``:
    called once the folder is checked and made, before the first record (e.g. to write the run's
    settings beside the results).  Returns one :class:`Outcome` per input line of the shard (bad
    lines included), in line order.
    """
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise SpanError(f"{str(folder)!r} is a file; pass a folder")
        if not resume:
            check_no_clash(records, store, folder)
        for parent in {folder, *(store.path(r.key).parent for r in records)}:
            parent.mkdir(parents=True, exist_ok=True)
    if on_ready is not None:
        on_ready()
    outcomes = {b.line: Outcome(b.line, None, b.id, "bad-line", b.message) for b in bad}
    for r in records:
        outcomes[r.line] = Outcome(r.line, r.key, r.id, "pending")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc=desc, unit="rec")
    try:
        for r in records:
            _one(outcomes[r.line], r, folder, store, resume)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if folder is not None:
            rows = [store.index_row(outcomes[k]) for k in sorted(outcomes)]
            atomic_write_text(folder / index_name(shard),
                              "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return [outcomes[k] for k in sorted(outcomes)]


def _one(o: Outcome, r: Record, folder: Path | None, store: Store, resume: bool) -> None:
    """Keep or make one record's result into its outcome."""
    request = store.request(r)
    path = store.path(r.key) if folder is not None else None
    done = store.load(path) if (path is not None and resume) else None
    if done is not None:
        result, have, ids = done
        o.stale = stale_reasons(have, request, ids)
        if not o.stale:
            o.status, o.skipped, o.result = "ok", True, store.keep(result)
            return
    try:
        result, ids = store.make(r)
        if path is not None:
            store.save(path, result, {**request, "ids_sha256": ids_sha256(ids)})
    except ModelLoadError:
        raise  # no record can succeed: stop, with the model's message
    except (FtlensError, RuntimeError) as exc:
        o.status, o.error = "failed", " ".join(str(exc).split())
        return
    o.status, o.result = "ok", store.keep(result)
