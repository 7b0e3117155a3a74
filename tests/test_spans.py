"""Span selection, roles and tokenisation in context."""

from __future__ import annotations

import re

import pytest

from ftlens import Select, SpanError
from ftlens.models import default_tokenizer
from ftlens.spans import auto_spans, build_sequence

PROMPT = "Where is the key? It is under the mat."


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _text(seq, span):
    return "".join(seq.tokens[span[0] : span[1]])


def test_auto_uses_think_tags(tok):
    seq = build_sequence(tok, PROMPT, "<think>The text says mat.</think>\nUnder the mat.")
    assert _text(seq, seq.reasoning).strip() == "The text says mat."
    assert _text(seq, seq.output).strip() == "Under the mat."
    assert "<think>" not in _text(seq, seq.reasoning)


def test_auto_last_line_is_output_without_tags(tok):
    seq = build_sequence(tok, PROMPT, "First I read it.\nThen I check.\nUnder the mat.")
    assert _text(seq, seq.output).strip() == "Under the mat."
    assert _text(seq, seq.reasoning).strip() == "First I read it.\nThen I check."


def test_auto_last_sentence_on_one_line(tok):
    r, o = auto_spans("I read the text. So the answer is the mat.")
    assert o is not None and "So the answer is the mat." == "I read the text. So the answer is the mat."[o[0] : o[1]]
    assert r is not None


def test_auto_single_sentence_is_all_output(tok):
    seq = build_sequence(tok, PROMPT, "Under the mat.")
    assert seq.reasoning is None
    assert _text(seq, seq.output) == "Under the mat."


def test_roles_cover_template_prompt_reasoning_output(tok):
    seq = build_sequence(tok, PROMPT, "<think>It says mat.</think>\nUnder the mat.")
    assert set(seq.roles) == {"template", "prompt", "reasoning", "output", "other"}
    prompt_text = "".join(t for t, r in zip(seq.tokens, seq.roles) if r == "prompt")
    assert prompt_text == PROMPT
    assert seq.roles[: seq.prompt_len].count("prompt") == seq.user_prompt[1] - seq.user_prompt[0]
    assert all(r in ("template", "prompt") for r in seq.roles[: seq.prompt_len])


def test_chat_template_can_be_switched_off(tok):
    on = build_sequence(tok, PROMPT, " Under the mat.")
    off = build_sequence(tok, PROMPT, " Under the mat.", chat_template=False)
    assert off.prompt_len < on.prompt_len
    assert "template" in on.roles[: on.prompt_len]


def test_target_is_tokenised_in_context(tok):
    target = " Under the mat."
    seq = build_sequence(tok, PROMPT, target, chat_template=False)
    joint = tok(PROMPT + target).input_ids
    assert seq.ids.tolist() == joint


def test_select_by_substring_regex_and_token_range(tok):
    target = "Reasoning here. The key is under the mat."
    a = build_sequence(tok, PROMPT, target, output="under the mat", reasoning="Reasoning here.")
    b = build_sequence(tok, PROMPT, target, output=re.compile(r"under \w+ mat"), reasoning=None)
    assert a.output == b.output
    assert _text(a, a.output).strip() == "under the mat"
    m = a.n - a.prompt_len
    c = build_sequence(tok, PROMPT, target, output=(m - 2, m), reasoning=(0, 2))
    assert c.output == (a.n - 2, a.n) and c.reasoning == (a.prompt_len, a.prompt_len + 2)


def test_ambiguous_span_says_so_and_occurrence_picks(tok):
    target = "The mat. I said the mat."
    with pytest.raises(SpanError, match="occurs 2 times.*occurrence"):
        build_sequence(tok, PROMPT, target, output="mat")
    seq = build_sequence(tok, PROMPT, target, output=Select("mat", occurrence=1), reasoning=None)
    assert seq.output[0] > seq.prompt_len + 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"output": "sofa"}, "not found"),
        ({"output": "   "}, "empty"),
        ({"output": (3, 3)}, "empty or out of range"),
        ({"output": (0, 999)}, "out of range"),
        ({"output": "Reasoning", "reasoning": "mat"}, "must come after the reasoning"),
        ({"output": Select(regex="(")}, "does not compile"),
    ],
)
def test_bad_span_selection_raises_span_error(tok, kwargs, match):
    target = "Reasoning here. The key is under the mat."
    with pytest.raises(SpanError, match=match):
        build_sequence(tok, PROMPT, target, **kwargs)


def test_empty_prompt_and_empty_target_are_refused(tok):
    with pytest.raises(SpanError, match="prompt is empty"):
        build_sequence(tok, "  \n", "x")
    with pytest.raises(SpanError, match="target is empty"):
        build_sequence(tok, PROMPT, "")


class _LossyDecode:
    """The real tokenizer, except that decoding collapses runs of spaces (like some
    sentencepiece tokenizers do): text with double spaces no longer round-trips."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **k):
        return self._tok(*a, **k)

    def decode(self, ids, **k):
        return re.sub(" +", " ", self._tok.decode(ids, **k))


def test_target_that_does_not_round_trip_is_refused(tok):
    with pytest.raises(SpanError, match="round-trip"):
        build_sequence(_LossyDecode(tok), PROMPT, " two  spaces", chat_template=False)
    with pytest.raises(SpanError, match="cannot be tokenised"):
        build_sequence(tok, PROMPT, " lone surrogate \udcff", chat_template=False)


def test_boundary_merge_is_refused(tok):
    # "ma" + "t?" tokenise as " mat" "?" in context: the prompt's last token would change
    with pytest.raises(SpanError, match="merge"):
        build_sequence(tok, "Where is the ma", "t?", chat_template=False)
