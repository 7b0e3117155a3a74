"""The three analyses run end to end in --quick mode on a tiny random model."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> None:
    cmd = [sys.executable, str(ROOT / "analyses" / script), "--quick", "--model", "tiny", "--out", str(out),
           "--no-progress", *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("script", ["faithfulness.py", "head_study.py", "hops.py"])
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


def test_head_study_quick(tmp_path):
    _run("head_study.py", tmp_path)
    rows = list(csv.DictReader((tmp_path / "head_study_summary.csv").open()))
    assert {r["ranking"] for r in rows} == {"ftlens", "random", "attention"}
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
