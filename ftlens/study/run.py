"""Running a head study: :func:`run_study` (one process or one shard), :func:`merge`, :class:`Study`.

Files in a study folder ``OUT``:

- ``examples/<key>.json``: one example's extraction (:mod:`.extract`) with ``request``, what
  it was made from (the ``ftlens batch`` request: run settings, SHA-256 of the prompt and
  target, span values; plus the evidence/segments values and extraction settings) and
  ``ids_sha256``; ``--resume`` keeps it only when :func:`ftlens.batch.stale_reasons` finds no
  difference, else re-traces;
- ``examples/<key>.causal.json``: its ablation rows and the request they were made with (head
  sets, ks, draws, seed, modes, ids): kept on resume only when equal;
- ``index.jsonl`` (``index.shard-I-of-N.jsonl``): one line per record of the run, ``line, id,
  key, status, error, stale``;
- ``settings.json``: the aggregation and causal settings (every shard writes the same);
- ``study.json``: written by a one-process run and by :func:`merge`: the head sets the causal
  pass ablates and the keys it covers; a shard run finds them there for its causal pass;
- the tables (:mod:`.tables`), written by a one-process run and by :func:`merge`.

One process (shard ``0/1``): trace and extract every record, aggregate, ablate, write the
tables.  Sharded (``--shard``, torchrun, Slurm arrays): each shard extracts its records;
``merge`` aggregates and writes ``study.json``; the shards rerun with ``resume`` to ablate their
examples with those head sets; ``merge`` again adds the causal tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .. import batch
from ..errors import FtlensError, ModelLoadError, SpanError
from ..fileio import atomic_write_text
from ..residual import DLACollector
from . import aggregate as agg
from .causal import ablate_example
from .extract import FORMAT, extract, unpack
from .records import StudyRecord, check_not_empty, check_rank_by, read_study_records, select_shard
from .shard import in_shard, shard_from_env
from .tables import SCHEMA, read_table, write_table

__all__ = ["Study", "run_study", "merge", "PER_EXAMPLE", "AGGREGATES"]

PER_EXAMPLE = ("examples", "head_scores", "segment_scores", "token_rows", "ablation")
AGGREGATES = ("head_summary", "stability", "causal_summary")


@dataclass
class Study:
    """The tables of a head study (lists of dict rows; :meth:`frame` gives a pandas DataFrame).

    ``meta``: ``settings`` (aggregation and causal), ``head_sets`` (the ranked heads the causal
    pass ablates), ``causal_keys``, ``shard``, ``failed`` (records that failed, with errors),
    ``stale`` (re-traced records and why) and ``timings``.
    """

    tables: dict[str, list[dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name in SCHEMA:
            return self.tables.get(name, [])
        raise AttributeError(name)

    def frame(self, name: str) -> Any:
        """Table ``name`` as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.tables.get(name, []), columns=[c for c, _ in SCHEMA[name]])

    def top_heads(self, k: int = 5, measure: str = "prompt") -> list[tuple[int, int]]:
        """The ``k`` heads with the largest mean ``measure`` (ties: lower layer/head first)."""
        return agg.rankings(self.head_summary).get(measure, [])[:k]

    def save(self, out: str | Path, fmt: str = "auto") -> Path:
        """Write every table and ``study.json`` into ``out``."""
        out = Path(out)
        for name in SCHEMA:
            write_table(out, name, self.tables.get(name, []), fmt)
        atomic_write_text(out / "study.json", json.dumps(_study_json(self.meta), indent=1) + "\n")
        return out

    @classmethod
    def load(cls, out: str | Path) -> "Study":
        """Read a study folder written by a one-process run or :func:`merge`."""
        out = Path(out)
        meta = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
        return cls({name: read_table(out, name) for name in SCHEMA}, meta)

    # views (matplotlib / HTML, :mod:`.views`)
    def heatmap_view(self, measure: str = "prompt"):
        from .views import heatmap_view

        return heatmap_view(self, measure)

    def head_tokens_view(self, layer: int, head: int, n: int = 3):
        from .views import head_tokens_view

        return head_tokens_view(self, layer, head, n)

    def dla_view(self, measure: str = "prompt", k: int = 5):
        from .views import dla_view

        return dla_view(self, measure, k)

    def causal_view(self):
        from .views import causal_view

        return causal_view(self)


