"""Issue 11, engine side: thresholds that blank a layer, the end of the recursion, hops on
one-pass methods, and hand-edited trace files that make no sense."""

from __future__ import annotations

import json

import pytest

import ftlens
from ftlens.errors import SchemaError, TraceError

from .conftest import PROMPT, TARGET

SPANS = dict(
    output=ftlens.Select(text="It is 7351."),
    reasoning=ftlens.Select(text="Let me recall the code from the text. The code was given."),
    chat_template=False,
)


def test_threshold_that_blanks_a_layer_is_refused_naming_it(tiny_llama):
    with pytest.raises(TraceError, match=r"threshold 0\.5 removes every head share of \d+ layer\(s\) \(first: layer \d"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, threshold=0.5, **SPANS)
    with pytest.raises(TraceError, match=r"thresholds below [0-9.e-]+ keep a share"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, method="ifr-tokenwise", threshold=0.5, **SPANS)


def test_threshold_below_every_layers_largest_share_keeps_mass(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, threshold=1e-3, **SPANS)
    assert float(tr.scores.sum()) > 0.1
    for h in tr.hops:
        assert float(h.heads.flatten(1).amax(1).min()) > 0  # every layer keeps a head share


def test_recursion_stops_once_the_pending_mass_is_negligible(tiny_llama):
    from ftlens.options import PENDING_TOL

    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=400, **SPANS)
    ran = tr.params["hops_run"]
    assert len(tr.hops) - 1 == ran < 400
    assert tr.unresolved <= PENDING_TOL < tr.hops[-2].thinking_ratio
    assert f"hops={ran})" in repr(tr)


def test_absurd_hops_are_refused_before_the_forward_pass(tiny_llama):
    with pytest.raises(TraceError, match=r"hops must be an integer in \[0, 1000\]"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, hops=10**9, **SPANS)


@pytest.mark.parametrize("method", ["ifr-span", "ifr-tokenwise"])
def test_hops_on_a_one_pass_method_are_refused(tiny_llama, method):
    with pytest.raises(TraceError, match=r"hops=3 applies to method 'flashtrace' only"):
        ftlens.trace(tiny_llama, PROMPT, TARGET, method=method, hops=3, **SPANS)
    assert ftlens.trace(tiny_llama, PROMPT, TARGET, method=method, **SPANS).params["hops"] == 0


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=2, **SPANS)
    path = tmp_path_factory.mktemp("t") / "t.json"
    tr.save(path)
    return json.loads(path.read_text())


def _prompt_pos(d) -> int:
    return d["roles"].index("prompt")


EDITS = {
    "unknown method": lambda d: d.update(method="banana"),
    "negative": lambda d: d["scores"].__setitem__(_prompt_pos(d), -0.5),
    "output_mass": lambda d: d.update(output_mass=7),
    "contradicts the output/reasoning spans": lambda d: d["roles"].__setitem__(_prompt_pos(d), "output"),
    "hops stored but the parameters say": lambda d: d["params"].update(hops_run=5),
    "mass is not conserved": lambda d: d.update(unresolved=0.5),
    "do not sum to 1": lambda d: d["hops"][0]["residual"].__setitem__(0, 0.0),
}


@pytest.mark.parametrize("what", sorted(EDITS))
def test_hand_edited_trace_that_makes_no_sense_is_refused(saved, what, tmp_path):
    d = json.loads(json.dumps(saved))
    ftlens.Trace.from_dict(json.loads(json.dumps(d)))  # the untouched file loads
    EDITS[what](d)
    with pytest.raises(SchemaError, match=what.replace("(", r"\(").replace(")", r"\)")):
        ftlens.Trace.from_dict(d)


def test_top_ranks_a_multibyte_character_once_with_its_pieces_mass(tiny_llama):
    """' 東京です' is split into byte pieces; top() shows each character once, at its first
    piece, with the summed score of its pieces (no '' continuation entries)."""
    prompt = "Where is the capital? 東京です. Answer now."
    tr = ftlens.trace(tiny_llama, prompt, "It is Tokyo.", chat_template=False, hops=0)
    pos = tr.prompt_positions
    assert any(tr.tokens[i] == "" for i in pos)  # the tokenizer does split a character here
    top = tr.top(len(pos))
    assert all(t.token != "" for t in top)
    assert sum(t.score for t in top) == pytest.approx(float(tr.scores[pos].sum()), rel=1e-6)
    for t in top:  # a character's entry holds its first piece plus the continuations after it
        j, extra = t.pos + 1, 0.0
        while j < len(tr.tokens) and tr.tokens[j] == "" and j in pos:
            extra += float(tr.scores[j])
            j += 1
        assert t.score == pytest.approx(float(tr.scores[t.pos]) + extra, rel=1e-6, abs=1e-9)
