"""The analyses run end to end in --quick mode on a tiny random model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> None:
    cmd = [sys.executable, str(ROOT / "analyses" / script), "--quick", "--model", "tiny", "--out", str(out),
           "--no-progress", *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("script", ["faithfulness.py", "head_study.py", "hops.py", "step_causal.py",
                                    "recovery_settings.py", "recovery_ingredients.py", "head_atlas.py",
                                    "study_throughput.py"])
def test_help(script):
    r = subprocess.run([sys.executable, str(ROOT / "analyses" / script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--quick" in r.stdout


def test_faithfulness_quick(tmp_path):
    _run("faithfulness.py", tmp_path, "--n", "1", "--occlusion-max", "80")
    rows = list(csv.DictReader((tmp_path / "faithfulness.csv").open()))
    methods = {r["method"] for r in rows}
    assert {"random", "evidence-first", "flashtrace-h1", "integrated_gradients"} <= methods
    md = (tmp_path / "faithfulness.md").read_text()
    assert "Command: `python analyses/faithfulness.py" in md and "Target checks" in md
    assert (tmp_path / "faithfulness.png").stat().st_size > 0
    assert (tmp_path / "datasets" / "twohop-96.jsonl").exists()
    for r in rows:
        assert 0.0 <= float(r["rise_target"]) <= 1.0


def test_faithfulness_recovery_only_and_punctuation_mask(tmp_path):
    """--recovery-only skips the curves (RISE empty, Recovery set); --mask-punct zeroes ',' '.' for methods."""
    _run("faithfulness.py", tmp_path, "--n", "1", "--recovery-only", "--name", "rec", "--tasks", "needle_single",
         "--methods", "random", "flashtrace-h1", "flashtrace-target-h1")
    rows = list(csv.DictReader((tmp_path / "rec.csv").open()))
    assert {r["method"] for r in rows} == {"random", "flashtrace-h1", "flashtrace-target-h1", "evidence-first"}
    assert all(r["rise_target"] == "nan" and 0.0 <= float(r["recovery"]) <= 1.0 for r in rows)
    assert "Recovery only" in (tmp_path / "rec.md").read_text()
    _run("faithfulness.py", tmp_path, "--n", "1", "--mask-punct", "--name", "masked", "--tasks", "needle_single",
         "--methods", "random", "flashtrace-h1")
    assert "Punctuation mask ON" in (tmp_path / "masked.md").read_text()


def test_punct_mask_marks_commas_periods_and_blank_tokens():
    sys.path.insert(0, str(ROOT / "analyses"))
    from faithfulness import punct_mask

    from ftlens.models import default_tokenizer

    tok = default_tokenizer()
    ids = tok("The code, 4817. Next\n\n", add_special_tokens=False)["input_ids"]
    got = {tok.decode([i]): bool(m) for i, m in zip(ids, punct_mask(tok, torch.tensor(ids)))}
    assert got[","] and got["."] and not got["The"] and not got[" code"]
    assert any(m for t, m in got.items() if t.strip() == "")  # the newline token


def test_head_study_quick(tmp_path):
    _run("head_study.py", tmp_path)
    rows = list(csv.DictReader((tmp_path / "head_study_summary.csv").open()))
    assert {r["ranking"] for r in rows} == {"ftlens", "ftlens-route", "random", "attention"}
    # the two ftlens rankings are the two weightings of Trace.top_heads, not the same list twice
    per_ex = list(csv.DictReader((tmp_path / "head_study.csv").open()))
    top = {r["ranking"]: r["top_heads"] for r in per_ex if r["mode"] == "zero" and r["k"] == "5"}
    assert top["ftlens"] != top["ftlens-route"]
    assert {r["mode"] for r in rows} == {"zero", "mean"}
    assert (tmp_path / "head_study.png").stat().st_size > 0


def test_hops_quick(tmp_path):
    _run("hops.py", tmp_path)
    rows = list(csv.DictReader((tmp_path / "hops.csv").open()))
    assert {int(r["hop"]) for r in rows} == {0, 1, 2}
    # thinking ratio falls hop by hop (mass is handed on to inputs)
    by = {}
    for r in rows:
        by.setdefault(r["id"], []).append(float(r["thinking_ratio"]))
    assert all(v == sorted(v, reverse=True) for v in by.values())
    assert (tmp_path / "hops.md").exists()


def test_step_causal_quick(tmp_path):
    """Every example gets one row per weighting; the drops are per-step and the picks are among them."""
    _run("step_causal.py", tmp_path)
    rows = list(csv.DictReader((tmp_path / "step_causal.csv").open()))
    assert {r["weighting"] for r in rows} == {"graph", "graph-direct", "token-recursion", "recursion-hop0", "rollout"}
    for r in rows:
        drops = json.loads(r["drops"])
        assert len(drops) == len(json.loads(r["weights"])) == int(r["n_steps"]) >= 2
        for pick in ("drop_top", "drop_low", "drop_random"):
            assert min(abs(float(r[pick]) - d) for d in drops) < 1e-3
        assert abs(float(r["drop_mean"]) - sum(drops) / len(drops)) < 1e-3
        s = float(r["spearman"])
        assert s != s or -1.0 - 1e-9 <= s <= 1.0 + 1e-9
    md = (tmp_path / "step_causal.md").read_text()
    assert "Command: `python analyses/step_causal.py" in md and "Spearman" in md
    # the edge check reads the same deletions at every later step: one row per step with >= 2 candidates
    edges = list(csv.DictReader((tmp_path / "step_causal_edges.csv").open()))
    assert edges and "## Edge check" in md
    for e in edges:
        w, d = json.loads(e["weights"]), json.loads(e["drops"])
        assert len(w) == len(d) == int(e["n_earlier"]) >= 2 and all(0.0 <= x <= 1.0 for x in w)
        for m in ("spearman_edge", "spearman_recency"):
            s = float(e[m])
            assert s != s or -1.0 - 1e-9 <= s <= 1.0 + 1e-9


def test_step_causal_spearman_uses_average_ranks():
    sys.path.insert(0, str(ROOT / "analyses"))
    from step_causal import spearman  # the study's (ftlens.study.stats), not a copy

    from ftlens.study.stats import ranks

    assert ranks([3.0, 1.0, 3.0]) == [1.5, 0.0, 1.5]
    assert spearman([1.0], [2.0]) != spearman([1.0], [2.0])  # one point: NaN
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # constant side: NaN


def test_recovery_settings_quick(tmp_path):
    _run("recovery_settings.py", tmp_path, "--no-reference")
    rows = list(csv.DictReader((tmp_path / "recovery_settings.csv").open()))
    methods = {r["method"] for r in rows}
    assert {"stepgraph", "flashtrace-h0", "flashtrace-h3", "flashtrace-target-h1"} <= methods
    for r in rows:
        assert 0.0 <= float(r["recovery"]) <= 1.0 and 0.0 <= float(r["rise_target"]) <= 1.0
        shares = [float(r[c]) for c in ("to_template", "to_question", "to_evidence", "to_punct")]
        assert sum(shares) <= 1.0 + 1e-6
    assert "Command: `python analyses/recovery_settings.py" in (tmp_path / "recovery_settings.md").read_text()


def test_recovery_settings_methods_must_come_from_the_chosen_settings(capsys):
    """--methods scores a subset; a method the chosen --stop-rows settings do not run is refused."""
    sys.path.insert(0, str(ROOT / "analyses"))
    import recovery_settings as RS

    a = RS.parse(["--methods", "flashtrace-h1", "flashtrace-target-skip-h1", "reference"])
    assert a.methods == ["flashtrace-h1", "flashtrace-target-skip-h1", "reference"]
    for bad in (["--methods", "flashtrace-skip-h1", "--stop-rows", "keep"],
                ["--methods", "stepgraph", "--stop-rows", "skip"],
                ["--methods", "reference", "--no-reference"]):
        with pytest.raises(SystemExit):
            RS.parse(bad)
        assert "--methods" in capsys.readouterr().err


def test_recovery_ingredients_quick_reproduces_the_references_ranking_with_its_choices(tmp_path):
    """Every (span, rows, handoff, hop, sources) variant is scored next to the reference; with the
    reference's four choices ftlens ranks the prompt exactly as the reference does (same top 10%)."""
    _run("recovery_ingredients.py", tmp_path)
    rows = list(csv.DictReader((tmp_path / "recovery_ingredients.csv").open()))
    ids = {r["id"] for r in rows}
    assert len(ids) == 2
    variants = {r["variant"] for r in rows}
    # 2 spans x 2 rows x (h0 + 2 handoffs x 1 hop) x 2 sources, and the reference
    assert len(variants) == 2 * 2 * 3 * 2 + 1 and "reference" in variants
    theirs = [r for r in rows if r["variant"] == "target/skip/target/h1/masked"]
    assert len(theirs) == 2 and all(float(r["same_top"]) == 1.0 and float(r["d_recovery"]) == 0.0 for r in theirs)
    md = (tmp_path / "recovery_ingredients.md").read_text()
    assert "Command: `python analyses/recovery_ingredients.py" in md and "one choice at a time" in md


