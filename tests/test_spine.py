"""Issue 20, the wings on the spine: one options value, one job runner, results apart from builders
and views.  Behaviour identity with the code before is ``tests/test_identity.py``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import ftlens
from ftlens.errors import SchemaError, SpanError, TraceError
from ftlens.options import TraceOptions

from .conftest import PROMPT, TARGET

CHAIN = "\n<think>The note says the mat. It is there.</think> Under the mat."


# ------------------------------------------------------------------ one options value
def test_every_flag_parses_back_to_the_options_defaults():
    from ftlens.cli import build_parser

    for argv in (["trace", "--prompt", "p"], ["batch", "x.jsonl", "--out", "d"], ["study", "run", "x.jsonl", "--out", "d"]):
        args = build_parser().parse_args(argv)
        assert TraceOptions.from_args(args) == TraceOptions()


def test_flags_set_every_option_they_name():
    from ftlens.cli import build_parser

    args = build_parser().parse_args(["trace", "--prompt", "p", "--method", "flashtrace", "--hops", "0", "--explain",
                                      "target", "--stop-rows", "skip", "--threshold", "0.01", "--max-new-tokens", "9",
                                      "--stop-at", "eos", "--no-chat-template", "--handoff", "target"])
    assert TraceOptions.from_args(args) == TraceOptions(method="flashtrace", hops=0, explain="target", stop_rows="skip",
                                                        threshold=0.01, max_new_tokens=9, stop_at="eos",
                                                        chat_template=False, handoff="target")
    args = build_parser().parse_args(["trace", "--prompt", "p", "--method", "ifr-span"])
    assert TraceOptions.from_args(args).method == "ifr-span"
    flags = {f.metadata["cli"]["flag"] for f in dataclasses.fields(TraceOptions) if f.metadata["cli"]}
    assert flags == {"--method", "--hops", "--explain", "--stop-rows", "--threshold", "--max-new-tokens", "--stop-at",
                     "--no-chat-template", "--handoff"}


def test_options_are_checked_once_when_made_and_frozen():
    with pytest.raises(TraceError, match="hops=2 applies to method 'flashtrace' only"):
        TraceOptions(method="ifr-span", hops=2)
    with pytest.raises(TraceError, match="max_new_tokens must be an integer >= 1"):
        TraceOptions(max_new_tokens=0)
    o = TraceOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.hops = 3  # type: ignore[misc]
    with pytest.raises(TraceError, match="stop_rows must be"):
        o.replace(stop_rows="drop")


def test_the_hops_rule_lives_in_one_place():
    assert TraceOptions().n_hops == 1 and TraceOptions(hops=0).n_hops == 0 and TraceOptions(hops=4).n_hops == 4
    assert TraceOptions(method="ifr-tokenwise").n_hops == 0


def test_requests_omit_options_at_their_default_only_when_added_later():
    base = TraceOptions().request()
    assert base == {"method": "flashtrace", "hops": 1, "explain": "output", "threshold": None, "chat_template": None}
    assert TraceOptions(stop_rows="skip").request() == {**base, "stop_rows": "skip"}
    assert TraceOptions(max_new_tokens=7).request(generated=True) == {**base, "max_new_tokens": 7, "stop_at": "auto"}


def test_trace_params_come_from_the_options(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=2, stop_rows="skip")
    want = TraceOptions(hops=2, stop_rows="skip").params()
    assert {k: tr.params[k] for k in want} == want


# ------------------------------------------------------------------ prepare / attribute, rows, scores_after
def test_attribute_reruns_options_on_one_capture_without_a_forward_pass(tiny_llama, monkeypatch):
    from ftlens.pipeline import attribute, prepare

    cap = prepare(tiny_llama, PROMPT, CHAIN)
    calls = []
    real = type(tiny_llama).forward
    monkeypatch.setattr(type(tiny_llama), "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for kw in ({}, {"explain": "target"}, {"stop_rows": "skip", "hops": 2}, {"method": "ifr-tokenwise"},
               {"method": "ifr-span", "threshold": 0.01}):
        got = attribute(cap, **kw)
        monkeypatch.undo()
        want = ftlens.trace(tiny_llama, PROMPT, CHAIN, **kw)
        monkeypatch.setattr(type(tiny_llama), "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
        assert torch.equal(got.scores, want.scores) and got.params == want.params, kw
    assert calls == []


def test_scores_after_k_hops_are_the_trace_run_with_k_hops(tiny_llama):
    long = ftlens.trace(tiny_llama, PROMPT, CHAIN, hops=3)
    for k in range(4):
        short = ftlens.trace(tiny_llama, PROMPT, CHAIN, hops=k)
        assert torch.equal(long.scores_after(k), short.scores)
    assert torch.equal(long.scores_after(3), long.scores)
    with pytest.raises(TraceError, match="hop 4 is out of range"):
        long.scores_after(4)


def test_traced_rows_leave_out_skipped_rows_unless_none_would_remain():
    from ftlens.recursion import traced_rows, uniform_weights

    skip = torch.tensor([False, True, False, True, True])
    assert traced_rows(0, 5, skip) == [0, 2] and traced_rows(3, 5, skip) == [3, 4] and traced_rows(1, 4) == [1, 2, 3]
    w = uniform_weights(1, 5, skip, 1, 4)  # rows are positions 1..4
    assert w.tolist() == [0.0, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------ the job runner
class _Store:
    """A store of text results: ``<key>.txt`` holds ``json({"request": ..., "value": ...})``."""

    noun = "results"
    clash_hint = "pass resume=True"

    def __init__(self, out: Path, fail: set[str] = frozenset(), version: int = 1):
        self.out, self.fail, self.version, self.made = out, fail, version, []

    def path(self, key):
        return self.out / f"{key}.txt"

    def request(self, r):
        return {"prompt": r.prompt, "version": self.version}

    def load(self, path):
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        return d["value"], d.get("request"), [len(d["value"])]

    def make(self, r):
        if r.key in self.fail:
            raise SpanError(f"cannot make {r.key}")
        self.made.append(r.key)
        return r.prompt.upper(), [len(r.prompt)]

    def save(self, path, value, request):
        path.write_text(json.dumps({"request": request, "value": value}))

    def keep(self, value):
        return value

    def index_row(self, o):
        return {"line": o.line, "id": o.id, "status": o.status, "error": o.error, "stale": o.stale or None}


def _recs(tmp_path, lines):
    from ftlens.jsonl import read_records

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" if isinstance(x, dict) else x + "\n" for x in lines))
    return read_records(src)


def test_job_runner_resumes_keeps_current_results_and_remakes_stale_ones(tmp_path):
    from ftlens.jobs import run_jobs

    recs, bad = _recs(tmp_path, [{"id": "a", "prompt": "x"}, "not json", {"id": "b", "prompt": "y"}])
    store = _Store(tmp_path / "o")
    out = run_jobs(recs, bad, store.out, store)
    assert [o.status for o in out] == ["ok", "bad-line", "ok"] and store.made == ["a", "b"]
    rows = [json.loads(x) for x in (store.out / "index.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "bad-line", "ok"]
    with pytest.raises(SpanError, match="already holds results for 2 of these records .e.g. a.txt.; pass resume=True"):
        run_jobs(recs, bad, store.out, _Store(store.out))
    again = _Store(store.out)
    out = run_jobs(recs, bad, store.out, again, resume=True)
    assert again.made == [] and [o.skipped for o in out if o.status == "ok"] == [True, True]
    newer = _Store(store.out, version=2)
    out = run_jobs(recs, bad, store.out, newer, resume=True)
    assert newer.made == ["a", "b"] and out[0].stale == ["version"]


def test_job_runner_reports_a_failed_record_and_runs_the_rest(tmp_path):
    from ftlens.jobs import run_jobs

    recs, bad = _recs(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    store = _Store(tmp_path / "o", fail={"a"})
    out = run_jobs(recs, bad, store.out, store)
    assert [(o.status, o.error) for o in out] == [("failed", "cannot make a"), ("ok", None)]
    assert not store.path("a").exists() and store.path("b").exists()


def test_job_runner_writes_the_index_when_interrupted(tmp_path):
    from ftlens.jobs import run_jobs

    recs, bad = _recs(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    store = _Store(tmp_path / "o")
    real = store.make

    def stop(r):
        if r.key == "b":
            raise KeyboardInterrupt
        return real(r)

    store.make = stop
    with pytest.raises(KeyboardInterrupt):
        run_jobs(recs, bad, store.out, store)
    rows = [json.loads(x) for x in (store.out / "index.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "pending"]


def test_batch_and_study_run_on_the_one_runner():
    import inspect

    import ftlens.batch
    import ftlens.study.run

    for mod in (ftlens.batch, ftlens.study.run):
        src = inspect.getsource(mod)
        assert "run_jobs(" in src and "atomic_write_text(folder / index_name" not in src


# ------------------------------------------------------------------ the step graph result: files
@pytest.fixture(scope="module")
def graph(tiny_llama):
    from ftlens.stepgraph import step_graph

    return step_graph(tiny_llama, PROMPT, CHAIN)


@pytest.mark.parametrize("name", ["g.json", "g.json.gz"])
def test_a_step_graph_round_trips_through_its_file_exactly(graph, tmp_path, name):
    from ftlens.stepgraph import StepGraph

    back = StepGraph.load(graph.save(tmp_path / name))
    for f in dataclasses.fields(graph):
        a, b = getattr(graph, f.name), getattr(back, f.name)
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f.name
        elif f.name in ("output", "reasoning"):
            assert tuple(a) == tuple(b)
        else:
            assert a == b, f.name
    assert back.summary() == graph.summary() and back.routes(5) == graph.routes(5)


def test_step_graph_and_trace_files_refuse_each_other_by_name(graph, tiny_llama, tmp_path):
    from ftlens.stepgraph import StepGraph

    g = graph.save(tmp_path / "g.json")
    t = ftlens.trace(tiny_llama, PROMPT, TARGET).save(tmp_path / "t.json")
    with pytest.raises(SchemaError, match=r"this file is an ftlens step graph, not an ftlens trace; load it with "
                                          r"ftlens.stepgraph.StepGraph.load"):
        ftlens.Trace.load(g)
    with pytest.raises(SchemaError, match=r"this file is an ftlens trace, not an ftlens step graph; load it with "
                                          r"ftlens.Trace.load"):
        StepGraph.load(t)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(schema_version=2), "step graph schema_version 2 is newer than this ftlens understands"),
    (lambda d: d["absorbed"].__setitem__(0, d["absorbed"][0] + 0.5), "mass is not conserved"),
    (lambda d: d["edges"][0].__setitem__(0, d["edges"][0][0] + 0.5), "an edge row does not sum to 1"),
    (lambda d: d["nodes"].pop(0), "nodes do not cover the positions in order"),
    (lambda d: d.pop("edges"), "field 'edges' is missing"),
    (lambda d: d["traced"].pop(0), "traced rows are not the steps and the answer"),
], ids=["newer", "mass", "edge-row", "nodes", "missing", "traced"])
def test_a_corrupt_step_graph_file_is_refused_with_the_reason(graph, edit, match):
    from ftlens.stepgraph import StepGraph

    d = json.loads(json.dumps(graph.to_dict()))
    edit(d)
    with pytest.raises(SchemaError, match=match):
        StepGraph.from_dict(d)


# ------------------------------------------------------------------ the option added after the refactor: handoff
@pytest.mark.parametrize("explain, stop_rows", [("output", "keep"), ("target", "skip")])
def test_handing_off_every_target_token_matches_the_bruteforce_reference(tiny_llama, explain, stop_rows):
    """handoff="target": each hop re-traces the mass on reasoning *and* answer tokens (the reference
    package's recursion), against the explicit-loop reference; mass is conserved with no output
    mass, and it differs from the default hand-off."""
    from . import bruteforce as bf

    tr = ftlens.trace(tiny_llama, PROMPT, CHAIN, hops=2, explain=explain, stop_rows=stop_rows, handoff="target")
    skip = frozenset(i for i, t in enumerate(tr.ids) if tiny_llama.tokenizer.decode([t]).strip() in ("", ",", "."))
    T = bf.cache_tensors(tiny_llama, torch.tensor(tr.ids))
    ref, contribs, ratios, out_mass = bf.flashtrace(T, tr.output, tr.reasoning, hops=2, explain=explain,
                                                    skip=skip if stop_rows == "skip" else frozenset(), handoff="target")
    for hop, c in zip(tr.hops, contribs):
        torch.testing.assert_close(hop.scores.double(), c, atol=1e-5, rtol=0)
    assert tr.thinking_ratios == pytest.approx(ratios, abs=1e-5) and tr.output_mass == out_mass == 0.0
    torch.testing.assert_close(tr.scores.double(), ref, atol=1e-5, rtol=0)
    assert float(tr.scores.sum()) + tr.unresolved == pytest.approx(1.0, abs=1e-5)
    default = ftlens.trace(tiny_llama, PROMPT, CHAIN, hops=2, explain=explain, stop_rows=stop_rows)
    assert float((default.scores - tr.scores).abs().max()) > 1e-4
    assert tr.params["handoff"] == "target" and TraceOptions(handoff="target").request()["handoff"] == "target"


def test_handoff_reaches_the_command_line_and_the_batch_request(tiny_cli, capsys, tmp_path):
    from .conftest import run_cli

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": PROMPT, "target": CHAIN}) + "\n")
    rc, out, err = run_cli(capsys, "batch", src, "--out", tmp_path / "b", "--handoff", "target", "--no-progress")
    assert rc == 0, err
    tr = ftlens.Trace.load(tmp_path / "b" / "a.json")
    assert tr.params["handoff"] == "target" and tr.params["request"]["handoff"] == "target"
    rc, out, err = run_cli(capsys, "batch", src, "--out", tmp_path / "b", "--resume", "--no-progress")
    assert rc == 0 and "different handoff: 1" in out  # the default hand-off re-traces it
    rc, out, err = run_cli(capsys, "trace", "--prompt", PROMPT, "--target", CHAIN, "--handoff", "answer")
    assert rc == 2 and "invalid choice: 'answer'" in err


# ------------------------------------------------------------------ found in review
def test_the_command_runs_as_a_module():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ftlens.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "commands: trace" in r.stdout


def test_a_batch_keeps_what_its_index_shows_not_every_trace(tiny_llama, tmp_path):
    from ftlens.batch import run_batch

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "prompt": PROMPT, "target": TARGET}) + "\n" for i in range(2)))
    out = run_batch(src, tmp_path / "b", lambda r: ftlens.trace(tiny_llama, r.prompt, r.target),
                    request_fn=lambda r: {"x": 1}, progress=False)
    assert all(set(o.result) == {"positions", "output", "top"} for o in out)


def test_attribute_runs_with_the_capture_options_and_refuses_to_change_them(tiny_llama):
    from ftlens.pipeline import attribute, prepare

    cap = prepare(tiny_llama, PROMPT, CHAIN, chat_template=False, hops=2)
    tr = attribute(cap)
    want = ftlens.trace(tiny_llama, PROMPT, CHAIN, chat_template=False, hops=2)
    assert tr.params == want.params and torch.equal(tr.scores, want.scores)
    assert attribute(cap, explain="target").params["chat_template"] is False
    with pytest.raises(TraceError, match=r"chat_template cannot change after the capture \(it was prepared with "
                                         r"chat_template=False\); pass them to prepare\(\) instead"):
        attribute(cap, chat_template=None)
    with pytest.raises(TraceError, match="completeness_tol cannot change after the capture"):
        attribute(cap, TraceOptions(chat_template=False, completeness_tol=0.5))


def test_options_a_step_graph_or_one_pass_method_would_ignore_are_refused(tiny_llama):
    from ftlens.stepgraph import step_graph

    with pytest.raises(TypeError, match="unexpected keyword argument 'explain'"):
        step_graph(tiny_llama, PROMPT, CHAIN, explain="target")
    with pytest.raises(TraceError, match="handoff='target' applies to method 'flashtrace' only"):
        ftlens.trace(tiny_llama, PROMPT, CHAIN, method="ifr-span", handoff="target")


def test_the_trace_file_keeps_its_params_order(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET)
    assert list(tr.params)[:12] == ["hops", "hops_run", "threshold", "chat_template", "rows", "explain", "stop_rows",
                                    "completeness_tol", "family", "generated", "stopped_on_eos", "chat_formatted"]
