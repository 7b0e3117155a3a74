"""Merging a sharded head study: the shards' results as exactly the tables of a one-process run."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import SpanError
from ..jobs import ids_sha256
from .extract import FORMAT, unpack
from .result import Study
from .run import causal_keys_of, build, head_sets_of, load_json

__all__ = ["merge"]


def _collect(paths: Sequence[str | Path]) -> tuple[list[dict], dict[str, dict], dict | None]:
    examples: dict[str, dict] = {}
    causal: dict[str, dict] = {}
    settings = None
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise SpanError(f"study folder {str(p)!r} does not exist or is not a folder")
        s = load_json(p / "settings.json")
        if s is not None:
            if settings is not None and s != settings:
                raise SpanError(f"{p} was run with other study settings than {paths[0]}; merge studies of one run")
            settings = s
        for f in sorted((p / "examples").glob("*.json")):
            d = load_json(f)
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
    head_sets = head_sets_of(examples, settings)
    keys = causal_keys_of(examples, settings.get("causal_n"))
    rows, stale = [], []
    by_key = {ex["key"]: ex for ex in examples}
    for key in keys:
        c = causal.get(key)
        if c is None:
            continue
        req = c.get("request", {})
        if req.get("head_sets") == head_sets and req.get("ids_sha256") == ids_sha256(unpack(by_key[key]["ids"])):
            rows += c["rows"]
        else:
            stale.append(key)
    study = build(examples, rows, settings, {"head_sets": head_sets, "causal_keys": keys, "causal_stale": stale})
    study.save(Path(out) if out is not None else Path(paths[0]), fmt)
    return study