def _study_json(meta: dict[str, Any]) -> dict[str, Any]:
    keep = ("settings", "head_sets", "causal_keys", "n_examples")
    return {k: meta[k] for k in keep if k in meta}


# ---------------------------------------------------------------------- settings and requests
def default_settings(model: Any, *, method: str, hops: int | None, threshold: float | None, explain: str,
                     chat_template: bool | None, stop_rows: str = "keep") -> dict[str, Any]:
    """The run-level request when the caller gives none (as :func:`ftlens.batch.run_settings`)."""
    from ..pipeline import model_name

    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    return {"method": method, "hops": (1 if hops is None else hops) if method == "flashtrace" else 0,
            "threshold": threshold, "explain": explain, "chat_template": chat_template,
            "model": model_name(model), "dtype": str(dtype).removeprefix("torch."),
            **batch.stop_rows_setting(stop_rows)}


def _request(settings: dict[str, Any], rec: StudyRecord, max_new_tokens: int, extraction: dict[str, Any],
             stop_at: str = "auto"):
    return {**settings, **batch.record_request(rec, max_new_tokens, stop_at), "evidence": rec.evidence_spec,
            "segments": rec.segments_spec, "extraction": extraction}


def _stale(stored: dict[str, Any], request: dict[str, Any]) -> list[str]:
    """Why a stored example is not what ``request`` would make (:func:`ftlens.batch.request_stale`
    on the example's stored request and ids)."""
    have = stored.get("request")
    if not isinstance(have, dict):
        return ["no record of its settings"]
    return batch.request_stale(have, request, unpack(stored.get("ids", [])))


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _head_sets(examples: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, list[list[int]]]:
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


