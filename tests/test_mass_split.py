"""The input mass split by role: user prompt / chat template / other (issue 11 item 13)."""

from __future__ import annotations

import pytest

import ftlens
from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET


@pytest.fixture(scope="module")
def trace(tiny_llama):
    return ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, hops=1)


def _by_role(trace, role):
    return sum(float(trace.scores[i]) for i in range(trace.inputs_end) if trace.roles[i] == role)


def test_the_three_input_masses_are_the_scores_on_each_role_and_sum_to_the_input_mass(trace):
    assert trace.prompt_mass == pytest.approx(_by_role(trace, "prompt"), abs=1e-6)
    assert trace.template_mass == pytest.approx(_by_role(trace, "template"), abs=1e-6)
    assert trace.other_mass == pytest.approx(_by_role(trace, "other"), abs=1e-6)
    assert trace.template_mass > 0  # the chat template holds mass on this trace: the split matters
    total = trace.prompt_mass + trace.template_mass + trace.other_mass
    assert total == pytest.approx(float(trace.scores[: trace.inputs_end].sum()), abs=1e-5)
    assert total + trace.output_mass + trace.unresolved == pytest.approx(1.0, abs=1e-4)


def test_summary_splits_the_input_mass_and_lists_the_template_tokens_with_mass(trace):
    text = trace.summary(5)
    assert (f"inputs {float(trace.scores.sum()):.3f} (user prompt {trace.prompt_mass:.3f}, "
            f"chat template {trace.template_mass:.3f}, other {trace.other_mass:.3f})") in text
    template = [t for t in trace.top(len(trace.tokens), where="input") if t.role == "template"][:3]
    line = next(ln for ln in text.splitlines() if ln.startswith("template tokens"))
    for t in template:
        assert f"{t.token!r}@{t.pos} {t.score:.4f}" in line
    assert 'where="input"' in line


def test_ifr_summary_splits_the_input_mass_too(tiny_llama):
    tr = ftlens.trace(tiny_llama, NEEDLE_PROMPT, NEEDLE_TARGET, method="ifr-span")
    assert f"user prompt {tr.prompt_mass:.3f}, chat template {tr.template_mass:.3f}" in tr.summary(3)
