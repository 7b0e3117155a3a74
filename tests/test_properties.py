"""Property-based tests: random input either works or raises a documented ftlens error.

Span selection (random prompts, targets, substrings, regexes and token ranges) and
trace files (random bytes, random edits of a valid trace) must never end in an
internal traceback (IndexError, KeyError, TypeError, ...): only success or a
subclass of :class:`ftlens.FtlensError`.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ftlens
from ftlens.errors import FtlensError, SchemaError
from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET
from ftlens.spans import Select, build_sequence
from ftlens.result import Trace

from .conftest import PROMPT, TARGET

#: more examples for a deep local run: FTLENS_HYPOTHESIS_EXAMPLES=5000 pytest tests/test_properties.py
SETTINGS = settings(max_examples=int(os.environ.get("FTLENS_HYPOTHESIS_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer():
    from ftlens.models import default_tokenizer

    return default_tokenizer()


# text that exercises tokenizer corners: words, digits, punctuation, whitespace runs,
# unicode, chat-template markers and think tags
_PIECES = st.sampled_from(
    [" the", " code", " 7351", ".", "\n", "  ", "\t", "é", "世界", "🙂", "<think>", "</think>",
     "<|im_end|>", "<|im_start|>", "\u200b", "\x00", "Answer:", " 42", "?"]
)
_TEXT = st.one_of(st.text(max_size=40), st.lists(_PIECES | st.text(max_size=4), max_size=12).map("".join))


def _span(target_text: str):
    """A random span argument: substring of the target, random text, regex, range, auto, None."""
    n = len(target_text)
    return st.one_of(
        st.just("auto"),
        st.none(),
        _TEXT,
        st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda ab: target_text[ab[0]: ab[1]]),
        st.builds(lambda ab, k: Select(text=target_text[ab[0]: ab[1]], occurrence=k),
                  st.tuples(st.integers(0, n), st.integers(0, n)), st.none() | st.integers(-3, 3)),
        st.builds(lambda r, k: Select(regex=r, occurrence=k),
                  st.sampled_from(["\\d+", "[a-z]+", "(", "\\s", ".", "", "\\b", "x*", "[", "code"]) | _TEXT,
                  st.none() | st.integers(-2, 2)),
        st.tuples(st.integers(-3, 40), st.integers(-3, 40)),
        st.builds(lambda a, b: slice(a, b), st.integers(-3, 40) | st.none(), st.integers(-3, 40) | st.none()),
        st.builds(lambda a, b: Select(tokens=(a, b)), st.integers(-3, 40), st.integers(-3, 40)),
    )


_PROMPTS = st.sampled_from([PROMPT, NEEDLE_PROMPT, "What is the code?"])
_TARGETS = st.sampled_from([TARGET, NEEDLE_TARGET, " It is 7351.", "\nOk. Done", " 5 5 5"])


@st.composite
def _sequence_args(draw, realistic: bool):
    prompt = draw(_PROMPTS if realistic else st.one_of(_PROMPTS, _TEXT))
    target = draw(_TARGETS if realistic else st.one_of(_TARGETS, _TEXT))
    n = len(target)
    substring = st.integers(0, max(0, n - 1)).flatmap(lambda a: st.integers(a + 1, max(a + 1, n)).map(lambda b: target[a:b]))
    # half the draws pick the likeliest-to-work choices, so many sequences get built
    output = draw(st.one_of(substring, _span(target)))
    reasoning = draw(st.one_of(st.sampled_from(["auto", None]), _span(target)))
    return prompt, target, output, reasoning, draw(st.sampled_from([None, False]))


def _check_build(tokenizer, prompt, target, output, reasoning, chat) -> bool:
    try:
        seq = build_sequence(tokenizer, prompt, target, output=output, reasoning=reasoning, chat_template=chat)
    except FtlensError:
        return False
    # a sequence that was built obeys the documented invariants
    n = seq.n
    assert len(seq.tokens) == len(seq.roles) == n
    assert seq.prompt_len <= seq.output[0] < seq.output[1] <= n
    assert seq.roles[seq.output[0]: seq.output[1]] == ["output"] * (seq.output[1] - seq.output[0])
    if seq.reasoning is not None:
        assert seq.prompt_len <= seq.reasoning[0] < seq.reasoning[1] <= seq.output[0]
    assert all(r in ("template", "prompt") for r in seq.roles[: seq.prompt_len])
    return True


@SETTINGS
@given(args=_sequence_args(realistic=False))
def test_random_text_and_spans_build_or_raise_an_ftlens_error(tokenizer, args):
    _check_build(tokenizer, *args)


@SETTINGS
@given(args=_sequence_args(realistic=True))
def test_random_spans_on_real_text_build_or_raise_an_ftlens_error(tokenizer, args):
    _check_build(tokenizer, *args)


@SETTINGS
@given(a=st.integers(-5, 60), b=st.integers(-5, 60))
def test_token_ranges_select_exactly_that_slice_or_are_refused(tokenizer, a, b):
    """Negative indices count from the target's end (Python slicing); the rest must fit."""
    m = seq_len(tokenizer)
    a1, b1 = (a + m if a < 0 else a), (b + m if b < 0 else b)
    try:
        seq = build_sequence(tokenizer, PROMPT, TARGET, output=(a, b), reasoning=None)
    except FtlensError as exc:
        assert not (0 <= a1 < b1 <= m) and "out of range" in str(exc)
        return
    assert seq.output == (seq.prompt_len + a1, seq.prompt_len + b1)


