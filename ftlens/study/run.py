"""Running a head study: :func:`run_study` (one process or one shard), :func:`merge`, :class:`Study`.

Files in a study folder ``OUT``:

- ``examples/<key>.json``: one example's extraction (:mod:`.extract`) with ``request``, what
  it was made from (the ``ftlens batch`` request: run settings, SHA-256 of the prompt and
  target, span values; plus the evidence/segments values and extraction settings) and
  ``ids_sha256``; ``--resume`` keeps it only when :func:`ftlens.jobs.stale_reasons` finds no
  difference, else re-traces;
- ``examples/<key>.causal.json``: its ablation rows and the request they were made with (head
  sets, ks, draws, seed, modes, ids): kept on resume only when equal;
- ``index.jsonl`` (``index.shard-I-of-N.jsonl``): one line per record of the run, ``line, id,
  key, status, error, stale``;
- ``settings.json``: the aggregation and causal settings (every shard writes the same);
- ``study.json``: written by a one-process run and by :func:`merge`: the head sets the causal
  pass ablates and the keys it covers; a shard run finds them there for its causal pass;
- the tables (:mod:`.tables`), written by a one-process run and by :func:`merge`.

The per-example pass is a client of the one job runner (:mod:`ftlens.jobs`: clash check,
resume with staleness, error policy, atomic writes, the index); the causal pass is its own
function, :func:`causal_pass`; merging shards is :mod:`.merge`.

One process (shard ``0/1``): trace and extract every record, aggregate, ablate, write the
tables.  Sharded (``--shard``, torchrun, Slurm arrays): each shard extracts its records;
``merge`` aggregates and writes ``study.json``; the shards rerun with ``resume`` to ablate their
examples with those head sets; ``merge`` again adds the causal tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import SpanError
from ..fileio import atomic_write_text
from ..jobs import Outcome, ids_sha256, run_jobs
from ..jsonl import BadLine, record_request, run_request
from ..options import TraceOptions
from ..dla import DLACollector
from . import aggregate as agg
from .causal import ablate_example
from .extract import FORMAT, extract, unpack
from .records import StudyRecord, check_not_empty, check_rank_by, read_study_records, select_shard
from .result import Study
from .shard import in_shard, shard_from_env

__all__ = ["run_study", "causal_pass", "build", "head_sets_of", "causal_keys_of", "study_inputs", "check_head_counts", "load_json",
           "PER_EXAMPLE", "AGGREGATES"]

PER_EXAMPLE = ("examples", "head_scores", "segment_scores", "token_rows", "ablation")
AGGREGATES = ("head_summary", "stability", "causal_summary")


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_settings(model: Any, options: TraceOptions) -> dict[str, Any]:
    """The run-level request when the caller gives none (:func:`ftlens.jsonl.run_request` with the
    model's name and dtype)."""
    from ..pipeline import model_name

    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    return run_request(options, model_name(model), str(dtype).removeprefix("torch."))


def head_sets_of(examples: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, list[list[int]]]:
    """The rankings the causal pass ablates: ``study`` (by ``rank_by``) and ``dla`` (if measured)."""
    summary = agg.head_summary(examples, settings["k"])
    ranks = agg.rankings(summary)
    kmax = max(settings["ks"])
    measure = settings["rank_by"]
    if len(ranks.get(measure, [])) < kmax:
        raise SpanError(f"no example has the measure {measure!r} the study ranks heads by, so it has no top "
                        f"{kmax} heads to ablate; rank by a measure the examples have "
                        f"({', '.join(sorted(ranks)) or 'none'})")
    means = [r["mean"] for r in summary if r["measure"] == measure]
    if not any(m > 0 for m in means):
        raise SpanError(f"every head's mean {measure!r} attribution is zero, so the study's top {kmax} heads are "
                        "arbitrary; check that the records' regions cover prompt tokens, or rank by 'prompt'")
    sets = {"study": [list(h) for h in ranks[measure][:kmax]]}
    if "dla" in ranks:
        sets["dla"] = [list(h) for h in ranks["dla"][:kmax]]
    for name, heads in (settings.get("extra_sets") or {}).items():
        sets[name] = [list(h) for h in heads][:kmax]
    return sets


def causal_keys_of(examples: list[dict[str, Any]], n: int | None) -> list[str]:
    """The keys of the examples the causal pass ablates: the first ``n`` by line (all: ``None``)."""
    keys = [ex["key"] for ex in sorted(examples, key=lambda e: e["line"])]
    return keys if n is None else keys[:n]


def build(examples: list[dict[str, Any]], causal: Sequence[dict[str, Any]], settings: dict[str, Any],
          meta: dict[str, Any] | None = None) -> Study:
    """The study's tables from per-example results (sorted by line) and ablation rows."""
    examples = sorted(examples, key=lambda e: e["line"])
    tables = agg.per_example_tables(examples)
    order = {ex["key"]: ex["line"] for ex in examples}
    tables["ablation"] = sorted((r for r in causal if r["key"] in order), key=lambda r: order[r["key"]])
    tables["head_summary"] = agg.head_summary(examples, settings["k"])
    tables["stability"] = agg.stability(examples, settings["k"], settings["n_splits"], settings["seed"])
    tables["causal_summary"] = agg.causal_summary(tables["ablation"])
    m = {"settings": settings, "n_examples": len(examples), **(meta or {})}
    return Study(tables, m)


# ---------------------------------------------------------------------- checks before tracing
def study_inputs(records: Iterable[dict[str, Any] | StudyRecord] | str | Path, shard: tuple[int, int], *,
                 rank_by: str = "prompt", dla: bool = True) -> tuple[list[StudyRecord], list[BadLine]]:
    """This shard's records and bad lines, after the checks that need every record: the file or
    list holds at least one record, and every record can give the ranking measure
    (:func:`~ftlens.study.records.check_rank_by`), so all shards refuse or run alike."""
    if isinstance(records, (str, Path)):
        every, bad = read_study_records(records)
        source = f"records file {str(records)!r}"
    else:
        every, bad = select_shard(records, (0, 1)), []
        source = "the records list"
    check_not_empty(every, bad, source)
    check_rank_by(every, rank_by, dla)
    return [r for r in every if in_shard(r.line, shard)], [b for b in bad if in_shard(b.line, shard)]


def check_head_counts(model: Any, k: int, ks: Sequence[int], extra_sets: dict[str, Any] | None) -> None:
    """Refuse a top-k larger than the model's heads, and an extra head set shorter than the
    largest k (its "top k" would ablate fewer heads than it says)."""
    cfg = getattr(model, "cfg", None)
    L, H = getattr(cfg, "n_layers", None), getattr(cfg, "n_heads", None)
    if isinstance(L, int) and isinstance(H, int):
        big = max([k, *ks])
        if big > L * H:
            raise SpanError(f"k={big} is more heads than the model has ({L} layers x {H} heads = {L * H}); "
                            f"pass --k/--ks of at most {L * H}")
    for name, heads in (extra_sets or {}).items():
        if len(heads) < max(ks):
            raise SpanError(f"extra head set {name!r} has {len(heads)} heads but k={max(ks)} are ablated; "
                            "give at least that many or lower ks")


# ---------------------------------------------------------------------- the per-example pass
@dataclass
class ExampleStore:
    """The study client of :func:`ftlens.jobs.run_jobs`: ``examples/<key>.json`` per record, the
    extraction of its trace (:mod:`.extract`) with its request and ``ids_sha256``."""

    folder: Path | None
    model: Any
    options: TraceOptions
    settings: dict[str, Any]
    extraction: dict[str, Any]
    trace_fn: Callable[[StudyRecord], Any] | None = None
    noun: str = "results"
    clash_hint: str = "pass resume=True / --resume to keep them and do the rest, or use another folder"

    def path(self, key: str) -> Path:
        if self.folder is None:
            raise ValueError("a study without a folder stores nothing")
        return self.folder / "examples" / f"{key}.json"

    def keep(self, ex: dict[str, Any]) -> dict[str, Any]:
        """The example itself: the study's tables are built from every example."""
        return ex

    def request(self, r: StudyRecord) -> dict[str, Any]:
        return {**self.settings, **record_request(r, self.options), "evidence": r.evidence_spec,
                "segments": r.segments_spec, "extraction": self.extraction}

    def load(self, path: Path) -> tuple[dict[str, Any], Any, list[int]] | None:
        d = load_json(path) if path.exists() else None
        if d is None or d.get("format") != FORMAT:
            return None
        return d, d.get("request"), unpack(d.get("ids", []))

    def make(self, r: StudyRecord) -> tuple[dict[str, Any], list[int]]:
        """The trace and, with ``dla``, its DLA read in the same forward pass (no second pass),
        then the extraction."""
        from .. import pipeline

        dla = self.extraction["dla"]
        if self.trace_fn is not None:
            tr, dla_result = self.trace_fn(r), None
        else:
            col = DLACollector(self.model) if dla else None
            tr = pipeline.trace(self.model, r.prompt, r.target, output=r.output, reasoning=r.reasoning,
                                collect=None if col is None else (lambda seq: col.hooks(seq.ids, seq.output)),
                                **self.options.kwargs())
            dla_result = None if col is None else col.result()
        ex = extract(self.model, tr, r, chat_template=self.options.chat_template, dla_result=dla_result,
                     **self.extraction)
        return ex, list(tr.ids)

    def save(self, path: Path, ex: dict[str, Any], request: dict[str, Any]) -> None:
        ex["request"] = request
        atomic_write_text(path, json.dumps(ex, ensure_ascii=False, separators=(",", ":")))

    def index_row(self, o: Outcome) -> dict[str, Any]:
        return {"line": o.line, "id": o.id, "key": o.key, "status": o.status, "error": o.error, "stale": o.stale or None}


# ---------------------------------------------------------------------- running
def run_study(
    model: Any,
    records: Iterable[dict[str, Any] | StudyRecord] | str | Path,
    *,
    out: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    k: int = 5,
    ks: Sequence[int] | None = None,
    draws: int = 5,
    causal: str | bool = "auto",
    causal_n: int | None = None,
    rank_by: str = "prompt",
    extra_sets: dict[str, list[tuple[int, int]]] | None = None,
    options: TraceOptions | None = None,
    top: int = 10,
    rows: int = 3,
    dla: bool = True,
    n_splits: int = 20,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    progress: bool = False,
    trace_fn: Callable[[StudyRecord], Any] | None = None,
    **option_values: Any,
) -> Study:
    """Trace each record of this process' shard, keep what a head study needs, and (when the
    head sets are known) validate the top heads causally.

    ``records``: dicts / :class:`StudyRecord` (``records[j]`` is line ``j + 1``) or a JSONL path.
    ``shard``: ``(i, n)``; default :func:`ftlens.study.shard_from_env` (torchrun, Slurm arrays).
    ``out``: the study folder (module docstring); without it nothing is written (one process only).
    ``k``: top-k for frequencies and stability; ``ks`` (default ``[k]``): head-set sizes ablated;
    ``draws``: random head sets per example; ``rank_by``: the measure that ranks the study's
    heads (``prompt``, ``evidence``, ``dla`` or ``segment:<name>``); ``extra_sets``: more named
    head rankings to ablate (e.g. retrieval heads).  ``causal``: ``True``/``"yes"``,
    ``False``/``"no"`` or ``"auto"`` (one process: yes; a shard: when ``out/study.json`` from
    :func:`merge` exists); ``causal_n``: ablate only the first ``causal_n`` examples by line.
    ``options`` (:class:`~ftlens.options.TraceOptions`) or option keywords (``method=``,
    ``hops=``, ``explain=``, ``stop_rows=``, ``chat_template=``, ...): how each record is traced,
    as in :func:`ftlens.trace`.  ``settings``: the run-level request (default from the model and
    the options).  ``trace_fn(record)`` replaces ``ftlens.trace`` (DLA then needs one more forward
    pass per example); without it the trace's own forward pass also reads DLA
    (:class:`ftlens.dla.DLACollector`).
    """
    from ..pipeline import options_from

    opts = options_from(options, option_values)
    i, n = shard_from_env(shard)
    if out is None and n > 1:
        raise SpanError("a sharded study needs out= (the shards meet in one folder or are merged)")
    recs, bad = study_inputs(records, (i, n), rank_by=rank_by, dla=dla)
    ks = sorted(set(ks or [k]))
    check_head_counts(model, k, ks, extra_sets)
    agg_settings = {"k": k, "ks": ks, "draws": draws, "seed": seed, "rank_by": rank_by, "n_splits": n_splits,
                    "modes": ["zero", "mean"], "causal_n": causal_n,
                    "extra_sets": {name: [list(h) for h in v] for name, v in (extra_sets or {}).items()}}
    store = ExampleStore(Path(out) if out is not None else None, model, opts, settings or default_settings(model, opts),
                         {"top": top, "rows": rows, "dla": dla}, trace_fn)
    folder = store.folder

    def write_settings() -> None:
        """``settings.json`` beside the examples (the runner has checked and made the folder);
        shards of one study must agree on it."""
        old = load_json(folder / "settings.json")
        if old is not None and old != agg_settings and n > 1:
            raise SpanError(f"{folder}/settings.json was written with other study settings ({old}); shards of one "
                            "study must use the same --k/--ks/--draws/--seed/--rank-by")
        atomic_write_text(folder / "settings.json", json.dumps(agg_settings, indent=1) + "\n")

    t0 = time.perf_counter()
    outcomes = run_jobs(recs, bad, folder, store, shard=(i, n), resume=resume, progress=progress,
                        desc=f"study {i}/{n}", on_ready=write_settings if folder is not None else None)
    t_extract = time.perf_counter() - t0
    examples = [o.result for o in outcomes if o.status == "ok"]

    # causal pass: the head sets come from this run (one process) or from a merged study.json
    want = {"yes": True, True: True, "no": False, False: False}.get(causal, None)
    head_sets, causal_keys = None, None
    if n == 1:
        head_sets = head_sets_of(examples, agg_settings) if examples and want is not False else None
        causal_keys = causal_keys_of(examples, causal_n)
    elif folder is not None and (folder / "study.json").exists() and want is not False:
        merged = load_json(folder / "study.json") or {}
        head_sets, causal_keys = merged.get("head_sets"), merged.get("causal_keys")
    if want is True and head_sets is None:
        raise SpanError("the causal pass of a shard needs the merged head sets: run `ftlens study merge` on the "
                        "study folder first, then rerun the shards with --resume")
    t1 = time.perf_counter()
    rows_c: list[dict[str, Any]] = []
    if want is not False and head_sets:
        mine = [ex for ex in examples if ex["key"] in set(causal_keys or [])]
        rows_c = causal_pass(model, mine, head_sets, folder=folder, ks=ks, draws=draws, seed=seed,
                             progress=progress, desc=f"ablate {i}/{n}")
    meta = {"shard": [i, n], "head_sets": head_sets, "causal_keys": causal_keys,
            "failed": [store.index_row(o) for o in outcomes if o.status != "ok"],
            "stale": {o.key: o.stale for o in outcomes if o.status == "ok" and o.stale and not o.skipped},
            "timings": {"extract_s": t_extract, "traced": sum(o.status == "ok" and not o.skipped for o in outcomes),
                        "causal_s": time.perf_counter() - t1}}
    study = build(examples, rows_c, agg_settings, meta)
    if folder is not None and n == 1:
        study.save(folder)
    return study


def causal_pass(model: Any, examples: Sequence[dict[str, Any]], head_sets: dict[str, list[list[int]]], *,
                folder: Path | None = None, ks: Sequence[int] = (5,), draws: int = 5, seed: Any = 0,
                progress: bool = False, desc: str = "ablate") -> list[dict[str, Any]]:
    """Ablation rows of ``examples`` for ``head_sets`` (:func:`.causal.ablate_example`).  With a
    ``folder``, each example's rows are kept in ``examples/<key>.causal.json`` with the request
    they were made with (head sets, ks, draws, seed, modes, ids), and reused only when equal."""
    bar = None
    if progress and examples:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples), desc=desc, unit="rec")
    out: list[dict[str, Any]] = []
    for ex in examples:
        creq = {"head_sets": head_sets, "ks": list(ks), "draws": draws, "seed": seed, "modes": ["zero", "mean"],
                "ids_sha256": ids_sha256(unpack(ex["ids"]))}
        cpath = folder / "examples" / f"{ex['key']}.causal.json" if folder is not None else None
        done = load_json(cpath) if (cpath is not None and cpath.exists()) else None
        if done is not None and done.get("request") == creq:
            got = done["rows"]
        else:
            got = ablate_example(model, unpack(ex["ids"]), tuple(ex["output"]),
                                 {name: [tuple(h) for h in v] for name, v in head_sets.items()},
                                 ks=ks, draws=draws, seed=seed, key=ex["key"])
            got = [{"key": ex["key"], "line": ex["line"], **g} for g in got]
            if cpath is not None:
                atomic_write_text(cpath, json.dumps({"request": creq, "rows": got}, separators=(",", ":")))
        out += got
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out
