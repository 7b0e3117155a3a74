"""Every row of docs/bad-input.md: a one-line ``ftlens: error: ...`` naming the fix, exit 1.

Each CLI case also checks there is no traceback; API cases check the error type.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import ftlens
from ftlens import cli
from ftlens.errors import FtlensError, ModelLoadError, SchemaError, SpanError, TraceError

from .conftest import PROMPT, TARGET


def fails(capsys, *argv, match: str) -> str:
    """Run the CLI; it must exit 1 with exactly one stderr line matching ``match``."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ftlens: error: ")
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def trace_args(*extra, prompt=PROMPT, target=TARGET):
    return ["trace", "--prompt", prompt, "--target", target, "--no-progress", *extra]


# 1. empty / whitespace prompt ------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_prompt(tiny_llama, tiny_cli, capsys, prompt):
    fails(capsys, *trace_args(prompt=prompt), match=r"prompt is empty; pass the question")
    with pytest.raises(SpanError, match="prompt is empty"):
        ftlens.trace(tiny_llama, prompt, TARGET)


# 2. @FILE missing / not UTF-8 --------------------------------------------------
def test_at_file_missing(tiny_cli, capsys, tmp_path):
    fails(capsys, "trace", "--prompt", f"@{tmp_path / 'nope.txt'}", match=r"--prompt file .* does not exist; check the path")


