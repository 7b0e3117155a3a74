"""Parity with the published reference package ``flashtrace`` (PyPI) on the default model.

Alignment (see tests/reference_adapter.py): the reference feeds
``ids(prompt) + ids(target) + [eos]`` with no BOS and no chat template; ftlens
with ``chat_template=False`` tokenises ``prompt + target`` in context, with the
tokenizer's BOS, which the test hands the reference as text.  The test
asserts the ids agree position by position, then compares scores over every
position before the reference's trailing EOS.  Spans: the reference's are
inclusive target-token indices, ftlens' are half-open.  Threshold off on both.
"""

from __future__ import annotations

import pytest

import ftlens

pytest.importorskip("flashtrace")

PROMPT = (
    "Facts: the vault code is 5926. The garden gate is painted green. "
    "The meeting is on Tuesday. Question: what is the vault code?"
)
TARGET = " The vault code is 5926."


@pytest.fixture(scope="module")
def reference_hf_model():
    """A plain HF copy of the default model (the reference hooks HF modules directly)."""
    from transformers import AutoModelForCausalLM

    from ftlens.models import default_model_dir

    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), attn_implementation="eager")
    return model.eval()


@pytest.mark.parametrize("ours,theirs", [("ifr-span", "ifr-span"), ("ifr-tokenwise", "ifr-matrix")])
def test_scores_equal_reference_package_within_1e4(default_model, reference_hf_model, ours, theirs):
    from .reference_adapter import reference_scores

    from ftlens.spans import build_sequence

    tok = default_model.tokenizer
    m = build_sequence(tok, PROMPT, TARGET, chat_template=False).n - len(tok(PROMPT).input_ids)
    a, b = m - 6, m  # the last six target tokens, half-open
    tr = ftlens.trace(default_model, PROMPT, TARGET, output=(a, b), reasoning=None,
                      method=ours, chat_template=False)
    # ftlens encodes a chat-template-free prompt with the tokenizer's special tokens (a BOS
    # here); the reference never adds one, so hand it the BOS as text.
    bos = tok.bos_token if tr.ids[0] == tok.bos_token_id else ""
    ref = reference_scores(reference_hf_model, tok, bos + PROMPT, TARGET, (a, b - 1), theirs)
    n = len(tr.ids)
    assert ref["input_ids"][:n].tolist() == tr.ids, "token positions do not align"
    assert ref["output_span_abs"] == (tr.output[0], tr.output[1] - 1)
    diff = (tr.scores - ref["full_row"][:n]).abs().max()
    assert float(diff) < 1e-4, f"max |ftlens - reference| = {float(diff):.2e}"
    # and the comparison is not vacuous: scores are spread over many positions
    assert int((tr.scores > 1e-3).sum()) > 10
