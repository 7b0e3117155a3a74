"""The saved-trace file format: versioned JSON, exact round trip, atomic writes."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

import ftlens
from ftlens.errors import SchemaError
from ftlens.result import Trace
from ftlens.schema import FORMAT_NAME, SCHEMA_VERSION

from .conftest import PROMPT, TARGET

import ftlens.fileio as fileio_mod  # noqa: E402
import ftlens.schema as schema_mod  # noqa: E402


@pytest.fixture(scope="module")
def traces(tiny_llama):
    """A flashtrace trace with a reasoning span and 2 hops, and an ifr-tokenwise one (row_scores)."""
    return {
        "flashtrace": ftlens.trace(tiny_llama, PROMPT, TARGET, hops=2),
        "ifr-tokenwise": ftlens.trace(tiny_llama, PROMPT, TARGET, method="ifr-tokenwise"),
    }


def assert_same_trace(a: Trace, b: Trace) -> None:
    for name in ("model", "method", "params", "ids", "tokens", "roles", "output", "reasoning",
                 "output_mass", "unresolved", "timings", "version"):
        assert getattr(a, name) == getattr(b, name), name
    assert torch.equal(a.scores, b.scores)
    assert (a.row_scores is None) == (b.row_scores is None)
    if a.row_scores is not None:
        assert torch.equal(a.row_scores, b.row_scores)
    assert len(a.hops) == len(b.hops)
    for ha, hb in zip(a.hops, b.hops):
        assert (ha.weight, ha.norm, ha.thinking_ratio) == (hb.weight, hb.norm, hb.thinking_ratio)
        for f in ("scores", "heads", "residual", "bias", "mlp"):
            assert torch.equal(getattr(ha, f), getattr(hb, f)), f


@pytest.mark.parametrize("method", ["flashtrace", "ifr-tokenwise"])
@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_save_load_round_trip_is_exact(traces, tmp_path, method, suffix):
    tr = traces[method]
    path = tr.save(tmp_path / f"t{suffix}")
    back = Trace.load(path)
    assert_same_trace(tr, back)
    assert back.to_dict() == tr.to_dict()
    assert back.summary(5) == tr.summary(5)


def test_file_holds_the_documented_fields(traces, tmp_path):
    tr = traces["flashtrace"]
    data = json.loads(tr.save(tmp_path / "t.json").read_text(encoding="utf-8"))
    assert data["format"] == FORMAT_NAME and data["schema_version"] == SCHEMA_VERSION
    assert data["ftlens_version"] == ftlens.__version__ and data["model"] == "ftlens/tiny-llama"
    assert data["method"] == "flashtrace" and data["params"]["hops"] == 2
    n = len(tr.tokens)
    assert len(data["tokens"]) == len(data["roles"]) == len(data["ids"]) == len(data["scores"]) == n
    assert data["output"] == list(tr.output) and data["reasoning"] == list(tr.reasoning)
    assert len(data["hops"]) == 3
    hop = data["hops"][1]
    assert np.array(hop["heads"]).shape == (tr.n_layers, tr.n_heads, n)
    for key in ("residual", "bias", "mlp"):
        assert len(hop[key]) == tr.n_layers


def test_floats_are_written_as_shortest_float32_decimals(traces, tmp_path):
    """Values are float32 with <= 9 significant digits, not 17-digit doubles."""
    tr = traces["flashtrace"]
    text = tr.save(tmp_path / "t.json").read_text(encoding="utf-8")
    heads = json.loads(text)["hops"][0]["heads"]
    flat = np.array(heads, dtype=np.float64).ravel()
    assert np.array_equal(flat.astype(np.float32), tr.hops[0].heads.numpy().ravel())
    digits = [len(repr(float(v)).split("e")[0].replace("-", "").replace(".", "").lstrip("0")) for v in flat]
    assert max(digits) <= 9


def test_shortest_float32_encoding_round_trips_every_bit_pattern_sampled():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    vals = bits.view(np.float32)
    vals = vals[np.isfinite(vals)]
    extremes = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38, -3.4028235e38], dtype=np.float32)
    vals = np.concatenate([vals, extremes])
    encoded = json.loads(json.dumps(schema_mod.tolist(torch.from_numpy(vals))))
    back = torch.tensor(encoded, dtype=torch.float32).numpy()
    assert np.array_equal(back.view(np.uint32), vals.view(np.uint32))


def test_newer_schema_is_rejected_with_upgrade_hint(traces):
    d = traces["flashtrace"].to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match="newer than this ftlens.*upgrade ftlens"):
        Trace.from_dict(d)


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, None, True])
def test_unknown_schema_version_is_rejected(traces, version):
    d = traces["flashtrace"].to_dict()
    d["schema_version"] = version
    with pytest.raises(SchemaError, match="schema_version"):
        Trace.from_dict(d)


def test_other_json_is_not_taken_for_a_trace(traces):
    with pytest.raises(SchemaError, match="not an ftlens trace"):
        Trace.from_dict({"hello": 1})
    d = traces["flashtrace"].to_dict()
    d["format"] = "something.else"
    with pytest.raises(SchemaError, match="not an ftlens trace"):
        Trace.from_dict(d)


def test_inconsistent_content_is_rejected(traces):
    d = traces["flashtrace"].to_dict()
    d["roles"] = d["roles"][:-1]
    with pytest.raises(SchemaError, match="differ in length"):
        Trace.from_dict(d)
    d = traces["flashtrace"].to_dict()
    d["hops"][1]["heads"] = d["hops"][1]["heads"][:1]
    with pytest.raises(SchemaError, match="hop"):
        Trace.from_dict(d)
    d = traces["flashtrace"].to_dict()
    del d["tokens"]
    with pytest.raises(SchemaError, match="'tokens' is missing"):
        Trace.from_dict(d)


def test_truncated_file_is_refused_with_a_clear_message(traces, tmp_path):
    path = traces["flashtrace"].save(tmp_path / "t.json")
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(SchemaError, match="not valid JSON .*truncated"):
        Trace.load(path)
    gz = traces["flashtrace"].save(tmp_path / "t.json.gz")
    gz.write_bytes(gz.read_bytes()[:100])
    with pytest.raises(SchemaError, match="truncated or corrupt gzip"):
        Trace.load(gz)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("where", ["json.dumps", "os.replace", "os.fsync"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_save_keeps_the_old_file_and_leaves_no_temp(traces, tmp_path, monkeypatch, where, exc):
    old, new = traces["flashtrace"], traces["ifr-tokenwise"]
    path = old.save(tmp_path / "t.json")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise exc("simulated crash")

    module, name = where.split(".")
    monkeypatch.setattr({"json": json, "os": fileio_mod.os}[module], name, boom)
    with pytest.raises(exc):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    assert_same_trace(Trace.load(path), old)


def test_unsaveable_trace_leaves_the_old_file(traces, tmp_path):
    path = traces["flashtrace"].save(tmp_path / "t.json")
    before = path.read_bytes()
    bad = Trace.from_dict(traces["flashtrace"].to_dict())
    bad.scores[0] = float("nan")
    with pytest.raises(SchemaError, match="NaN"):
        bad.save(path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_file_gets_normal_permissions_not_private_temp_ones(traces, tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = traces["flashtrace"].save(tmp_path / "t.json")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o640)
    traces["flashtrace"].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_save_creates_missing_folders(traces, tmp_path):
    path = traces["flashtrace"].save(tmp_path / "a" / "b" / "t.json")
    assert Trace.load(path).tokens == traces["flashtrace"].tokens
