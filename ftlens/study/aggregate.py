"""Across examples: the study's tables from the per-example results (:mod:`.extract`).

Measures: ``prompt``, ``evidence`` and ``dla`` (``heads[...]`` of each example) and
``segment:<name>`` (``segment_heads[name]``).  Per measure and head (:func:`head_summary`):
mean and 95% Student-t interval over the examples that have the measure, ``topk_freq`` = the
fraction of those examples whose own top-``k`` heads by the measure include the head, and the
head's rank by mean (1 = largest).  :func:`stability`: split-half stability per measure
(:func:`ftlens.study.stats.split_half`).  :func:`causal_summary`: per head set, mode and k, the
mean drop over examples (random sets: each example's mean over its draws first) with its
interval, the ratio to the random sets' mean drop (NaN with ``ratio_note`` saying why when the
random mean is <= 0 or its interval contains 0: :func:`~ftlens.study.stats.ratio_to_baseline`), and
the paired difference to random with its interval (always defined).  Rows are always in example line order, so a merge of shards builds the same tables
as one process.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .extract import unpack, unruns
from .stats import mean_ci, ratio_to_baseline, split_half, top_k

__all__ = ["measures", "per_example_tables", "head_summary", "stability", "causal_summary", "rankings",
           "causal_lines"]


def _vectors(ex: dict[str, Any]) -> dict[str, list[float]]:
    """Every measure of one example as a flat list (cached on the dict as ``_vectors``)."""
    if "_vectors" not in ex:
        out = {m: unpack(v) for m, v in ex["heads"].items() if v is not None}
        out.update({f"segment:{n}": unpack(v) for n, v in ex.get("segment_heads", {}).items()})
        ex["_vectors"] = out
    return ex["_vectors"]


def measures(examples: Iterable[dict[str, Any]]) -> list[str]:
    """Every measure some example has: prompt, evidence, dla, then segments in first-seen order."""
    seen: list[str] = []
    for ex in examples:
        for m in _vectors(ex):
            if m not in seen:
                seen.append(m)
    fixed = [m for m in ("prompt", "evidence", "dla") if m in seen]
    return fixed + [m for m in seen if m not in fixed]


def per_example_tables(examples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``examples``, ``head_scores``, ``segment_scores`` and ``token_rows`` rows."""
    ex_rows, heads, segs, rows = [], [], [], []
    for ex in examples:
        H = ex["n_heads"]
        n_prompt = len(ex["tokens"])
        ev = ex.get("evidence")
        ex_rows.append({
            "key": ex["key"], "id": ex["id"], "line": ex["line"], "model": ex["model"], "n_positions": len(unpack(ex["ids"])),
            "n_prompt": n_prompt, "output_start": ex["output"][0], "output_end": ex["output"][1],
            "prompt_mass": ex["prompt_mass"], "evidence_mass": ex.get("evidence_mass"),
            "n_evidence": None if ev is None else len(unruns(ev)),
            "top_heads": ";".join(f"L{l}H{h}" for l, h, _ in ex["top_heads"]), "trace_s": ex["trace_s"],
        })
        hv = _vectors(ex)
        for i, p in enumerate(hv["prompt"]):
            heads.append({"key": ex["key"], "line": ex["line"], "layer": i // H, "head": i % H, "prompt": p,
                          "evidence": hv["evidence"][i] if "evidence" in hv else None,
                          "dla": hv["dla"][i] if "dla" in hv else None})
        for name in ex.get("segment_heads", {}):
            segs += [{"key": ex["key"], "line": ex["line"], "segment": name, "layer": i // H, "head": i % H,
                      "value": x} for i, x in enumerate(hv[f"segment:{name}"])]
        for r in ex.get("rows", []):
            vals = [float(f"{q * r['scale'] / 999:.4g}") for q in unpack(r["q"])]
            rows.append({"key": ex["key"], "line": ex["line"], "layer": r["layer"], "head": r["head"],
                         "scale": r["scale"], "tokens": json.dumps(ex["tokens"], ensure_ascii=False),
                         "values": json.dumps(vals)})
    return {"examples": ex_rows, "head_scores": heads, "segment_scores": segs, "token_rows": rows}