def test_at_file_not_utf8(tiny_cli, capsys, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Grüße".encode("latin-1"))
    fails(capsys, *trace_args(target=f"@{f}"), match=r"--target file .* is not UTF-8 text .*re-save it as UTF-8")


# 3. span text not found / found twice / empty ------------------------------------
def test_span_not_found(tiny_cli, capsys):
    fails(capsys, *trace_args("--output", "zebra"), match=r"output span 'zebra' was not found in the target")


def test_span_found_twice(tiny_cli, capsys):
    fails(capsys, *trace_args("--output", "code"), match=r"occurs 2 times .*--output-occurrence k")


@pytest.mark.parametrize("value", ["", "text:", "text:   "])
def test_span_empty(tiny_cli, capsys, value):
    fails(capsys, *trace_args("--output", value), match=r"span text is empty; pass a non-blank substring")


def test_span_regex_does_not_compile(tiny_cli, capsys):
    fails(capsys, *trace_args("--output", "re:(unclosed"), match=r"does not compile .*fix the pattern")


# 4. A:B malformed / out of range --------------------------------------------------
@pytest.mark.parametrize("value", ["3:", ":4", "1:2:3", "1: :2"])
def test_token_range_malformed(tiny_cli, capsys, value):
    fails(capsys, *trace_args("--output", value), match=r"is not a token range; write A:B with two integers")


@pytest.mark.parametrize("value", ["0:999", "5:5", "4:2", "-1:3"])
def test_token_range_out_of_range(tiny_llama, tiny_cli, capsys, value):
    fails(capsys, *trace_args(f"--output={value}"), match=r"token range .* out of range; the target has \d+ tokens")
    a, b = (int(x) for x in value.split(":"))
    with pytest.raises(SpanError, match="out of range"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, output=(a, b))


# 5. hops negative ---------------------------------------------------------------
def test_hops_negative(tiny_llama, tiny_cli, capsys):
    fails(capsys, *trace_args("--hops", "-1"), match=r"hops must be an integer (>= 0|in \[0, \d+\]), got -1")
    with pytest.raises(TraceError, match="hops must be an integer"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, hops=-1)


# 6. unknown method --------------------------------------------------------------
def test_unknown_method(tiny_llama, tiny_cli, capsys):
    fails(capsys, *trace_args("--method", "shap"), match=r"unknown method 'shap'; choose one of flashtrace, ifr-span")
    with pytest.raises(TraceError, match="unknown method"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, method="shap")


# 7. model unknown / not available offline -------------------------------------------
def test_model_not_available_offline(capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    line = fails(capsys, *trace_args("--model", "no-such-org/no-such-model-ftlens", "--device", "cpu"),
                 match=r"Cannot load model 'no-such-org/no-such-model-ftlens': not in the Hugging Face cache")
    assert "local directory" in line  # the fix, kept on the one line


def test_model_path_missing(capsys, tmp_path):
    fails(capsys, *trace_args("--model", str(tmp_path / "no" / "such" / "dir"), "--device", "cpu"),
          match=r"no such directory\. Pass the path of a local")


def test_model_folder_without_config_json(capsys, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    line = fails(capsys, *trace_args("--model", folder, "--device", "cpu"), match=r"has no config\.json")
    assert str(folder) in line
    with pytest.raises(ModelLoadError, match="no config.json"):
        ftlens.load_model(str(folder), device="cpu")


def test_model_folder_with_a_config_that_names_no_model(capsys, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    fails(capsys, *trace_args("--model", folder, "--device", "cpu"), match=rf"Cannot load model '{re.escape(str(folder))}'")
    with pytest.raises(ModelLoadError):
        ftlens.load_model(str(folder), device="cpu")


def test_unknown_dtype(capsys):
    fails(capsys, *trace_args("--dtype", "float8", "--device", "cpu"), match=r"Unknown dtype 'float8': use one of")


# 8. context longer than the model allows ------------------------------------------------
def test_context_too_long_with_target(tiny_llama, tiny_cli, capsys):
    long_prompt = "word " * 600  # tiny_llama has n_ctx 512
    fails(capsys, *trace_args(prompt=long_prompt), match=r"the model's context is 512; shorten the prompt or the target")
    with pytest.raises(SpanError, match="context is 512"):
        ftlens.trace(tiny_llama, long_prompt, TARGET)


def test_context_too_long_before_generating(tiny_llama, tiny_cli, capsys):
    long_prompt = "word " * 600
    fails(capsys, "trace", "--prompt", long_prompt, "--no-progress", match=r"the model's context is 512; shorten the prompt")
    with pytest.raises(SpanError, match="context is 512"):
        ftlens.generate(tiny_llama, long_prompt, max_new_tokens=2)


# 9. --device cuda without CUDA ------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(capsys):
    fails(capsys, *trace_args("--device", "cuda"), match=r"CUDA is not available here; use device='cpu' \(CLI: --device cpu\)")
    with pytest.raises(ModelLoadError):
        ftlens.load_model(device="cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_device_mps_without_mps(capsys):
    fails(capsys, *trace_args("--device", "mps"), match=r"device='mps' was asked for but MPS .* is not available here.*--device cpu")
    from ftlens.models import resolve_device

    with pytest.raises(ModelLoadError, match="not available here"):
        resolve_device("mps")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() > 7, reason="needs 1-7 GPUs")
def test_device_index_that_does_not_exist():
    from ftlens.models import resolve_device

    with pytest.raises(ModelLoadError, match="not available here"):
        resolve_device("cuda:7")


def test_device_unknown(capsys):
    fails(capsys, *trace_args("--device", "gpu0"), match=r"Unknown device 'gpu0': use 'cpu', 'cuda'")


# 10. show: corrupt / truncated / wrong-schema JSON --------------------------------------------
@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "t.json"
    ftlens.trace(tiny_llama, PROMPT, TARGET).save(path)
    return path


def test_show_corrupt(capsys, tmp_path):
    f = tmp_path / "t.json"
    f.write_bytes(b"\x00\x01garbage{")
    fails(capsys, "show", f, match=r"is not valid JSON .*re-create it with ftlens")


def test_show_truncated(capsys, tmp_path, saved):
    f = tmp_path / "t.json"
    f.write_bytes(saved.read_bytes()[:5000])
    fails(capsys, "show", f, match=r"is not valid JSON \(truncated or corrupt\?")


def test_show_empty_file(capsys, tmp_path):
    f = tmp_path / "t.json"
    f.write_bytes(b"")
    fails(capsys, "show", f, match=r"is empty .*re-create it")


def test_show_newer_schema(capsys, tmp_path, saved):
    data = json.loads(saved.read_text())
    data["schema_version"] = 99
    f = tmp_path / "t.json"
    f.write_text(json.dumps(data))
    fails(capsys, "show", f, match=r"schema_version 99 is newer than this ftlens understands \(1\); upgrade ftlens")


def test_show_not_a_trace(capsys, tmp_path):
    f = tmp_path / "t.json"
    f.write_text('{"tokens": [1, 2]}')
    fails(capsys, "show", f, match=r"not an ftlens trace")


def test_show_missing_file(capsys, tmp_path):
    fails(capsys, "show", tmp_path / "nope.json", match=r"does not exist; check the path")


def test_show_wrong_content(capsys, tmp_path, saved):
    data = json.loads(saved.read_text())
    data["hops"][0]["heads"] = "oops"
    f = tmp_path / "t.json"
    f.write_text(json.dumps(data))
    fails(capsys, "show", f, match=r"corrupt ftlens trace")


# 11. batch: lines that are not JSON / have no prompt: the batch goes on --------------------------
def test_batch_bad_lines_are_reported_and_the_rest_runs(tiny_cli, capsys, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join([
            json.dumps({"prompt": PROMPT, "target": TARGET}),        # 1 ok
            "{not json",                                              # 2 bad
            json.dumps({"target": TARGET}),                           # 3 bad: no prompt
            "",                                                       # 4 blank: skipped
            json.dumps({"prompt": PROMPT, "target": TARGET, "output": "zebra"}),  # 5 fails at trace time
            json.dumps(["a list"]),                                   # 6 bad
            json.dumps({"prompt": PROMPT, "target": TARGET, "output": "1:2:3"}),  # 7 bad span
            json.dumps({"prompt": "Say 5.", "target": " 5."}),        # 8 ok
        ]) + "\n",
        encoding="utf-8",
    )
    rc = cli.main(["batch", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith("ftlens: error: line 2: bad line: not JSON")
    assert lines[1].startswith("ftlens: error: line 3: bad line: no \"prompt\" field")
    assert lines[2].startswith("ftlens: error: line 5: failed: output span 'zebra' was not found")
    assert lines[3].startswith("ftlens: error: line 6: bad line: a JSON list, not an object")
    assert lines[4].startswith("ftlens: error: line 7: bad line: \"output\" '1:2:3' is not a token range")
    assert lines[5] == ("ftlens: error: 4 bad lines and 1 failed records (lines 2, 3, 5, 6, 7); "
                        "fix them and rerun with --resume")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["line-000001.json", "line-000008.json"]
    assert "2 traced" in out


def test_batch_duplicate_ids_are_bad_lines(tiny_cli, capsys, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"id": "x", "prompt": PROMPT, "target": TARGET}) for _ in range(2)))
    rc = cli.main(["batch", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "line 2: bad line: id 'x' (file x.json) repeats line 1; make ids unique" in err


def test_batch_input_missing(capsys, tmp_path):
    fails(capsys, "batch", tmp_path / "nope.jsonl", "--out", tmp_path / "out", match=r"batch input .* does not exist")


def test_every_documented_error_is_an_ftlens_error_and_a_value_error():
    for cls in (SpanError, TraceError, ModelLoadError, SchemaError):
        assert issubclass(cls, FtlensError) and issubclass(cls, ValueError)


# 12. the API's own queries: ftlens errors, not IndexError / RuntimeError / ValueError -----------------
def test_hop_out_of_range_is_a_trace_error(saved):
    tr = ftlens.Trace.load(saved)
    with pytest.raises(TraceError, match=rf"hop 5 is out of range; this trace has {len(tr.hops)} hop records"):
        tr.hop(5)
    assert tr.hop(-1) is tr.hops[-1]


def test_head_channels_with_k_0_is_a_trace_error(saved):
    from ftlens import render

    with pytest.raises(TraceError, match="k must be an integer >= 1"):
        render.head_channels(ftlens.Trace.load(saved), k=0)


@pytest.mark.parametrize("call", ["top", "top_heads", "top_table"])
def test_unknown_where_is_a_trace_error(saved, call):
    from ftlens import render

    tr = ftlens.Trace.load(saved)
    fn = {"top": tr.top, "top_heads": tr.top_heads, "top_table": lambda **k: render.top_table(tr, **k)}[call]
    with pytest.raises(TraceError, match="where must be 'prompt', 'input' or 'all', got 'reasoning'"):
        fn(where="reasoning")


def test_threshold_out_of_range(tiny_llama, tiny_cli, capsys):
    fails(capsys, *trace_args("--threshold", "1.5"), match=r"threshold must be in \[0, 1\), got 1.5")
    with pytest.raises(TraceError, match="threshold must be in"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, threshold=1.5)