def _causal_keys(examples: list[dict[str, Any]], n: int | None) -> list[str]:
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
                 rank_by: str = "prompt", dla: bool = True) -> tuple[list[StudyRecord], list[batch.BadLine]]:
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
    method: str = "flashtrace",
    hops: int | None = None,
    threshold: float | None = None,
    explain: str = "output",
    stop_rows: str = "keep",
    chat_template: bool | None = None,
    max_new_tokens: int = 128,
    stop_at: str = "auto",
    top: int = 10,
    rows: int = 3,
    dla: bool = True,
    n_splits: int = 20,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    progress: bool = False,
    trace_fn: Callable[[StudyRecord], Any] | None = None,
) -> Study:
    """Trace each record of this process' shard, keep what a head study needs, and (when the
    head sets are known) validate the top heads causally.

    ``records``: dicts / :class:`StudyRecord` (``records[j]`` is line ``j + 1``) or a JSONL path.
    ``shard``: ``(i, n)``; default :func:`ftlens.study.shard_from_env` (torchrun, Slurm arrays).
    ``out``: the study folder (module docstring); without it nothing is written (one process only).
    ``k``: top-k for frequencies and stability; ``ks`` (default ``[k]``): head-set sizes ablated;
    ``draws``: random head sets per example; ``rank_by``: the measure that ranks the study's
    heads (``prompt``, ``evidence`` or ``segment:<name>``); ``extra_sets``: more named head
    rankings to ablate (e.g. retrieval heads).  ``causal``: ``True``/``"yes"``, ``False``/``"no"``
    or ``"auto"`` (one process: yes; a shard: when ``out/study.json`` from :func:`merge` exists);
    ``causal_n``: ablate only the first ``causal_n`` examples by line.  ``settings``: the run-level
    request (default from the model and method options).  ``trace_fn(record)`` replaces
    ``ftlens.trace`` (DLA then needs one more forward pass per example); without it the trace's
    own forward pass also reads DLA (:class:`ftlens.residual.DLACollector`).  ``stop_rows``: as
    in :func:`ftlens.trace`.
    """
    from .. import pipeline

    i, n = shard_from_env(shard)
    if out is None and n > 1:
        raise SpanError("a sharded study needs out= (the shards meet in one folder or are merged)")
    recs, bad = study_inputs(records, (i, n), rank_by=rank_by, dla=dla)
    ks = sorted(set(ks or [k]))
    check_head_counts(model, k, ks, extra_sets)
    agg_settings = {"k": k, "ks": ks, "draws": draws, "seed": seed, "rank_by": rank_by, "n_splits": n_splits,
                    "modes": ["zero", "mean"], "causal_n": causal_n,
                    "extra_sets": {name: [list(h) for h in v] for name, v in (extra_sets or {}).items()}}
    extraction = {"top": top, "rows": rows, "dla": dla}
    settings = settings or default_settings(model, method=method, hops=hops, threshold=threshold, explain=explain,
                                            chat_template=chat_template, stop_rows=stop_rows)
    folder = Path(out) if out is not None else None
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise SpanError(f"study folder {str(folder)!r} is a file; pass a folder")
        if not resume:
            clash = [r.key for r in recs if (folder / "examples" / f"{r.key}.json").exists()]
            if clash:
                raise SpanError(f"{folder} already holds results for {len(clash)} of these records (e.g. {clash[0]}); "
                                "pass resume=True / --resume to keep them and do the rest, or use another folder")
        (folder / "examples").mkdir(parents=True, exist_ok=True)
        old = _load_json(folder / "settings.json")
        if old is not None and old != agg_settings and n > 1:
            raise SpanError(f"{folder}/settings.json was written with other study settings ({old}); shards of one "
                            "study must use the same --k/--ks/--draws/--seed/--rank-by")
        atomic_write_text(folder / "settings.json", json.dumps(agg_settings, indent=1) + "\n")

    def do_trace(r: StudyRecord):
        """The trace and, with ``dla``, its DLA read in the same forward pass (no second pass)."""
        if trace_fn is not None:
            return trace_fn(r), None
        col = DLACollector(model) if dla else None
        tr = pipeline.trace(model, r.prompt, r.target, output=r.output, reasoning=r.reasoning, hops=hops,
                            method=method, explain=explain, threshold=threshold, chat_template=chat_template,
                            max_new_tokens=max_new_tokens, stop_rows=stop_rows, stop_at=stop_at,
                            collect=None if col is None else (lambda seq: col.hooks(seq.ids, seq.output)))
        return tr, None if col is None else col.result()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(recs), desc=f"study {i}/{n}", unit="rec")
    examples: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = [{"line": b.line, "id": b.id, "key": None, "status": "bad-line", "error": b.message,
                                    "stale": None} for b in bad]
    stale_all: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    n_traced = 0
    try:
        for r in recs:
            request = _request(settings, r, max_new_tokens, extraction, stop_at)
            path = folder / "examples" / f"{r.key}.json" if folder is not None else None
            done = _load_json(path) if (path is not None and resume and path.exists()) else None
            if done is not None and done.get("format") != FORMAT:
                done = None
            stale = _stale(done, request) if done is not None else []
            row = {"line": r.line, "id": r.id, "key": r.key, "status": "ok", "error": None, "stale": stale or None}
            if done is not None and not stale:
                examples.append(done)
            else:
                try:
                    tr, dla_result = do_trace(r)
                    ex = extract(model, tr, r, chat_template=chat_template, top=top, rows=rows, dla=dla,
                                 dla_result=dla_result)
                except ModelLoadError:
                    raise
                except (FtlensError, RuntimeError) as exc:
                    row.update(status="failed", error=" ".join(str(exc).split()))
                else:
                    n_traced += 1
                    ex["request"] = {**request, "ids_sha256": batch.ids_sha256(unpack(ex["ids"]))}
                    if path is not None:
                        atomic_write_text(path, json.dumps(ex, ensure_ascii=False, separators=(",", ":")))
                    examples.append(ex)
                    if stale:
                        stale_all[r.key] = stale
            index.append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if folder is not None:
            atomic_write_text(folder / batch.index_name((i, n)),
                              "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in sorted(index, key=lambda x: x["line"])))
    t_extract = time.perf_counter() - t0

    # causal pass: the head sets come from this run (one process) or from a merged study.json
    want = {"yes": True, True: True, "no": False, False: False}.get(causal, None)
    head_sets, causal_keys = None, None
    if n == 1:
        head_sets = _head_sets(examples, agg_settings) if examples and want is not False else None
        causal_keys = _causal_keys(examples, causal_n)
    elif folder is not None and (folder / "study.json").exists() and want is not False:
        merged = _load_json(folder / "study.json") or {}
        head_sets, causal_keys = merged.get("head_sets"), merged.get("causal_keys")
    if want is True and head_sets is None:
        raise SpanError("the causal pass of a shard needs the merged head sets: run `ftlens study merge` on the "
                        "study folder first, then rerun the shards with --resume")
    rows_c: list[dict[str, Any]] = []
    t1 = time.perf_counter()
    if want is not False and head_sets:
        mine = [ex for ex in examples if ex["key"] in set(causal_keys or [])]
        bar = None
        if progress and mine:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc=f"ablate {i}/{n}", unit="rec")
        for ex in mine:
            creq = {"head_sets": head_sets, "ks": ks, "draws": draws, "seed": seed, "modes": ["zero", "mean"],
                    "ids_sha256": batch.ids_sha256(unpack(ex["ids"]))}
            cpath = folder / "examples" / f"{ex['key']}.causal.json" if folder is not None else None
            done = _load_json(cpath) if (cpath is not None and cpath.exists()) else None
            if done is not None and done.get("request") == creq:
                got = done["rows"]
            else:
                got = ablate_example(model, unpack(ex["ids"]), tuple(ex["output"]),
                                     {name: [tuple(h) for h in v] for name, v in head_sets.items()},
                                     ks=ks, draws=draws, seed=seed, key=ex["key"])
                got = [{"key": ex["key"], "line": ex["line"], **g} for g in got]
                if cpath is not None:
                    atomic_write_text(cpath, json.dumps({"request": creq, "rows": got}, separators=(",", ":")))
            rows_c += got
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    t_causal = time.perf_counter() - t1
    meta = {"shard": [i, n], "head_sets": head_sets, "causal_keys": causal_keys,
            "failed": [x for x in index if x["status"] != "ok"], "stale": stale_all,
            "timings": {"extract_s": t_extract, "traced": n_traced, "causal_s": t_causal}}
    study = build(examples, rows_c, agg_settings, meta)
    if folder is not None and n == 1:
        study.save(folder)
    return study


