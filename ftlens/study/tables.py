"""The study's tables: their schema, and reading/writing them as Parquet (pyarrow) or CSV.

Every table is a list of dict rows with the columns of :data:`SCHEMA` in that order
(``docs/study.md`` describes each column).  :func:`write_table` writes ``<name>.parquet`` when
pyarrow is installed, else ``<name>.csv``; :func:`read_table` reads either back with the
schema's types (CSV: empty cell = None, ``nan`` = NaN).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes, atomic_write_text

__all__ = ["SCHEMA", "write_table", "read_table", "has_parquet", "table_path", "same_rows"]

S, I, F = "str", "int", "float"

#: name -> [(column, type)]; the order is the column order of the files.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "examples": [("key", S), ("id", S), ("line", I), ("model", S), ("n_positions", I), ("n_prompt", I),
                 ("output_start", I), ("output_end", I), ("prompt_mass", F), ("evidence_mass", F),
                 ("n_evidence", I), ("top_heads", S), ("trace_s", F)],
    "head_scores": [("key", S), ("line", I), ("layer", I), ("head", I), ("prompt", F), ("evidence", F), ("dla", F)],
    "segment_scores": [("key", S), ("line", I), ("segment", S), ("layer", I), ("head", I), ("value", F)],
    "token_rows": [("key", S), ("line", I), ("layer", I), ("head", I), ("scale", F), ("tokens", S), ("values", S)],
    "head_summary": [("measure", S), ("layer", I), ("head", I), ("n", I), ("mean", F), ("sd", F), ("ci_low", F),
                     ("ci_high", F), ("topk_freq", F), ("rank", I)],
    "stability": [("measure", S), ("split", I), ("n_a", I), ("n_b", I), ("spearman", F), ("overlap", F)],
    "ablation": [("key", S), ("line", I), ("set", S), ("draw", I), ("mode", S), ("k", I), ("heads", S),
                 ("clean_logprob", F), ("ablated_logprob", F), ("drop", F)],
    "causal_summary": [("set", S), ("mode", S), ("k", I), ("n", I), ("mean_drop", F), ("ci_low", F), ("ci_high", F),
                       ("ratio_to_random", F), ("ratio_note", S), ("diff_vs_random", F), ("diff_ci_low", F), ("diff_ci_high", F)],
}


def has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def table_path(folder: str | Path, name: str) -> Path | None:
    """The existing ``<name>.parquet`` or ``<name>.csv`` in ``folder`` (parquet first), or None."""
    for ext in (".parquet", ".csv"):
        p = Path(folder) / f"{name}{ext}"
        if p.exists():
            return p
    return None


def _cell(v: Any, typ: str) -> Any:
    if v is None:
        return None
    if typ == I:
        return int(v)
    if typ == F:
        return float(v)
    return str(v)


def write_table(folder: str | Path, name: str, rows: list[dict[str, Any]], fmt: str = "auto") -> Path:
    """Write ``rows`` as ``folder/<name>.parquet`` (``fmt="parquet"``, or auto with pyarrow) or
    ``.csv``, atomically; a stale file of the other format is removed."""
    cols = SCHEMA[name]
    fmt = ("parquet" if has_parquet() else "csv") if fmt == "auto" else fmt
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = [{c: _cell(r.get(c), t) for c, t in cols} for r in rows]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {S: pa.string(), I: pa.int64(), F: pa.float64()}
        schema = pa.schema([(c, types[t]) for c, t in cols])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(data, schema=schema), buf)
        path = atomic_write_bytes(folder / f"{name}.parquet", buf.getvalue())
    else:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow([c for c, _ in cols])
        for r in data:
            w.writerow(["" if r[c] is None else (repr(r[c]) if t == F else r[c]) for c, t in cols])
        path = atomic_write_text(folder / f"{name}.csv", out.getvalue())
    other = folder / f"{name}.{'csv' if fmt == 'parquet' else 'parquet'}"
    if other.exists():
        other.unlink()
    return path


def read_table(folder: str | Path, name: str) -> list[dict[str, Any]]:
    """Rows of ``folder/<name>.parquet`` or ``.csv`` (empty list when neither exists)."""
    p = table_path(folder, name)
    if p is None:
        return []
    cols = SCHEMA[name]
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    rows = []
    with open(p, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({c: (None if r.get(c, "") == "" else _cell(r[c], t)) for c, t in cols})
    return rows


def same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]], rel: float = 0.0,
              ignore: tuple[str, ...] = ("trace_s",)) -> bool:
    """Whether two tables hold the same rows (floats within ``rel`` relative tolerance, NaN == NaN),
    ignoring the ``ignore`` columns (default: the measured trace time)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if ra.keys() != rb.keys():
            return False
        for c in ra:
            if c in ignore:
                continue
            x, y = ra[c], rb[c]
            if isinstance(x, float) and isinstance(y, float):
                if math.isnan(x) and math.isnan(y):
                    continue
                if not math.isclose(x, y, rel_tol=rel, abs_tol=rel * 1e-3):
                    return False
            elif x != y:
                return False
    return True
