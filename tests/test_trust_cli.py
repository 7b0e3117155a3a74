"""The CLI checks what it can before loading a model, resumes only traces made the same way,
and has ``--version``, ``--threads`` and a ``--resume`` hint on Ctrl-C (issue 11: 4, 10, 15)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ftlens
from ftlens import cli
from ftlens.batch import ids_sha256
from ftlens.result import Trace

from .conftest import PROMPT, TARGET
from .conftest import run_cli as run


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ftlens: error: ") and "Traceback" not in err, err
    return lines[0]


def trace_argv(*extra):
    return ["trace", "--prompt", PROMPT, "--target", TARGET, "--no-progress", *extra]


# --------------------------------------------------------------------------- 10: checked before the model tiny_cli


@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_output_path_that_is_a_folder_is_refused_before_loading_and_named(tiny_cli, capsys, tmp_path, flag):
    folder = tmp_path / "results"
    folder.mkdir()
    rc, _, err = run(capsys, *trace_argv(flag, folder))
    line = one_error_line(err)
    assert rc == 1 and tiny_cli == []
    assert str(folder) in line and ".tmp" not in line and "is a folder" in line


@pytest.mark.parametrize("flag", ["--json", "--html"])
def test_output_under_a_file_is_refused_before_loading_and_names_the_users_path(tiny_cli, capsys, tmp_path, flag):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    target = blocker / "t.json"
    rc, _, err = run(capsys, *trace_argv(flag, target))
    line = one_error_line(err)
    assert rc == 1 and tiny_cli == []
    assert str(target) in line and ".tmp" not in line


def test_unwritable_output_folder_is_refused_before_loading(tiny_cli, capsys, tmp_path, monkeypatch):
    """Simulated with os.access (the tests may run as root, who can write anywhere)."""
    import os

    real = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro else real(p, mode, *a, **k))
    rc, _, err = run(capsys, *trace_argv("--json", ro / "t.json"))
    line = one_error_line(err)
    assert rc == 1 and tiny_cli == [] and str(ro / "t.json") in line and "not writable" in line


@pytest.mark.parametrize("span", ["0:999", "zebra", "re:[xyz]{9}"])
def test_spans_the_tokenizer_can_check_are_refused_before_loading(tiny_cli, capsys, span):
    rc, _, err = run(capsys, *trace_argv("--output", span))
    one_error_line(err)
    assert rc == 1 and tiny_cli == []


@pytest.mark.parametrize("option", [["--device", "gpu0"], ["--device", "mps"], ["--dtype", "float8"]])
def test_device_and_dtype_are_refused_before_loading(tiny_cli, capsys, option):
    if option[1] == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    rc, _, err = run(capsys, *trace_argv(*option))
    one_error_line(err)
    assert rc == 1 and tiny_cli == []


def test_demo_out_that_is_a_file_is_refused_before_loading(tiny_cli, capsys, tmp_path):
    f = tmp_path / "demo"
    f.write_text("x")
    rc, _, err = run(capsys, "demo", "--out", f, "--no-progress")
    line = one_error_line(err)
    assert rc == 1 and tiny_cli == [] and str(f) in line


def test_batch_out_under_a_file_is_refused_before_loading(tiny_cli, capsys, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": PROMPT, "target": TARGET}) + "\n")
    blocker = tmp_path / "f"
    blocker.write_text("x")
    rc, _, err = run(capsys, "batch", src, "--out", blocker / "out", "--no-progress")
    line = one_error_line(err)
    assert rc == 1 and tiny_cli == [] and str(blocker / "out") in line


def test_api_save_into_a_folder_names_the_users_path_not_a_temp_file(tiny_llama, tmp_path):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET)
    with pytest.raises(OSError) as info:
        tr.save(tmp_path)
    assert info.value.filename == str(tmp_path) and not list(tmp_path.glob(".*.tmp"))
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        tr.save(blocker / "t.json")
    assert info.value.filename == str(blocker / "t.json")


# --------------------------------------------------------------------------- 4: resume re-traces stale traces


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ONE = [{"id": "a", "prompt": PROMPT, "target": TARGET}]
TWO = ONE + [{"id": "b", "prompt": "The code is 12. What is it?", "target": " It is 12.", "reasoning": None}]


def count_traces(monkeypatch) -> list:
    calls: list = []
    real = ftlens.trace

    def counting(model, prompt, target=None, **kw):
        calls.append((prompt, target, kw))
        return real(model, prompt, target, **kw)

    monkeypatch.setattr(ftlens, "trace", counting)
    return calls


@pytest.mark.parametrize(
    "second, reason",
    [
        (["--method", "ifr-span"], "method"),
        (["--hops", "2"], "hops"),
        (["--threshold", "0.001"], "threshold"),
        (["--explain", "target"], "explain"),
        (["--stop-rows", "skip"], "stop_rows"),
        (["--no-chat-template"], "chat_template"),
        (["--model", "other-model"], "model"),
        (["--dtype", "bfloat16"], "dtype"),
    ],
)
def test_resume_retraces_traces_made_with_other_settings(tiny_cli, capsys, tmp_path, monkeypatch, second, reason):
    src = write_jsonl(tmp_path / "in.jsonl", ONE)
    out = tmp_path / "out"
    assert run(capsys, "batch", src, "--out", out, "--no-progress")[0] == 0
    calls = count_traces(monkeypatch)
    rc, stdout, err = run(capsys, "batch", src, "--out", out, "--resume", "--no-progress", *second)
    assert rc == 0, err
    assert len(calls) == 1 and "1 traced, 0 already done" in stdout
    assert re.search(rf"re-traced 1 stale trace.*{reason}", stdout), stdout
    tr = Trace.load(out / "a.json")
    req = dict(tr.params["request"])
    assert req.pop("ids_sha256") == ids_sha256(tr.ids) and req == cli_request(second)


def cli_request(argv: list[str]) -> dict:
    """What the run with ``argv`` must have recorded in params["request"] (run-level part)."""
    args = cli.build_parser().parse_args(["batch", "x.jsonl", "--out", "d", *argv])
    from ftlens.batch import run_settings

    return {**run_settings(args), **_record_part(ONE[0])}


def _record_part(rec: dict) -> dict:
    from ftlens.batch import parse_record, record_request

    return record_request(parse_record(json.dumps(rec), 1))


@pytest.mark.parametrize(
    "edit, reason",
    [
        ({"prompt": PROMPT + " Answer briefly."}, "prompt"),
        ({"target": TARGET.replace("7351", "7352")}, "target"),
        ({"output": "7351"}, "output"),
        ({"reasoning": None}, "reasoning"),
    ],
)
def test_resume_retraces_only_the_edited_record(tiny_cli, capsys, tmp_path, monkeypatch, edit, reason):
    src = write_jsonl(tmp_path / "in.jsonl", TWO)
    out = tmp_path / "out"
    assert run(capsys, "batch", src, "--out", out, "--no-progress")[0] == 0
    kept = (out / "b.json").read_bytes()
    write_jsonl(src, [{**TWO[0], **edit}, TWO[1]])
    calls = count_traces(monkeypatch)
    rc, stdout, err = run(capsys, "batch", src, "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert len(calls) == 1 and calls[0][0] == {**TWO[0], **edit}["prompt"]
    assert "1 traced, 1 already done" in stdout and re.search(rf"re-traced 1 stale trace.*{reason}", stdout), stdout
    assert (out / "b.json").read_bytes() == kept


def test_resume_unchanged_keeps_every_trace(tiny_cli, capsys, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", TWO)
    out = tmp_path / "out"
    assert run(capsys, "batch", src, "--out", out, "--no-progress", "--hops", "2")[0] == 0
    calls = count_traces(monkeypatch)
    rc, stdout, err = run(capsys, "batch", src, "--out", out, "--resume", "--no-progress", "--hops", "2")
    assert rc == 0, err
    assert calls == [] and "0 traced, 2 already done" in stdout and "stale" not in stdout
    assert len(tiny_cli) == 1  # the first run only: nothing was left to trace


def test_resume_retraces_a_trace_with_no_record_of_its_settings(tiny_llama, tiny_cli, capsys, tmp_path, monkeypatch):
    """A trace written by the API (or an older ftlens) cannot be checked: it is redone, not kept."""
    src = write_jsonl(tmp_path / "in.jsonl", ONE)
    out = tmp_path / "out"
    out.mkdir()
    ftlens.trace(tiny_llama, PROMPT, TARGET, method="ifr-span").save(out / "a.json")
    calls = count_traces(monkeypatch)
    rc, stdout, err = run(capsys, "batch", src, "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert len(calls) == 1 and re.search(r"re-traced 1 stale trace.*no record", stdout), stdout
    assert Trace.load(out / "a.json").method == "flashtrace"


def test_resume_retraces_a_trace_whose_ids_were_edited(tiny_cli, capsys, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", ONE)
    out = tmp_path / "out"
    assert run(capsys, "batch", src, "--out", out, "--no-progress")[0] == 0
    data = json.loads((out / "a.json").read_text())
    data["ids"][-1] = data["ids"][-2]  # the trace no longer describes what was traced
    (out / "a.json").write_text(json.dumps(data))
    calls = count_traces(monkeypatch)
    rc, stdout, err = run(capsys, "batch", src, "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert len(calls) == 1 and re.search(r"re-traced 1 stale trace.*input ids", stdout), stdout


# --------------------------------------------------------------------------- 15: --version, --threads, Ctrl-C


def test_version_prints_the_package_version(capsys):
    rc, out, err = run(capsys, "--version")
    assert rc == 0 and out.startswith(f"ftlens {ftlens.__version__}"), (out, err)


@pytest.mark.parametrize("command", ["trace", "batch", "demo"])
def test_threads_sets_torch_threads(tiny_cli, capsys, tmp_path, monkeypatch, command):
    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    src = write_jsonl(tmp_path / "in.jsonl", ONE)
    argv = {
        "trace": trace_argv(),
        "batch": ["batch", src, "--out", tmp_path / "out", "--no-progress"],
        "demo": ["demo", "--out", tmp_path / "demo", "--no-progress"],
    }[command]
    if command == "demo":
        from ftlens import examples

        monkeypatch.setattr(examples, "NEEDLE_PROMPT", PROMPT)
        monkeypatch.setattr(examples, "NEEDLE_TARGET", TARGET)
    rc, _, err = run(capsys, *argv, "--threads", 3)
    assert rc == 0, err
    assert asked == [3]


def test_threads_must_be_positive(capsys):
    rc, _, err = run(capsys, *trace_argv("--threads", 0))
    assert rc == 2 and "usage:" in err


def test_batch_interrupt_says_how_to_resume(tiny_cli, capsys, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", TWO)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ftlens, "trace", interrupt)
    rc, _, err = run(capsys, "batch", src, "--out", tmp_path / "out", "--no-progress")
    assert rc == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ftlens: interrupted"), err
    assert "rerun the same command with --resume" in lines[0]


# --------------------------------------------------------------------------- 1 (CLI part): generated ids traced verbatim


def test_trace_without_target_traces_the_generated_ids_like_the_api(default_model, monkeypatch, capsys, tmp_path):
    """The CLI must not decode the generation to text and re-tokenise it (issue 11, item 1):
    SmolLM2's 20 greedy tokens for this prompt re-tokenise to 21."""
    monkeypatch.setattr(ftlens, "load_model", lambda *a, **k: default_model)
    prompt = "List three fruits."
    rc, out, err = run(capsys, "trace", "--prompt", prompt, "--max-new-tokens", 20, "--output", "0:1",
                       "--reasoning", "none", "--json", tmp_path / "t.json", "--no-progress")
    assert rc == 0, err
    api = ftlens.trace(default_model, prompt, None, max_new_tokens=20, output=(0, 1), reasoning=None)
    cli_tr = Trace.load(tmp_path / "t.json")
    assert cli_tr.ids == api.ids and torch.equal(cli_tr.scores, api.scores)
    generated = default_model.tokenizer.decode(api.ids[len(api.ids) - api.params["rows"]:])
    assert out.startswith(f"generated target: {generated!r}")