_LEN: dict = {}


def seq_len(tokenizer) -> int:
    if "m" not in _LEN:
        seq = build_sequence(tokenizer, PROMPT, TARGET, output=(0, 1), reasoning=None)
        _LEN["m"] = seq.n - seq.prompt_len
    return _LEN["m"]


# --------------------------------------------------------------------------- trace files


@pytest.fixture(scope="module")
def valid(tiny_llama):
    return ftlens.trace(tiny_llama, PROMPT, TARGET, hops=1)


def _loads_or_schema_error(raw):
    try:
        tr = Trace.loads(raw)
    except SchemaError:
        return None
    # a trace that loads can answer every question
    tr.summary(3)
    tr.top(3, where="all")
    tr.top_heads(3)
    tr.component_shares(len(tr.hops) - 1)
    return tr


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_random_bytes_load_or_raise_schema_error(raw):
    _loads_or_schema_error(raw)


@SETTINGS
@given(data=st.data())
def test_damaged_trace_files_load_or_raise_schema_error(valid, data):
    """Truncate, flip bytes in, or gzip-wrap a real trace file."""
    text = json.dumps(valid.to_dict()).encode()
    how = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        raw = text[: data.draw(st.integers(0, len(text)))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(text) - 1))
        raw = text[:i] + bytes([data.draw(st.integers(0, 255))]) + text[i + 1:]
    else:
        i = data.draw(st.integers(0, len(text)))
        raw = text[:i] + data.draw(st.binary(max_size=20)) + text[i:]
    _loads_or_schema_error(raw)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        for i in {0, len(obj) - 1}:
            yield from _paths(obj[i], prefix + (i,))


@SETTINGS
@given(data=st.data())
def test_edited_trace_dicts_load_or_raise_schema_error(valid, data):
    """Replace or delete one field anywhere in a valid trace (random JSON values)."""
    d = json.loads(json.dumps(valid.to_dict()))
    paths = [p for p in _paths(d) if p]
    path = data.draw(st.sampled_from(paths))
    parent = d
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JSON)
    _loads_or_schema_error(json.dumps(d, allow_nan=True))


@SETTINGS
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_float32_values_round_trip_exactly_through_json(values):
    from ftlens.jsonfile import tolist as _tolist

    t = torch.tensor(values, dtype=torch.float32)
    back = torch.tensor(json.loads(json.dumps(_tolist(t))), dtype=torch.float32)
    assert np.array_equal(back.numpy().view(np.uint32), t.numpy().view(np.uint32))


def test_cli_span_parser_never_raises_anything_but_span_errors():
    """Every short string over the span alphabet parses or raises SpanError."""
    from ftlens.spans import parse_span
    from ftlens.errors import SpanError

    alphabet = ["", "0", "1", "12", ":", "-", " ", "re:", "text:", "(", "a", "auto", "none"]
    rng = np.random.default_rng(1)
    for _ in range(2000):
        s = "".join(rng.choice(alphabet, size=rng.integers(0, 5)))
        try:
            parse_span(s, "--output", allow_none=bool(rng.integers(2)))
        except SpanError as exc:
            assert re.match(r"--output", str(exc))
