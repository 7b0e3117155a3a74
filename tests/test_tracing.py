"""trace() end to end: hooks never leak, bad parameters, the default model."""

from __future__ import annotations

import socket

import pytest
import torch

import ftlens
from ftlens import SpanError, TraceError
from ftlens.examples import NEEDLE_EVIDENCE, NEEDLE_PROMPT, NEEDLE_TARGET

from .conftest import PROMPT, TARGET


def _hook_count(model) -> int:
    """Hooks on every HookPoint and every torch module.  One plain forward runs first:
    the bridge wires its own internal capture pre-hooks lazily on its first forward."""
    model(torch.tensor([[1, 2, 3]]), return_type=None)
    lens = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
    torch_level = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return lens + torch_level


def test_no_hook_remains_after_a_trace(tiny):
    before = _hook_count(tiny)
    for method in ftlens.METHODS:
        ftlens.trace(tiny, PROMPT, TARGET, method=method)
    assert _hook_count(tiny) == before


def test_no_hook_remains_when_the_trace_raises_and_the_layer_is_named():
    from ftlens.models import tiny_model

    model = tiny_model("llama", n_layers=3)
    with torch.no_grad():
        model.blocks[1].mlp.out.original_component.weight.fill_(float("inf"))
    before = _hook_count(model)
    with pytest.raises(TraceError, match="non-finite activations at layer 1"):
        ftlens.trace(model, PROMPT, TARGET)
    assert _hook_count(model) == before


def test_user_hooks_survive_a_trace(tiny_llama):
    seen = []
    handle = tiny_llama.hook_dict["blocks.0.hook_out"].add_hook(lambda x, hook: seen.append(1))
    try:
        ftlens.trace(tiny_llama, PROMPT, TARGET)
        assert seen, "the user's hook was removed or never ran"
        assert handle in tiny_llama.hook_dict["blocks.0.hook_out"].fwd_hooks
    finally:
        handle.hook.remove()
        tiny_llama.hook_dict["blocks.0.hook_out"].fwd_hooks.remove(handle)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"hops": -1}, TraceError, "hops must be an integer in"),
        ({"method": "lrp"}, TraceError, "unknown method"),
        ({"threshold": 1.5}, TraceError, "threshold"),
        ({"explain": "answer"}, TraceError, "explain must be .output. .the answer span. or .target."),
    ],
)
def test_bad_parameters_raise_clear_errors(tiny_llama, kwargs, error, match):
    with pytest.raises(error, match=match):
        ftlens.trace(tiny_llama, PROMPT, TARGET, **kwargs)


def test_sequence_longer_than_context_is_refused(tiny_llama):
    n_ctx = tiny_llama.cfg.n_ctx
    before = _hook_count(tiny_llama)
    with pytest.raises(SpanError, match=f"context is {n_ctx}"):
        ftlens.trace(tiny_llama, "word " * (n_ctx + 10), TARGET)
    assert _hook_count(tiny_llama) == before


def test_trace_round_trips_through_json(tiny_llama, tmp_path):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=2)
    path = tr.save(tmp_path / "t.json")
    back = ftlens.Trace.load(path)
    assert back.tokens == tr.tokens and back.roles == tr.roles and back.ids == tr.ids
    assert torch.equal(back.scores, tr.scores)
    for a, b in zip(back.hops, tr.hops):
        assert torch.equal(a.heads, b.heads) and torch.equal(a.scores, b.scores)
        assert a.thinking_ratio == b.thinking_ratio
    assert back.top(5) == tr.top(5) and back.top_heads(5) == tr.top_heads(5)


def test_generation_is_traced_when_no_target(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, None, max_new_tokens=8, reasoning=None)
    assert "generate" in tr.timings
    assert tr.output[1] == len(tr.ids)
    assert tr.output[0] >= tr.inputs_end


# ----------------------------------------------------------------- default model


def test_default_model_needle_is_top_prompt_token_and_no_network(default_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = ftlens.load_model()  # from the cache, offline
    tr = ftlens.trace(model, NEEDLE_PROMPT, NEEDLE_TARGET, hops=1)
    assert tr.reasoning is not None
    top = tr.top(8)
    needle_digits = set(NEEDLE_EVIDENCE)
    hits = [t for t in top if t.token.strip() and set(t.token.strip()) <= needle_digits]
    assert hits, f"no needle token among the top prompt tokens: {[t.token for t in top]}"
    # the needle digits hold more mass than an average prompt token
    assert float(tr.scores[[t.pos for t in hits]].mean()) > 2 * float(tr.prompt_scores.mean())
    assert float(tr.scores.sum()) + tr.unresolved + tr.output_mass == pytest.approx(1.0, abs=1e-4)


def test_default_model_generation_is_sensible(default_model):
    """ftlens.generate (the path traces use when target=None) gives a real answer: a guard
    against transformers/TransformerLens combinations whose cached generation is broken."""
    text = ftlens.generate(default_model, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in text, text
