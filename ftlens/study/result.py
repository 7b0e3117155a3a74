"""The result of a head study: :class:`Study`, its tables and ``study.json``; no builder, no views.

Views of a study are in :mod:`ftlens.render.study_views` (``render.study_heatmap(study)``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from .aggregate import rankings
from .tables import SCHEMA, read_table, write_table

__all__ = ["Study", "study_json"]


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
        return rankings(self.head_summary).get(measure, [])[:k]

    def save(self, out: str | Path, fmt: str = "auto") -> Path:
        """Write every table and ``study.json`` into ``out``."""
        out = Path(out)
        for name in SCHEMA:
            write_table(out, name, self.tables.get(name, []), fmt)
        atomic_write_text(out / "study.json", json.dumps(study_json(self.meta), indent=1) + "\n")
        return out

    @classmethod
    def load(cls, out: str | Path) -> "Study":
        """Read a study folder written by a one-process run or :func:`ftlens.study.merge`."""
        out = Path(out)
        meta = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
        return cls({name: read_table(out, name) for name in SCHEMA}, meta)


def study_json(meta: dict[str, Any]) -> dict[str, Any]:
    """What ``study.json`` keeps of a study's ``meta``."""
    keep = ("settings", "head_sets", "causal_keys", "n_examples")
    return {k: meta[k] for k in keep if k in meta}