def test_recovery_ingredients_variants_are_the_librarys_traces():
    """The script copies no recursion: each (span, rows, handoff, hop) variant it scores is what
    ftlens.trace gives with those options and that many hops (a fresh capture, exactly equal)."""
    sys.path.insert(0, str(ROOT / "analyses"))
    import recovery_ingredients as RI

    import ftlens
    from ftlens.eval.tasks import make_examples
    from ftlens.models import tiny_model
    from ftlens.pipeline import prepare

    model = tiny_model("llama")
    ex = make_examples("twohop", model.tokenizer, 1, 96, seed=100)[0]
    got = RI.recursions(prepare(model, ex["prompt"], ex["target"]), 2)
    assert len(got) == 2 * 2 * (1 + 2 * 2)
    for (span, rows, handoff, k), f in got.items():
        tr = ftlens.trace(model, ex["prompt"], ex["target"], hops=k, explain=span, stop_rows=rows,
                          handoff=handoff or "reasoning")
        assert torch.equal(f, tr.scores), (span, rows, handoff, k)
    assert not torch.equal(got[("target", "skip", "target", 1)], got[("target", "skip", "reasoning", 1)])


def test_head_atlas_quick(tmp_path):
    """The head atlas: study vs retrieval heads, each ablated against random heads."""
    _run("head_atlas.py", tmp_path, "--work", str(tmp_path / "work"))
    md = (tmp_path / "head_atlas_tiny.md").read_text()
    assert "Command: `python analyses/head_atlas.py" in md and "## Agreement" in md
    from ftlens.study import Study

    study = Study.load(tmp_path / "head_atlas_tiny")
    assert {r["set"] for r in study.causal_summary} == {"study", "study-prompt", "retrieval", "dla", "random"}
    assert {r["key"] for r in study.ablation} == {r["key"] for r in study.examples} and len(study.examples) == 2
    retr = list(csv.DictReader((tmp_path / "head_atlas_tiny_retrieval.csv").open()))
    assert len(retr) == 8 and all(0.0 <= float(r["retrieval_score"]) <= 1.0 for r in retr)
    assert (tmp_path / "head_atlas_tiny.png").stat().st_size > 0


def test_study_throughput_quick_runs_the_cli_with_one_and_two_processes(tmp_path):
    """The throughput script runs `ftlens study run` alone and under torchrun (default model, 64-token
    needles) and reports both, with the per-example sizes it measured."""
    cmd = [sys.executable, str(ROOT / "analyses" / "study_throughput.py"), "--quick", "--out", str(tmp_path),
           "--work", str(tmp_path / "work"), "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "study_throughput.md").read_text()
    rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(c[0]) for c in rows] == [1, 2] and [int(c[1]) for c in rows] == [2, 4]
    assert all(0 < float(c[5].split(",")[1]) < 50 for c in rows)  # max KB per example
    assert len(list((tmp_path / "work" / "p2" / "examples").glob("*.json"))) == 4
