"""Head studies (ftlens.study): extraction, statistics, sharding, resume, merge, torchrun."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ftlens import render
from ftlens.errors import SpanError
from ftlens.study import merge, run_study, shard_from_env
from ftlens.study.aggregate import causal_summary, head_summary
from ftlens.study.extract import pack, unpack
from ftlens.study.records import select_shard
from ftlens.study.stats import mean_ci, spearman, split_half, t_quantile
from ftlens.study.tables import SCHEMA, read_table, same_rows, write_table

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
FILLER = "The farmer carried the green basket near the market. "


def _records(n: int = 4) -> list[dict]:
    out = []
    for i in range(n):
        code = str(4000 + 37 * i)
        needle = f"The code for box {i} is {code}."
        prompt = FILLER * (1 + i % 2) + needle + " " + FILLER + "\nWhat is the code for box " + str(i) + "?"
        out.append({"id": f"r{i}", "prompt": prompt, "target": f"The code is {code}.", "evidence": needle})
    return out


def _write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


# ---------------------------------------------------------------------- statistics on hand-made numbers
def test_t_quantile_matches_published_table():
    for df, t in [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (29, 2.045230)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=2e-6)
    assert t_quantile(0.95, 10) == pytest.approx(1.812461, abs=2e-6)


def test_mean_ci_is_the_student_t_interval():
    s = mean_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert (s["n"], s["mean"], s["sd"]) == (5, 3.0, pytest.approx(math.sqrt(2.5)))
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(3 - half, abs=1e-5), pytest.approx(3 + half, abs=1e-5))
    one = mean_ci([2.0, float("nan")])  # NaN dropped, one value: the interval is the value
    assert (one["n"], one["ci_low"], one["ci_high"]) == (1, 2.0, 2.0)


def test_spearman_uses_average_ranks_for_ties():
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_split_half_means_and_overlap_by_hand():
    per = [[3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [1.0, 2.0, 0.0]]
    got = split_half(per, k=1, n_splits=3, seed=7)
    for s, row in enumerate(got):
        idx = list(range(4))
        random.Random(f"7:{s}").shuffle(idx)
        a, b = [per[i] for i in idx[:2]], [per[i] for i in idx[2:]]
        ma = [(x + y) / 2 for x, y in zip(*a)]
        mb = [(x + y) / 2 for x, y in zip(*b)]
        assert row["spearman"] == pytest.approx(spearman(ma, mb), nan_ok=True)
        assert row["overlap"] == float(ma.index(max(ma)) == mb.index(max(mb)))
    same = split_half([[1.0, 2.0, 3.0]] * 6, k=2, n_splits=4)
    assert all(r["spearman"] == pytest.approx(1.0) and r["overlap"] == 1.0 for r in same)


def _ex(key, line, prompt):
    return {"key": key, "line": line, "n_heads": 2, "heads": {"prompt": prompt, "evidence": None, "dla": None}}


def test_head_summary_ranks_frequency_and_interval_by_hand():
    exs = [_ex("a", 1, [1.0, 0.0, 2.0, 0.5]), _ex("b", 2, [3.0, 1.0, 0.0, 0.5]), _ex("c", 3, [2.0, 0.0, 1.0, 0.5])]
    rows = {(r["layer"], r["head"]): r for r in head_summary(exs, k=1)}
    assert rows[(0, 0)]["mean"] == 2.0 and rows[(0, 0)]["rank"] == 1 and rows[(0, 0)]["topk_freq"] == pytest.approx(2 / 3)
    assert rows[(1, 0)]["topk_freq"] == pytest.approx(1 / 3) and rows[(1, 1)]["topk_freq"] == 0.0
    assert rows[(0, 0)]["ci_high"] - 2.0 == pytest.approx(4.302653 * 1.0 / math.sqrt(3), abs=1e-5)
    assert rows[(1, 1)]["ci_low"] == rows[(1, 1)]["ci_high"] == 0.5  # constant: zero-width interval


def _causal_rows(data):
    return [{"key": key, "set": s, "mode": "zero", "k": 5, "drop": d} for key, s, d in data]


def test_causal_summary_pools_random_draws_per_example_first():
    rows = _causal_rows([
        ("a", "study", 4.0), ("a", "random", 1.0), ("a", "random", 3.0),  # random mean for a: 2
        ("b", "study", 6.0), ("b", "random", 0.0), ("b", "random", 2.0),  # random mean for b: 1
        ("c", "study", 5.0), ("c", "random", 1.0), ("c", "random", 2.0)])  # random mean for c: 1.5
    got = {r["set"]: r for r in causal_summary(rows)}
    assert got["random"]["mean_drop"] == 1.5 and got["study"]["mean_drop"] == 5.0
    # random per example (2, 1, 1.5): sd 0.5, 95% interval 1.5 +- 4.302653 * 0.5 / sqrt(3) = [0.26, 2.74]
    assert got["random"]["ci_low"] == pytest.approx(1.5 - 4.302653 * 0.5 / math.sqrt(3), abs=1e-5)
    assert got["study"]["ratio_to_random"] == pytest.approx(5.0 / 1.5) and got["study"]["ratio_note"] is None
    assert got["study"]["diff_vs_random"] == 3.5  # paired: (4-2, 6-1, 5-1.5)
    assert got["study"]["diff_ci_high"] - 3.5 == pytest.approx(4.302653 * 1.5 / math.sqrt(3), abs=1e-5)


@pytest.mark.parametrize("data, why", [
    # random mean -0.5 (<= 0): -1.83-style ratios mean nothing
    ([("a", "study", 3.0), ("a", "random", -1.0), ("b", "study", 2.0), ("b", "random", -0.2),
      ("c", "study", 1.0), ("c", "random", -0.3)], "mean drop is -0.5 (<= 0)"),
    # random mean 1.5 > 0 but its interval [-4.85, 7.85] (n = 2, t = 12.71) contains 0
    ([("a", "study", 4.0), ("a", "random", 2.0), ("b", "study", 6.0), ("b", "random", 1.0)], "contains 0"),
    # one example: no interval at all
    ([("a", "study", 4.0), ("a", "random", 2.0)], "1 example, no interval"),
], ids=["negative-random", "interval-contains-0", "one-example"])
def test_ratio_to_a_random_baseline_at_or_around_zero_is_undefined_with_the_reason(data, why):
    got = {r["set"]: r for r in causal_summary(_causal_rows(data))}
    study = got["study"]
    assert math.isnan(study["ratio_to_random"]) and why in study["ratio_note"]
    assert study["ratio_note"].startswith("undefined: ")
    diffs = {}
    for key, s, d in data:  # the paired difference stays defined
        diffs.setdefault(key, {})[s] = d
    assert study["diff_vs_random"] == pytest.approx(sum(v["study"] - v["random"] for v in diffs.values()) / len(diffs))
    assert got["random"]["ratio_to_random"] is None and got["random"]["ratio_note"] is None


def test_packed_arrays_round_trip_exactly():
    vals = [0.1, -3.5e-7, 12345.678, 0.0]
    f32 = [float(x) for x in __import__("numpy").asarray(vals, dtype="float32")]
    assert unpack(pack(vals, "f32")) == f32 and unpack(pack([1, 49151, 7], "i32")) == [1, 49151, 7]
    assert unpack([1.0, 2.0]) == [1.0, 2.0] and unpack(None) is None


def test_tables_round_trip_as_parquet_and_csv(tmp_path):
    rows = [{"measure": "prompt", "layer": 0, "head": 1, "n": 3, "mean": 0.25, "sd": float("nan"), "ci_low": None,
             "ci_high": 1.0, "topk_freq": 0.5, "rank": 1}]
    for fmt in ("csv", "parquet"):
        write_table(tmp_path / fmt, "head_summary", rows, fmt)
        assert same_rows(read_table(tmp_path / fmt, "head_summary"), rows)


# ---------------------------------------------------------------------- sharding
@pytest.mark.parametrize("env_of", [
    lambda i, n: {"RANK": str(i), "WORLD_SIZE": str(n), "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"},
    lambda i, n: {"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": str(n)},
    lambda i, n: {"SLURM_ARRAY_TASK_ID": str(i + 1), "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": str(n)},
], ids=["torchrun", "slurm", "slurm-from-1"])
def test_shards_from_the_environment_cover_every_record_exactly_once(env_of):
    recs = [{"prompt": f"p{j}", "id": j} for j in range(11)]
    seen: list[str] = []
    for i in range(3):
        shard = shard_from_env(env=env_of(i, 3))
        assert shard == (i, 3)
        seen += [r.key for r in select_shard(recs, shard)]
    assert sorted(seen) == sorted(str(j) for j in range(11))


def test_explicit_shard_wins_and_bad_shards_are_refused():
    assert shard_from_env((1, 4), env={"RANK": "0", "WORLD_SIZE": "2"}) == (1, 4)
    assert shard_from_env(env={}) == (0, 1)
    with pytest.raises(SpanError, match="out of range"):
        shard_from_env(env={"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(SpanError, match="not an integer"):
        shard_from_env(env={"RANK": "x", "WORLD_SIZE": "2"})


# ---------------------------------------------------------------------- extraction on a tiny model
def test_extraction_keeps_the_head_study_and_matches_the_trace(tiny_llama, tmp_path):
    import ftlens

    rec = _records(1)[0]
    c = rec["prompt"].index("\nWhat")
    rec["segments"] = {"context": [0, c], "question": [c, len(rec["prompt"])]}  # a partition of the prompt
    study = run_study(tiny_llama, [rec], out=tmp_path, causal=False, rows=2)
    ex = json.loads((tmp_path / "examples" / "r0.json").read_text())
    tr = ftlens.trace(tiny_llama, rec["prompt"], rec["target"])
    top = tr.top_heads(3)
    assert [(t[0], t[1]) for t in ex["top_heads"][:3]] == [(h.layer, h.head) for h in top]
    assert [t[2] for t in ex["top_heads"][:3]] == pytest.approx([h.score for h in top], rel=1e-5)
    prompt, evidence = unpack(ex["heads"]["prompt"]), unpack(ex["heads"]["evidence"])
    segs = {name: unpack(v) for name, v in ex["segment_heads"].items()}
    assert unpack(ex["ids"]) == tr.ids and unpack(ex["scores"]) == pytest.approx(tr.prompt_scores.tolist(), rel=1e-3,
                                                                                 abs=1e-6)
    for i in range(len(prompt)):
        assert segs["context"][i] + segs["question"][i] == pytest.approx(prompt[i], rel=1e-5, abs=1e-9)
        assert evidence[i] <= prompt[i] + 1e-9
    assert 0 < len(ex["evidence"]) and len(ex["rows"]) == 2 and ex["heads"]["dla"] is not None
    assert (tmp_path / "examples" / "r0.json").stat().st_size < 50_000
    assert {r["measure"] for r in study.head_summary} == {"prompt", "evidence", "dla", "segment:context",
                                                          "segment:question"}
    assert not study.ablation  # causal=False


def test_resume_keeps_done_examples_and_retraces_stale_ones(tiny_llama, tmp_path):
    recs = _records(3)
    first = run_study(tiny_llama, recs, out=tmp_path, causal=False)
    with pytest.raises(SpanError, match="resume"):
        run_study(tiny_llama, recs, out=tmp_path, causal=False)
    again = run_study(tiny_llama, recs, out=tmp_path, causal=False, resume=True)
    assert again.meta["timings"]["traced"] == 0 and same_rows(again.head_summary, first.head_summary)
    recs[1]["target"] = "The code is 1234."
    third = run_study(tiny_llama, recs, out=tmp_path, causal=False, resume=True)
    assert third.meta["timings"]["traced"] == 1 and third.meta["stale"] == {"r1": ["target"]}
    f = tmp_path / "examples" / "r2.json"  # a file whose ids no longer match its hash is stale too
    d = json.loads(f.read_text())
    ids = unpack(d["ids"])
    ids[3] += 1
    d["ids"] = pack(ids, "i32")
    f.write_text(json.dumps(d))
    fourth = run_study(tiny_llama, recs, out=tmp_path, causal=False, resume=True)
    assert fourth.meta["stale"] == {"r2": ["input ids"]} and same_rows(fourth.head_summary, third.head_summary)


# ---------------------------------------------------------------------- one process vs merged shards
def _sharded(model, recs, out, n=2):
    for i in range(n):
        run_study(model, recs, out=out, shard=(i, n), draws=2)
    merge([out])
    for i in range(n):  # the causal pass, with the merged head sets
        run_study(model, recs, out=out, shard=(i, n), draws=2, resume=True)
    return merge([out])


def _assert_same_tables(a, b, rel=0.0):
    for name in SCHEMA:
        assert same_rows(a.tables[name], b.tables[name], rel), name
    assert a.meta["head_sets"] == b.meta["head_sets"]


def test_merge_of_two_shards_equals_one_process_run(tiny_llama, tmp_path):
    recs = _records(4)
    one = run_study(tiny_llama, recs, out=tmp_path / "one", draws=2)
    assert one.ablation and {r["set"] for r in one.causal_summary} == {"study", "dla", "random"}
    merged = _sharded(tiny_llama, recs, tmp_path / "sharded")
    _assert_same_tables(one, merged)
    from ftlens.study import Study

    _assert_same_tables(Study.load(tmp_path / "one"), Study.load(tmp_path / "sharded"))


_TORCHRUN_SCRIPT = """
import sys, json
from ftlens.models import tiny_model
from ftlens.study import run_study
m = tiny_model("llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
s = run_study(m, sys.argv[1], out=sys.argv[2], draws=2, resume=True)
print("shard", s.meta["shard"], len(s.examples))
"""


def test_torchrun_two_processes_merge_to_the_one_process_tables(tiny_llama, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    recs = _records(4)
    data = _write_jsonl(tmp_path / "recs.jsonl", recs)
    script = tmp_path / "study_script.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    out = tmp_path / "tr"

    def launch():
        r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "0", str(script), str(data),
                            str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    stdout = launch()
    assert "shard [0, 2] 2" in stdout and "shard [1, 2] 2" in stdout
    merge([out])
    launch()  # the causal pass of each shard, with the merged head sets
    merged = merge([out])
    one = run_study(tiny_llama, str(data), out=tmp_path / "one", draws=2)
    _assert_same_tables(one, merged, rel=1e-5)
    assert {r["key"] for r in merged.ablation} == {"r0", "r1", "r2", "r3"}


# ---------------------------------------------------------------------- views and command line
def test_views_render_from_a_study(tiny_llama, tmp_path):
    study = run_study(tiny_llama, _records(3), draws=1)
    (l, h), = study.top_heads(1)
    for view in (render.study_heatmap(study, "evidence"), render.study_dla(study), render.study_causal(study),
                 render.study_head_tokens(study, l, h, n=2)):
        assert "<svg" in view.html() or "ColoredTokens" in view.html()
    assert len([p for p in render.study_head_tokens(study, l, h, n=2).parts if p.component == "ColoredTokens"]) == 2
    with pytest.raises(SpanError, match="no measure"):
        render.study_heatmap(study, "segment:nope")


def test_cli_study_run_and_merge(tiny_cli, capsys, tmp_path):
    data = _write_jsonl(tmp_path / "recs.jsonl", _records(2) + [{"prompt": ""}])
    rc, out, err = run_cli(capsys, "study", "run", data, "--out", tmp_path / "s", "--draws", "1", "--no-progress")
    assert rc == 1 and "top 5 heads by prompt" in out and "ftlens: error: line 3: bad-line" in err
    assert (tmp_path / "s" / "head_summary.parquet").exists() or (tmp_path / "s" / "head_summary.csv").exists()
    rc, out, err = run_cli(capsys, "study", "merge", tmp_path / "s", "--out", tmp_path / "m")
    assert rc == 0 and "merged 2 examples (2 ablated)" in out
    rc, out, err = run_cli(capsys, "study", "run", tmp_path / "missing.jsonl", "--out", tmp_path / "x")
    assert rc == 1 and err.startswith("ftlens: error: ") and len(err.strip().splitlines()) == 1
    rc, out, err = run_cli(capsys, "study", "merge", tmp_path / "nowhere")
    assert rc == 1 and "ftlens: error: study folder" in err


def test_study_dla_comes_from_the_traces_own_forward_pass(tiny_llama, tmp_path, monkeypatch):
    """The study reads DLA in the trace's capture pass: the same heads as a standalone DLA pass,
    and no model forward pass besides the trace's one."""
    import ftlens
    import ftlens.residual as R

    rec = _records(1)[0]
    tr = ftlens.trace(tiny_llama, rec["prompt"], rec["target"])
    alone = R.direct_logit_attribution(tiny_llama, tr).heads.flatten().tolist()
    calls = []
    real_forward = type(tiny_llama).forward

    def counting(self, *a, **kw):
        calls.append(1)
        return real_forward(self, *a, **kw)

    monkeypatch.setattr(type(tiny_llama), "forward", counting)
    run_study(tiny_llama, [rec], out=tmp_path, causal=False)
    ex = json.loads((tmp_path / "examples" / "r0.json").read_text())
    assert len(calls) == 1
    assert unpack(ex["heads"]["dla"]) == pytest.approx(alone, rel=1e-4, abs=1e-5)