# ---------------------------------------------------------------------- merging
def _collect(paths: Sequence[str | Path]) -> tuple[list[dict], dict[str, dict], dict | None]:
    examples: dict[str, dict] = {}
    causal: dict[str, dict] = {}
    settings = None
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise SpanError(f"study folder {str(p)!r} does not exist or is not a folder")
        s = _load_json(p / "settings.json")
        if s is not None:
            if settings is not None and s != settings:
                raise SpanError(f"{p} was run with other study settings than {paths[0]}; merge studies of one run")
            settings = s
        for f in sorted((p / "examples").glob("*.json")):
            d = _load_json(f)
            if d is None:
                continue
            if f.name.endswith(".causal.json"):
                causal[f.name[: -len(".causal.json")]] = d
            elif d.get("format") == FORMAT:
                prev = examples.get(d["key"])
                if prev is not None and prev.get("request") != d.get("request"):
                    raise SpanError(f"record {d['key']!r} was traced differently in two of the merged folders")
                examples[d["key"]] = d
    return list(examples.values()), causal, settings


def merge(paths: Sequence[str | Path] | str | Path, out: str | Path | None = None, fmt: str = "auto") -> Study:
    """Combine shard outputs (one shared folder, or one folder per machine) into the tables a
    one-process run writes; writes them and ``study.json`` into ``out`` (default: the first
    path).  Ablation results made with other head sets than the merged study's are left out
    (``meta["causal_stale"]``): rerun the shards with ``resume`` to redo them."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise SpanError("merge needs at least one study folder")
    examples, causal, settings = _collect(paths)
    if settings is None:
        raise SpanError(f"no settings.json in {', '.join(map(str, paths))}; are these study folders?")
    if not examples:
        raise SpanError(f"no example results in {', '.join(map(str, paths))}")
    head_sets = _head_sets(examples, settings)
    keys = _causal_keys(examples, settings.get("causal_n"))
    rows, stale = [], []
    by_key = {ex["key"]: ex for ex in examples}
    for key in keys:
        c = causal.get(key)
        if c is None:
            continue
        req = c.get("request", {})
        if req.get("head_sets") == head_sets and req.get("ids_sha256") == batch.ids_sha256(unpack(by_key[key]["ids"])):
            rows += c["rows"]
        else:
            stale.append(key)
    study = build(examples, rows, settings, {"head_sets": head_sets, "causal_keys": keys, "causal_stale": stale})
    study.save(Path(out) if out is not None else Path(paths[0]), fmt)
    return study
