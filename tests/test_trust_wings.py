"""Issue 19: the wings (head studies, generated targets, the step graph, residual views) print no
empty, negative or silently re-targeted numbers.  Each test failed on the code before the fix.

1. a generated target is not split into an invented reasoning span, a raw-text prompt's generation
   stops at its first line break, and the explained text is printed (summary, CLI, page);
2. a study refuses, before tracing, a ranking measure some record lacks, an empty records file and
   a k larger than the model's head count (a ratio to a random baseline at or around zero is
   undefined: ``tests/test_study.py``);
4. smaller items: a reversed step-graph edge, ``compare_heads(tr, dla, 5)``, route names, the BOS of
   a raw-text prompt, record ids of bad lines, notebook cell ids, a light ``--help``, a bridge the
   user booted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ftlens
from ftlens.errors import SpanError, TraceError
from ftlens.generation import first_line_end, generate_ids
from ftlens.models import default_tokenizer
from ftlens.spans import build_sequence

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Where is the key? It is under the mat."


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


# ------------------------------------------------------------------ 1. generated targets
def test_first_line_end_stops_after_text_and_skips_leading_line_breaks(tok):
    ids = _ids(tok, " Green.\nQuestion: What")
    cut = first_line_end(tok, ids)
    assert tok.decode(ids[:cut]) == " Green."
    lead = _ids(tok, "\n\n Green.\nQuestion")  # blank lines before the answer do not end it
    assert tok.decode(lead[: first_line_end(tok, lead)]).strip() == "Green."
    assert first_line_end(tok, _ids(tok, " one line, no break")) is None


class _FakeGenerate:
    """Stands in for the HF model's ``generate``: the prompt followed by fixed ids, with the
    stopping criteria ftlens passed called on every prefix (as ``generate`` does)."""

    def __init__(self, new_ids: list[int]) -> None:
        self.new_ids, self.stopped_at = new_ids, None

    def __call__(self, ids, attention_mask=None, max_new_tokens=None, stopping_criteria=None, **kw):
        out = ids
        for j, t in enumerate(self.new_ids[:max_new_tokens]):
            out = torch.cat([out, torch.tensor([[t]])], dim=1)
            if stopping_criteria is not None and bool(stopping_criteria[0](out, None)[0]):
                self.stopped_at = j + 1
                break
        return out


def test_stop_at_line_cuts_a_run_on_generation_and_eos_keeps_it(tiny_llama, tok, monkeypatch):
    run_on = _ids(tok, " Green.\nQuestion: What is")
    fake = _FakeGenerate(run_on)
    monkeypatch.setattr(tiny_llama.original_model, "generate", fake)
    g = generate_ids(tiny_llama, PROMPT, max_new_tokens=len(run_on), stop_at="line")
    assert (g.text, g.stopped_on, g.stopped_on_eos) == (" Green.", "line", False)
    assert fake.stopped_at is not None and fake.stopped_at < len(run_on)  # generation itself stopped early
    g = generate_ids(tiny_llama, PROMPT, max_new_tokens=len(run_on), stop_at="eos")
    assert (g.text, g.stopped_on) == (" Green.\nQuestion: What is", "length")
    # auto: the tiny model's tokenizer has a chat template, so the chat-formatted prompt stops on EOS only
    g = generate_ids(tiny_llama, PROMPT, max_new_tokens=len(run_on))
    assert g.stopped_on == "length" and "Question" in g.text
    g = generate_ids(tiny_llama, PROMPT, max_new_tokens=len(run_on), chat_template=False)
    assert (g.text, g.stopped_on) == (" Green.", "line")  # raw text: auto means line
    with pytest.raises(TraceError, match="stop_at must be"):
        ftlens.trace(tiny_llama, PROMPT, " x", stop_at="sentence")


def test_a_generated_target_without_think_tags_is_all_output(tok):
    ids = _ids(tok, "Let me think. The mat is mentioned.\nThe key is under the mat.")
    given = build_sequence(tok, PROMPT, target_ids=ids)  # a given target: the documented last-line rule
    assert given.reasoning is not None
    seq = build_sequence(tok, PROMPT, target_ids=ids, generated=True)
    assert seq.reasoning is None
    assert "".join(seq.tokens[seq.output[0]:seq.output[1]]) == "Let me think. The mat is mentioned.\nThe key is under the mat."
    tagged = _ids(tok, "<think>The mat.</think> Under the mat.")  # tags still split a generated target
    seq = build_sequence(tok, PROMPT, target_ids=tagged, generated=True)
    assert seq.reasoning is not None and "".join(seq.tokens[seq.output[0]:seq.output[1]]) == " Under the mat."


def test_trace_of_a_generated_reply_explains_the_reply_and_says_how_it_ended(tiny_llama, tok, monkeypatch):
    from ftlens.generation import Generation

    ids = _ids(tok, " It is under the mat.\nAsk me more.")
    monkeypatch.setattr("ftlens.pipeline.generate_ids",
                        lambda *a, **kw: Generation(ids, tok.decode(ids), False, "length"))
    tr = ftlens.trace(tiny_llama, PROMPT, None)
    assert tr.reasoning is None and tr.span_text("output") == " It is under the mat.\nAsk me more."
    text = tr.summary(3)
    assert "output: ' It is under the mat.\\nAsk me more.'" in text
    assert "generation: max_new_tokens ran out: the reply may be cut off" in text


def test_summary_cli_and_page_print_the_explained_text(tiny_llama, tiny_cli, capsys, tmp_path):
    from ftlens.render import write_html

    target = "\n<think>The note says the mat.</think> Under the mat."
    tr = ftlens.trace(tiny_llama, PROMPT, target)
    text = tr.summary(3)
    assert "output: ' Under the mat.'" in text and "reasoning: 'The note says the mat.'" in text
    page = write_html(tr, tmp_path / "t.html").read_text()
    assert "Attributed output: <code> Under the mat.</code>" in page
    assert "Reasoning: <code>The note says the mat.</code>" in page
    rc, out, _ = run_cli(capsys, "trace", "--prompt", PROMPT, "--target", target, "--no-progress")
    assert rc == 0 and "output: ' Under the mat.'" in out and "reasoning: 'The note says the mat.'" in out


def test_a_long_reasoning_is_shown_by_its_ends_and_length(tiny_llama):
    steps = " ".join(f"Step {i} checks note {i}." for i in range(40))
    tr = ftlens.trace(tiny_llama, PROMPT, f"\n<think>{steps}</think> Under the mat.", hops=0)
    line = next(x for x in tr.summary(1).splitlines() if x.startswith("reasoning: "))
    assert line.startswith("reasoning: 'Step 0 checks") and line.endswith(f"({len(steps)} characters)")
    assert "checks note 39.'" in line


# ------------------------------------------------------------------ 2. study refusals, before tracing
FILLER = "The farmer carried the green basket near the market. "


def _recs(n: int, evidence: bool = True) -> list[dict]:
    out = []
    for i in range(n):
        needle = f"The code for box {i} is {4000 + 37 * i}."
        rec = {"id": f"r{i}", "prompt": FILLER + needle + "\nWhat is the code for box " + str(i) + "?",
               "target": f"The code is {4000 + 37 * i}."}
        if evidence:
            rec["evidence"] = needle
        out.append(rec)
    return out


@pytest.fixture
def no_trace(monkeypatch):
    """Fails the test if anything is traced."""
    def boom(*a, **kw):
        raise AssertionError("a record was traced")

    monkeypatch.setattr("ftlens.pipeline.capture", boom)


@pytest.mark.parametrize("recs, rank_by, match", [
    (_recs(2, evidence=False), "evidence", r"rank_by='evidence' needs an \"evidence\" field on every record, and "
                                           r"lines 1 \(id r0\), 2 \(id r1\) have none"),
    (_recs(1) + _recs(2, evidence=False)[1:], "evidence", r"line 2 \(id r1\) has none"),
    (_recs(2), "segment:foo", r"rank_by='segment:foo': lines 1 \(id r0\), 2 \(id r1\) have no segment 'foo' "
                              r"\(segments there: context, question\)"),
    (_recs(2), "heads", r"unknown rank_by 'heads'"),
], ids=["no-evidence", "some-without-evidence", "missing-segment", "unknown-measure"])
def test_study_refuses_a_ranking_measure_a_record_lacks_before_tracing(tiny_llama, no_trace, tmp_path, recs,
                                                                         rank_by, match):
    from ftlens.study import run_study

    with pytest.raises(SpanError, match=match):
        run_study(tiny_llama, recs, out=tmp_path / "s", rank_by=rank_by)
    assert not (tmp_path / "s").exists()


def test_study_refuses_dla_ranking_without_dla_and_k_above_the_head_count(tiny_llama, no_trace, tmp_path):
    from ftlens.study import run_study

    with pytest.raises(SpanError, match="rank_by='dla' ranks heads by direct logit attribution"):
        run_study(tiny_llama, _recs(2), rank_by="dla", dla=False)
    # the tiny model has 2 layers x 4 heads
    with pytest.raises(SpanError, match=r"k=9 is more heads than the model has \(2 layers x 4 heads = 8\)"):
        run_study(tiny_llama, _recs(2), k=9)
    with pytest.raises(SpanError, match=r"k=12 is more heads"):
        run_study(tiny_llama, _recs(2), k=3, ks=[3, 12])
    with pytest.raises(SpanError, match="extra head set 'mine' has 1 heads but k=3 are ablated"):
        run_study(tiny_llama, _recs(2), k=3, extra_sets={"mine": [(0, 1)]})


def test_study_refuses_an_empty_records_file(tiny_llama, no_trace, tmp_path):
    from ftlens.study import run_study

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(SpanError, match=r"records file '.*empty.jsonl' has no records"):
        run_study(tiny_llama, empty)
    with pytest.raises(SpanError, match="the records list has no records"):
        run_study(tiny_llama, [])


def test_cli_study_refuses_before_loading_the_model(tiny_cli, capsys, tmp_path):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _recs(2, evidence=False)))
    for extra in (["--rank-by", "evidence"], ["--rank-by", "segment:foo"]):
        rc, out, err = run_cli(capsys, "study", "run", data, "--out", tmp_path / "s", "--no-progress", *extra)
        assert rc == 1 and err.startswith("ftlens: error: rank_by=") and len(err.strip().splitlines()) == 1
        assert "top 3 heads" not in out and not tiny_cli  # no model was loaded
    (tmp_path / "e.jsonl").write_text("")
    rc, out, err = run_cli(capsys, "study", "run", tmp_path / "e.jsonl", "--out", tmp_path / "s", "--no-progress")
    assert rc == 1 and "has no records" in err and not tiny_cli
    rc, out, err = run_cli(capsys, "study", "run", data, "--out", tmp_path / "s", "--no-progress", "--k", "9")
    assert rc == 1 and "k=9 is more heads than the model has" in err and not (tmp_path / "s" / "examples").exists()


def test_cli_study_prints_each_head_set_with_its_difference_and_ratio(tiny_cli, capsys, tmp_path):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _recs(3)))
    rc, out, err = run_cli(capsys, "study", "run", data, "--out", tmp_path / "s", "--no-progress", "--k", "2",
                           "--draws", "2", "--rank-by", "evidence")
    assert rc == 0, err
    lines = [x for x in out.splitlines() if x.startswith(("study top-2", "dla top-2"))]
    assert len(lines) == 4  # study and dla, zero and mean
    for x in lines:
        assert "minus random " in x and "ratio to random " in x
        ratio = x.split("ratio to random ")[1]
        assert ratio.startswith("undefined: ") or ratio.split("x")[0].replace(".", "", 1).isdigit()


def test_study_refuses_to_ablate_a_ranking_no_example_has(tiny_llama, tmp_path):
    """Examples made elsewhere (a merge of folders) can lack the measure: the causal pass refuses."""
    from ftlens.study.run import head_sets_of as _head_sets

    ex = {"key": "a", "line": 1, "n_heads": 2, "heads": {"prompt": [1.0, 0.5, 0.2, 0.1], "evidence": None,
                                                         "dla": None}}
    settings = {"k": 2, "ks": [2], "rank_by": "evidence"}
    with pytest.raises(SpanError, match="no example has the measure 'evidence'"):
        _head_sets([ex], settings)
    zero = {"key": "a", "line": 1, "n_heads": 2, "heads": {"prompt": [0.0] * 4, "evidence": None, "dla": None}}
    with pytest.raises(SpanError, match="every head's mean 'prompt' attribution is zero"):
        _head_sets([zero], {**settings, "rank_by": "prompt"})


# ------------------------------------------------------------------ 4. smaller items
def test_a_reversed_step_graph_edge_is_refused_naming_the_direction(tiny_llama):
    from ftlens.stepgraph import step_graph

    g = step_graph(tiny_llama, PROMPT, "\n<think>The note says mat. It is there.</think> Under the mat.",
                   chat_template=False)
    with pytest.raises(TraceError, match=r"there is no edge S0 <- A: A comes after S0.*top_edge_heads\('A', 'S0'\)"):
        g.top_edge_heads("S0", "A")
    with pytest.raises(TraceError, match=r"no edge S0 <- S1: S1 comes after S0.*edge\('S1', 'S0'\)"):
        g.edge("S0", "S1")
    assert g.edge("S1", "S0") >= 0 and g.top_edge_heads("A", "S0", k=1)
    r = g.routes(1)[0]
    assert r.names == tuple(g.nodes[j].name for j in r.nodes) and r.names[-1] == "A"
    assert repr(r).startswith(f"Route({' <- '.join(r.names)}, mass=") and "<- A" in str(r)


def test_compare_heads_takes_k_as_the_readme_writes_it(tiny_llama):
    from ftlens import residual

    tr = ftlens.trace(tiny_llama, PROMPT, " Under the mat.")
    dla = residual.direct_logit_attribution(tiny_llama, tr)
    assert residual.compare_heads(tr, dla, 5).k == 5 == residual.compare_heads(tr, dla, k=5).k
    with pytest.raises(TraceError, match="k must be an integer >= 1"):
        residual.compare_heads(tr, dla, 0)


def test_bos_of_a_raw_text_prompt_is_called_a_special_token_not_chat_template(tiny_llama, tmp_path):
    from ftlens.render import write_html

    tr = ftlens.trace(tiny_llama, PROMPT, " Under the mat.", chat_template=False)
    assert tr.roles[0] == "template" and tr.template_label == "special tokens (BOS)"
    assert "chat template" not in tr.summary(3) and "special tokens (BOS) " in tr.summary(3)
    assert "chat template" not in write_html(tr, tmp_path / "t.html").read_text().split("</style>")[-1]
    chat = ftlens.trace(tiny_llama, PROMPT, " Under the mat.")
    assert "chat template " in chat.summary(3)
    assert ftlens.Trace.load(tr.save(tmp_path / "t.json")).template_label == "special tokens (BOS)"


def test_index_rows_keep_the_id_of_bad_and_failed_records(tiny_cli, capsys, tmp_path):
    lines = [{"id": "good", "prompt": PROMPT, "target": " Under the mat."},
             {"id": "badspan", "prompt": PROMPT, "target": " x", "output": "re:("},
             {"id": "badev", "prompt": PROMPT, "target": " x", "evidence": "not in the prompt"}]
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rc, _, _ = run_cli(capsys, "batch", data, "--out", tmp_path / "b", "--no-progress")
    rows = [json.loads(x) for x in (tmp_path / "b" / "index.jsonl").read_text().splitlines()]
    assert rc == 1 and [r["id"] for r in rows] == ["good", "badspan", "badev"] and rows[1]["status"] == "bad-line"
    rc, _, _ = run_cli(capsys, "study", "run", data, "--out", tmp_path / "s", "--no-progress", "--k", "2",
                       "--draws", "1")
    rows = [json.loads(x) for x in (tmp_path / "s" / "index.jsonl").read_text().splitlines()]
    assert rc == 1 and [r["id"] for r in rows] == ["good", "badspan", "badev"]
    assert [r["status"] for r in rows] == ["ok", "bad-line", "bad-line"] and "evidence" in rows[2]["error"]


def test_every_notebook_cell_has_an_id_and_validates_without_warnings():
    import warnings

    nbformat = pytest.importorskip("nbformat")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nb = nbformat.read(path, as_version=4)
            nbformat.validate(nb)
        ids = [c.get("id") for c in nb.cells]
        assert all(ids) and len(set(ids)) == len(ids), path.name


def test_help_loads_no_torch():
    code = ("import sys\nfrom ftlens.cli import main\n"
            "for argv in (['study', '--help'], ['--help'], ['trace', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_a_bridge_the_user_booted_traces_like_load_model(default_model):
    from transformer_lens.model_bridge import TransformerBridge

    from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET
    from ftlens.models.bundled import default_model_dir

    mine = TransformerBridge.boot_transformers(str(default_model_dir()), device="cpu", dtype=torch.float32)
    a = ftlens.trace(mine, NEEDLE_PROMPT, NEEDLE_TARGET)
    b = ftlens.trace(default_model, NEEDLE_PROMPT, NEEDLE_TARGET)
    assert torch.equal(a.scores, b.scores) and a.top_heads(5) == b.top_heads(5)
