"""Study records: a :class:`ftlens.jsonl.Record` plus the regions a head study measures.

A record is one JSON object (a JSONL line, or a dict passed to :func:`ftlens.study.run_study`)
with the fields of ``ftlens batch`` (``prompt`` required; ``target``, ``output``,
``reasoning``, ``id``) and two more, both about the *prompt text*:

- ``evidence``: where the answer's evidence is: a substring of the prompt (its first
  occurrence), or a list of ``[start, end)`` character ranges;
- ``segments``: named parts of the prompt, ``{"name": substring or [start, end) or a list of
  ranges}``.  Missing: a prompt with a newline gets ``context`` (before its last newline) and
  ``question`` (after it); a one-line prompt gets none.

:func:`prompt_regions` turns them into indices into the trace's prompt positions: a token
belongs to a range when its characters overlap it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import jsonl
from ..errors import SpanError
from .shard import in_shard

__all__ = ["StudyRecord", "as_record", "read_study_records", "select_shard", "prompt_regions", "check_rank_by",
           "check_not_empty", "MEASURES"]

#: The measures a study ranks heads by (besides ``segment:<name>``).
MEASURES = ("prompt", "evidence", "dla")

Ranges = list[tuple[int, int]]


@dataclass
class StudyRecord(jsonl.Record):
    """A batch record with its evidence and segments as character ranges of the prompt."""

    evidence: Ranges | None = None
    segments: dict[str, Ranges] = field(default_factory=dict)
    evidence_spec: Any = None  #: the raw "evidence" value (recorded with the result)
    segments_spec: Any = None  #: the raw "segments" value


def _ranges(spec: Any, prompt: str, what: str) -> Ranges:
    if isinstance(spec, str):
        if not spec:
            raise SpanError(f"{what} is an empty string; give a substring of the prompt or [start, end) ranges")
        a = prompt.find(spec)
        if a < 0:
            raise SpanError(f"{what} {spec[:40]!r} is not in the prompt; give a substring or [start, end) ranges")
        return [(a, a + len(spec))]
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise SpanError(f"{what} must be a substring of the prompt or a list of [start, end) character ranges")
    out = []
    for r in spec:
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                    for x in r)):
            raise SpanError(f"{what}: {r!r} is not a [start, end) pair of integers")
        a, b = r
        if not 0 <= a < b <= len(prompt):
            raise SpanError(f"{what}: range [{a}, {b}) is outside the prompt's {len(prompt)} characters")
        out.append((a, b))
    return out


def _default_segments(prompt: str) -> dict[str, Ranges]:
    q = prompt.rstrip().rfind("\n")
    if q <= 0 or q + 1 >= len(prompt):
        return {}
    return {"context": [(0, q)], "question": [(q + 1, len(prompt))]}


def as_record(obj: dict[str, Any] | StudyRecord, line: int) -> StudyRecord:
    """A dict (the JSONL line's object) or a record as a :class:`StudyRecord` at ``line``."""
    if isinstance(obj, StudyRecord):
        return obj
    if not isinstance(obj, dict):
        raise SpanError(f"record {line}: a {type(obj).__name__}, not a dict with a \"prompt\"")
    try:
        base = jsonl.parse_record(json.dumps(obj, ensure_ascii=False), line)
    except SpanError as exc:
        raise SpanError(f"record {line}: {exc}") from None
    ev_spec, seg_spec = obj.get("evidence"), obj.get("segments")
    evidence = None if ev_spec is None else _ranges(ev_spec, base.prompt, '"evidence"')
    if seg_spec is None:
        segments = _default_segments(base.prompt)
    elif isinstance(seg_spec, dict):
        segments = {str(k): _ranges(v, base.prompt, f'segment "{k}"') for k, v in seg_spec.items()}
    else:
        raise SpanError('"segments" must be an object {"name": substring or [start, end) ranges}')
    return StudyRecord(**vars(base), evidence=evidence, segments=segments, evidence_spec=ev_spec,
                       segments_spec=seg_spec)


def select_shard(records: Iterable[dict[str, Any] | StudyRecord], shard: tuple[int, int]) -> list[StudyRecord]:
    """The records of ``shard`` (``records[j]`` is line ``j + 1`` unless it is a record with its own line)."""
    out = []
    for j, r in enumerate(records, 1):
        line = r.line if isinstance(r, StudyRecord) else j
        if in_shard(line, shard):
            out.append(as_record(r, line))
    keys = [r.key for r in out]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SpanError(f"two records share the id/key {dup!r}; make ids unique")
    return out


def read_study_records(path: str | Path, shard: tuple[int, int] = (0, 1)) -> tuple[list[StudyRecord], list[jsonl.BadLine]]:
    """:func:`ftlens.jsonl.read_records` plus each record's evidence and segments."""
    recs, bad = jsonl.read_records(path, shard)
    lines = Path(path).read_bytes().split(b"\n")
    out = []
    for r in recs:
        try:
            out.append(as_record(json.loads(lines[r.line - 1].decode("utf-8")), r.line))
        except SpanError as exc:
            bad.append(jsonl.BadLine(r.line, str(exc).removeprefix(f"record {r.line}: "), r.id))
    return out, sorted(bad, key=lambda b: b.line)


def prompt_regions(tokenizer: Any, rec: StudyRecord, prompt_pos: list[int],
                   chat_template: bool | None) -> tuple[list[int] | None, dict[str, list[int]]]:
    """Evidence and segment tokens as indices into ``prompt_pos`` (a token is in a region when
    its characters overlap one of its ranges); evidence ``None`` when the record has none."""
    from ..spans import format_prompt

    formatted, special = format_prompt(tokenizer, rec.prompt, chat_template)
    c0 = formatted.rfind(rec.prompt)
    offsets = tokenizer(formatted, add_special_tokens=special, return_offsets_mapping=True)["offset_mapping"]
    spans = [(offsets[p][0] - c0, offsets[p][1] - c0) if p < len(offsets) else (-1, -1) for p in prompt_pos]

    def pick(ranges: Ranges) -> list[int]:
        return [j for j, (s, e) in enumerate(spans) if any(s < b and e > a for a, b in ranges)]

    evidence = None if rec.evidence is None else pick(rec.evidence)
    return evidence, {name: pick(r) for name, r in rec.segments.items()}


def _named(recs: list[StudyRecord], most: int = 5) -> str:
    """``lines 3, 5 (ids a, b)``-style names of records, the first ``most`` of them."""
    shown = ", ".join(f"{r.line}" + (f" (id {r.id})" if r.id is not None else "") for r in recs[:most])
    return f"line{'s' if len(recs) > 1 else ''} {shown}" + (f" and {len(recs) - most} more" if len(recs) > most else "")


def check_rank_by(records: list[StudyRecord], rank_by: str, dla: bool = True) -> None:
    """Refuse, before anything is traced, a ranking measure some record cannot give: ``evidence``
    needs every record's ``"evidence"``, ``segment:NAME`` every record's segment ``NAME``, ``dla``
    the DLA extraction; any other name is unknown.  A head set ranked on a measure an example
    lacks would be ablated as "the study's top k" while it is empty or ranked on other examples."""
    if rank_by == "prompt":
        return
    if rank_by == "dla":
        if not dla:
            raise SpanError("rank_by='dla' ranks heads by direct logit attribution, which --no-dla / dla=False "
                            "switches off; drop one of them")
        return
    if rank_by == "evidence":
        lacking = [r for r in records if r.evidence is None]
        if lacking:
            raise SpanError(f"rank_by='evidence' needs an \"evidence\" field on every record, and {_named(lacking)} "
                            f"{'have' if len(lacking) > 1 else 'has'} none; add it (a substring of the prompt) or "
                            "rank by 'prompt'")
        return
    if rank_by.startswith("segment:") and rank_by[len("segment:"):]:
        name = rank_by[len("segment:"):]
        lacking = [r for r in records if name not in r.segments]
        if lacking:
            have = sorted({n for r in lacking for n in r.segments})
            raise SpanError(f"rank_by={rank_by!r}: {_named(lacking)} {'have' if len(lacking) > 1 else 'has'} no "
                            f"segment {name!r} (segments there: {', '.join(have) or 'none'}); add \"segments\": "
                            f"{{\"{name}\": ...}} to every record or rank by another measure")
        return
    raise SpanError(f"unknown rank_by {rank_by!r}; use prompt, evidence, dla or segment:NAME")


def check_not_empty(records: list[StudyRecord], bad: list[jsonl.BadLine], source: str) -> None:
    """Refuse a records file or list with no record at all (only blank lines, or nothing)."""
    if not records and not bad:
        raise SpanError(f"{source} has no records; write one JSON object per line, e.g. {{\"prompt\": ...}}")