def head_summary(examples: list[dict[str, Any]], k: int = 5, level: float = 0.95) -> list[dict[str, Any]]:
    """One row per measure and head: ``n, mean, sd, ci_low, ci_high, topk_freq, rank``."""
    out = []
    for m in measures(examples):
        vecs = [_vectors(ex)[m] for ex in examples if m in _vectors(ex)]
        if not vecs:
            continue
        H = next(ex["n_heads"] for ex in examples if m in _vectors(ex))
        n_h = len(vecs[0])
        freq = [0] * n_h
        for v in vecs:
            for i in top_k(v, k):
                freq[i] += 1
        stats = [mean_ci([v[i] for v in vecs], level) for i in range(n_h)]
        means = [s["mean"] for s in stats]
        rank = {i: r for r, i in enumerate(top_k(means, n_h), 1)}
        for i, s in enumerate(stats):
            out.append({"measure": m, "layer": i // H, "head": i % H, **s, "topk_freq": freq[i] / len(vecs),
                        "rank": rank[i]})
    return out


def rankings(summary: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Per measure, every head ordered by its rank in :func:`head_summary`."""
    out: dict[str, list[tuple[int, int]]] = {}
    for r in sorted(summary, key=lambda r: (r["measure"], r["rank"])):
        out.setdefault(r["measure"], []).append((r["layer"], r["head"]))
    return out


def stability(examples: list[dict[str, Any]], k: int = 5, n_splits: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """Split-half rows per measure: ``measure, split, n_a, n_b, spearman, overlap``."""
    out = []
    for m in measures(examples):
        vecs = [_vectors(ex)[m] for ex in examples if m in _vectors(ex)]
        out += [{"measure": m, **r} for r in split_half(vecs, k, n_splits, seed)]
    return out


def causal_summary(ablation: list[dict[str, Any]], level: float = 0.95) -> list[dict[str, Any]]:
    """Pooled ablation effects per ``(set, mode, k)`` (see the module docstring)."""
    per: dict[tuple, dict[str, list[float]]] = {}
    for r in ablation:
        per.setdefault((r["set"], r["mode"], r["k"]), {}).setdefault(r["key"], []).append(r["drop"])
    drops = {g: {key: sum(v) / len(v) for key, v in d.items()} for g, d in per.items()}
    out = []
    for (name, mode, k), d in drops.items():
        s = mean_ci(list(d.values()), level)
        rnd = drops.get(("random", mode, k))
        row = {"set": name, "mode": mode, "k": k, "n": s["n"], "mean_drop": s["mean"], "ci_low": s["ci_low"],
               "ci_high": s["ci_high"], "ratio_to_random": None, "ratio_note": None, "diff_vs_random": None,
               "diff_ci_low": None, "diff_ci_high": None}
        if rnd is not None and name != "random":
            row["ratio_to_random"], row["ratio_note"] = ratio_to_baseline(s["mean"], mean_ci(list(rnd.values()), level))
            diff = mean_ci([d[key] - rnd[key] for key in d if key in rnd], level)
            row.update(diff_vs_random=diff["mean"], diff_ci_low=diff["ci_low"], diff_ci_high=diff["ci_high"])
        out.append(row)
    return out


def _ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3g} [{lo:.3g}, {hi:.3g}]"


def causal_lines(summary: list[dict[str, Any]]) -> list[str]:
    """One line per named head set, mode and k of a :func:`causal_summary`: its mean drop with
    the interval, the paired difference to random with its interval, and the ratio or why it is
    undefined."""
    out = []
    for r in summary:
        if r["set"] == "random":
            continue
        line = f"{r['set']} top-{r['k']}, {r['mode']}-ablation: drop {_ci(r['mean_drop'], r['ci_low'], r['ci_high'])}"
        if r.get("diff_vs_random") is not None:
            ratio = r.get("ratio_to_random")
            said = r.get("ratio_note") or (f"ratio {ratio:.3g}x" if ratio is not None else "no ratio")
            line += (f"; minus random {_ci(r['diff_vs_random'], r['diff_ci_low'], r['diff_ci_high'])}; "
                     f"ratio to random {said.removeprefix('ratio ')}")
        out.append(line + f" (n={r['n']})")
    return out
