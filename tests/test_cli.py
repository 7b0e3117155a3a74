"""The ``ftlens`` command line: trace / show / batch / demo, help, exit codes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ftlens
from ftlens import cli
from ftlens.spans import Select, parse_span
from ftlens.result import Trace

from .conftest import PROMPT, TARGET
from .conftest import run_cli as run

HAS_RENDER = importlib.util.find_spec("ftlens.render") is not None


@pytest.mark.parametrize("command", [[], ["trace"], ["show"], ["batch"], ["demo"]])
def test_help_everywhere_shows_examples_and_exit_codes(capsys, command):
    rc, out, _ = run(capsys, *command, "--help")
    assert rc == 0
    assert "exit codes" in out
    if command:
        assert "example" in out


@pytest.mark.parametrize(
    "argv",
    [[], ["trace"], ["nope"], ["trace", "--prompt", "x", "--top", "-1"], ["batch", "in.jsonl", "--out", "d", "--shard", "2/2"],
     ["trace", "--prompt", "x", "--hops", "one"]],
)
def test_usage_errors_exit_2(capsys, argv):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "usage:" in err


def test_trace_prints_the_summary_and_saves_what_the_api_returns(tiny_llama, tiny_cli, capsys, tmp_path):
    rc, out, err = run(capsys, "trace", "--prompt", PROMPT, "--target", TARGET, "--hops", 2, "--top", 4,
                       "--json", tmp_path / "t.json", "--no-progress", "--model", "m", "--device", "cpu")
    assert rc == 0, err
    api = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=2)
    assert out.startswith(api.summary(4))
    assert f"wrote {tmp_path / 't.json'}" in out
    saved = Trace.load(tmp_path / "t.json")
    assert torch.equal(saved.scores, api.scores) and saved.output == api.output
    assert tiny_cli == [("m", "cpu", None)]


def test_token_range_is_half_open_and_relative_to_the_target(tiny_llama, tiny_cli, capsys, tmp_path):
    rc, _, err = run(capsys, "trace", "--prompt", PROMPT, "--target", TARGET, "--output", "2:5",
                     "--reasoning", "0:2", "--json", tmp_path / "t.json", "--no-progress")
    assert rc == 0, err
    tr = Trace.load(tmp_path / "t.json")
    p = tr.roles.index("reasoning")  # first target token
    assert tr.reasoning == (p, p + 2) and tr.output == (p + 2, p + 5)
    api = ftlens.trace(tiny_llama, PROMPT, TARGET, output=(2, 5), reasoning=(0, 2))
    assert torch.equal(tr.scores, api.scores)


def test_regex_and_literal_spans_select_the_same_tokens(tiny_cli, capsys, tmp_path):
    paths = {}
    for name, spec in {"re": "re:[0-9]{4}\\.$", "text": "7351."}.items():
        paths[name] = tmp_path / f"{name}.json"
        rc, _, err = run(capsys, "trace", "--prompt", PROMPT, "--target", TARGET, "--output", spec,
                         "--reasoning", "none", "--json", paths[name], "--no-progress")
        assert rc == 0, err
    a, b = (Trace.load(p) for p in paths.values())
    assert a.output == b.output and a.reasoning is None
    assert "".join(a.tokens[slice(*a.output)]).strip() == "7351."


def test_occurrence_picks_one_of_several_matches(tiny_cli, capsys, tmp_path):
    rc, _, err = run(capsys, "trace", "--prompt", PROMPT, "--target", TARGET, "--output", "code",
                     "--output-occurrence", 1, "--reasoning", "none", "--json", tmp_path / "t.json", "--no-progress")
    assert rc == 0, err
    tr = Trace.load(tmp_path / "t.json")
    before = "".join(tr.tokens[tr.roles.index("other"): tr.output[0]])
    assert before.count("code") == 1


@pytest.mark.parametrize(
    "value, expected",
    [
        ("auto", "auto"),
        ("3:7", Select(tokens=(3, 7))),
        (" 0 : 2 ", Select(tokens=(0, 2))),
        ("re:\\d+", Select(regex="\\d+")),
        ("text:3:7", Select(text="3:7")),
        ("text:auto", Select(text="auto")),
        ("the answer", Select(text="the answer")),
        ([1, 4], Select(tokens=(1, 4))),
    ],
)
def test_span_syntax(value, expected):
    assert parse_span(value, "--output") == expected


def test_reasoning_none_means_no_span():
    assert parse_span("none", "--reasoning", allow_none=True) is None
    assert parse_span("none", "--output") == Select(text="none")


def test_at_file_reads_utf8_and_double_at_escapes(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Grüße, 世界\n", encoding="utf-8")
    assert cli.read_text_arg(f"@{f}", "--prompt") == "Grüße, 世界\n"
    assert cli.read_text_arg("@@handle", "--prompt") == "@handle"
    assert cli.read_text_arg("plain", "--prompt") == "plain"


def test_show_reprints_a_saved_trace_without_a_model(tiny_cli, capsys, tmp_path, monkeypatch):
    rc, out, _ = run(capsys, "trace", "--prompt", PROMPT, "--target", TARGET, "--top", 3,
                     "--json", tmp_path / "t.json", "--no-progress")
    assert rc == 0
    monkeypatch.setattr(ftlens, "load_model", lambda *a, **k: pytest.fail("show must not load a model"))
    rc, shown, _ = run(capsys, "show", tmp_path / "t.json", "--top", 3)
    assert rc == 0
    assert shown.strip() == out.split("\nwrote")[0].strip()


@pytest.mark.skipif(not HAS_RENDER, reason="ftlens.render not written yet")
def test_show_writes_html(tiny_cli, capsys, tmp_path):
    run(capsys, "trace", "--prompt", PROMPT, "--target", TARGET, "--json", tmp_path / "t.json", "--no-progress")
    rc, out, err = run(capsys, "show", tmp_path / "t.json", "--html", tmp_path / "t.html")
    assert rc == 0, err
    assert (tmp_path / "t.html").stat().st_size > 0 and "wrote" in out


# --------------------------------------------------------------------------- batch


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


RECORDS = [
    {"id": "a", "prompt": PROMPT, "target": TARGET},
    {"prompt": "The code is 12. What is it?", "target": " It is 12.", "reasoning": None},
    {"id": "c/3", "prompt": PROMPT, "target": TARGET, "output": "7351"},
    {"id": "d", "prompt": "Say 5.", "target": " 5 5 5", "output": [0, 1]},
]
FILES = ["a.json", "line-000002.json", "c_3.json", "d.json"]


def count_traces(monkeypatch):
    calls = []
    real = ftlens.trace

    def counting(model, prompt, target=None, **kw):
        calls.append(target)
        return real(model, prompt, target, **kw)

    monkeypatch.setattr(ftlens, "trace", counting)
    return calls


def index_rows(folder: Path, name="index.jsonl"):
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def test_batch_writes_one_trace_per_record_and_an_index(tiny_cli, capsys, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    rc, out, err = run(capsys, "batch", src, "--out", tmp_path / "out", "--no-progress")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == sorted(FILES)
    rows = index_rows(tmp_path / "out")
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and [r["file"] for r in rows] == FILES
    assert all(r["status"] == "ok" for r in rows) and rows[0]["id"] == "a"
    tr = Trace.load(tmp_path / "out" / "d.json")
    assert tr.output[1] - tr.output[0] == 1 and rows[3]["output"] == list(tr.output)
    assert "4 records, 4 traced, 0 already done, 0 failed; 0 bad lines" in out


def test_batch_resume_redoes_only_missing_or_broken_outputs(tiny_cli, capsys, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out_dir = tmp_path / "out"
    assert run(capsys, "batch", src, "--out", out_dir, "--no-progress")[0] == 0
    kept = (out_dir / "a.json").read_bytes()
    (out_dir / "d.json").unlink()
    broken = out_dir / "c_3.json"
    broken.write_text(broken.read_text()[:1000])  # as if truncated by a non-atomic copy
    calls = count_traces(monkeypatch)
    rc, out, err = run(capsys, "batch", src, "--out", out_dir, "--resume", "--no-progress")
    assert rc == 0, err
    assert len(calls) == 2 and "2 traced, 2 already done" in out
    assert (out_dir / "a.json").read_bytes() == kept
    Trace.load(broken)
    assert all(r["status"] == "ok" for r in index_rows(out_dir))


def test_batch_without_resume_refuses_to_overwrite(tiny_cli, capsys, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    assert run(capsys, "batch", src, "--out", tmp_path / "out", "--no-progress")[0] == 0
    before = (tmp_path / "out" / "a.json").read_bytes()
    rc, _, err = run(capsys, "batch", src, "--out", tmp_path / "out", "--no-progress")
    assert rc == 1 and "--resume" in err and err.count("\n") == 1
    assert (tmp_path / "out" / "a.json").read_bytes() == before


def test_batch_crash_midway_resumes_where_it_stopped(tiny_cli, capsys, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    real = ftlens.trace
    seen = []

    def crash_on_third(model, prompt, target=None, **kw):
        seen.append(target)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(model, prompt, target, **kw)

    monkeypatch.setattr(ftlens, "trace", crash_on_third)
    rc, _, err = run(capsys, "batch", src, "--out", tmp_path / "out", "--no-progress")
    assert rc == 130 and "interrupted" in err
    rows = index_rows(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "ok", "pending", "pending"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    calls = count_traces(monkeypatch)
    rc, out, err = run(capsys, "batch", src, "--out", tmp_path / "out", "--resume", "--no-progress")
    assert rc == 0, err
    assert len(calls) == 2 and all(r["status"] == "ok" for r in index_rows(tmp_path / "out"))


def test_batch_shards_cover_every_line_once(tiny_cli, capsys, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS + ["not json"])
    out_dir = tmp_path / "out"
    lines = {}
    for i in range(2):
        rc, _, err = run(capsys, "batch", src, "--out", out_dir, "--shard", f"{i}/2", "--no-progress")
        rows = index_rows(out_dir, f"index.shard-{i}-of-2.jsonl")
        lines[i] = [r["line"] for r in rows]
        assert rc == (1 if i == 0 else 0), err  # line 5 (bad) is shard 0's
    assert lines == {0: [1, 3, 5], 1: [2, 4]}
    assert sorted(p.name for p in out_dir.glob("*.json")) == sorted(FILES)


# --------------------------------------------------------------------------- default model, end to end


def test_cli_end_to_end_on_the_default_model(tmp_path):
    """The installed console script, a fresh process, the bundled default model."""
    exe = Path(sys.executable).with_name("ftlens")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ftlens.cli"]
    out_json = tmp_path / "t.json"
    proc = subprocess.run(
        cmd + ["trace", "--prompt", "The code is 4817. What is the code?", "--target", " The code is 4817.",
               "--output", "re:[0-9]+", "--top", "3", "--json", str(out_json), "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in proc.stdout
    tr = Trace.load(out_json)
    assert "".join(tr.tokens[slice(*tr.output)]) == "4817" and tr.n_layers == 30 and tr.n_heads == 9
    show = subprocess.run(cmd + ["show", str(out_json), "--top", "3"], capture_output=True, text=True, timeout=120)
    assert show.returncode == 0 and show.stdout.strip() == proc.stdout.split("\nwrote")[0].strip()


def test_trace_without_target_generates_first(default_model, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(ftlens, "load_model", lambda *a, **k: default_model)
    rc, out, err = run(capsys, "trace", "--prompt", "What is 2 + 2? Answer with a number.", "--max-new-tokens", 6,
                       "--json", tmp_path / "t.json", "--no-progress", "--top", 2)
    assert rc == 0, err
    assert out.startswith("generated target: ")
    assert len(Trace.load(tmp_path / "t.json").tokens) > 0
