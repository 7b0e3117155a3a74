"""Residual-stream analyses: DLA completeness, logit lens end point, shares, no hooks left."""

from __future__ import annotations

import pytest
import torch

import ftlens
from ftlens import render
from ftlens import residual as R
from ftlens.errors import SpanError
from ftlens.examples import NEEDLE_PROMPT, NEEDLE_TARGET

from .conftest import PROMPT, TARGET


def _no_hooks(model) -> bool:
    return all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())


def _model_span_logits(model, ids, span):
    a, b = span
    with torch.no_grad():
        logits = model(torch.tensor(ids)[None])[0].float()
    tgt = torch.tensor(ids[a:b])
    return logits[a - 1 : b - 1].gather(-1, tgt[:, None])[:, 0], logits[a - 1 : b - 1].log_softmax(-1).gather(
        -1, tgt[:, None]
    )[:, 0]


@pytest.fixture(scope="module")
def tiny_trace(tiny):
    return ftlens.trace(tiny, PROMPT, TARGET, hops=1)


def test_dla_parts_sum_to_the_models_summed_target_logits(tiny, tiny_trace):
    dla = R.direct_logit_attribution(tiny, tiny_trace)
    logits, _ = _model_span_logits(tiny, tiny_trace.ids, tiny_trace.output)
    assert dla.total == pytest.approx(float(logits.sum()), abs=1e-4)
    assert dla.parts_sum == pytest.approx(dla.total, abs=1e-4 * max(1.0, abs(dla.total)))
    assert dla.heads.shape == (tiny_trace.n_layers, tiny_trace.n_heads)
    assert _no_hooks(tiny)


def test_dla_per_head_parts_add_up_to_each_layers_attention_output(tiny_llama):
    """sum_h z[h] W_O[h] (+ b_O) read along the frozen direction == DLA of hook_attn_out."""
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=0, method="ifr-span")
    dla = R.direct_logit_attribution(tiny_llama, tr)
    a, b = tr.output
    names = [f"blocks.{l}.hook_attn_out" for l in range(tr.n_layers)] + [f"blocks.{tr.n_layers - 1}.hook_out"]
    _, cache = tiny_llama.run_with_cache(torch.tensor(tr.ids)[None], names_filter=lambda n: n in names)
    x = cache[names[-1]][0, a - 1 : b - 1].float()
    norm = tiny_llama.ln_final.original_component
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    direction = scale * norm.weight.float() * tiny_llama.unembed.W_U.float()[:, torch.tensor(tr.ids[a:b])].T
    for layer in range(tr.n_layers):
        attn_out = cache[names[layer]][0, a - 1 : b - 1].float()
        assert float(dla.attn[layer]) == pytest.approx(float((attn_out * direction).sum().detach()), abs=1e-4)
    assert _no_hooks(tiny_llama)


def test_dla_counts_output_and_unembedding_biases():
    from ftlens.models import tiny_model

    model = tiny_model("qwen2", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
    gen = torch.Generator().manual_seed(0)
    lm = model.unembed.original_component
    lm.bias = torch.nn.Parameter(torch.randn(lm.out_features, generator=gen))
    o_proj = model.blocks[0].attn.original_component.o_proj
    o_proj.bias = torch.nn.Parameter(0.5 * torch.randn(o_proj.out_features, generator=gen))
    ids = model.tokenizer(PROMPT + " " + TARGET)["input_ids"]
    span = (len(ids) - 5, len(ids))
    dla = R.direct_logit_attribution(model, ids=ids, span=span)
    logits, _ = _model_span_logits(model, ids, span)
    assert dla.unembed_bias != 0 and float(dla.attn_bias[0]) != 0 and float(dla.attn_bias[1]) == 0
    assert dla.total == pytest.approx(float(logits.sum()), abs=1e-4)
    assert dla.parts_sum == pytest.approx(dla.total, abs=1e-4)


def test_logit_lens_last_layer_is_the_models_own_log_prob(tiny, tiny_trace):
    lens = R.logit_lens(tiny, tiny_trace)
    _, logprobs = _model_span_logits(tiny, tiny_trace.ids, tiny_trace.output)
    assert lens.logprob.shape == (tiny_trace.n_layers + 1,)
    assert lens.token_logprob.shape == (tiny_trace.n_layers + 1, tiny_trace.output[1] - tiny_trace.output[0])
    torch.testing.assert_close(lens.token_logprob[-1], logprobs, atol=1e-4, rtol=1e-4)
    assert (lens.logprob <= 0).all()
    assert _no_hooks(tiny)


def test_default_model_dla_sums_to_total_and_lens_ends_at_model_logprob(default_model):
    ids = default_model.tokenizer(NEEDLE_PROMPT + "\n" + NEEDLE_TARGET)["input_ids"]
    span = (len(ids) - 8, len(ids))
    dla = R.direct_logit_attribution(default_model, ids=ids, span=span)
    logits, logprobs = _model_span_logits(default_model, ids, span)
    assert dla.total == pytest.approx(float(logits.sum()), rel=1e-4, abs=1e-3)
    assert abs(dla.gap) <= 1e-4 * max(1.0, abs(dla.total)) + 1e-3
    assert dla.embed != 0  # tied embeddings: the direct path W_E -> W_U is a real part
    lens = R.logit_lens(default_model, ids=ids, span=span)
    torch.testing.assert_close(lens.token_logprob[-1], logprobs, atol=1e-3, rtol=1e-4)
    assert _no_hooks(default_model)


def test_component_shares_of_heads_residual_and_bias_sum_to_one_per_layer(tiny_trace):
    for hop in range(len(tiny_trace.hops)):
        s = R.component_shares(tiny_trace, hop)
        total = s.head_share + s.residual + s.bias
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
        assert ((s.mlp >= 0) & (s.mlp <= 1)).all()


def test_compare_heads_is_perfect_when_dla_equals_trace_mass(tiny, tiny_trace):
    dla = R.direct_logit_attribution(tiny, tiny_trace)
    cmp = R.compare_heads(tiny_trace, dla, k=3)
    torch.testing.assert_close(cmp.trace_mass, tiny_trace.hops[0].heads.sum(-1) * tiny_trace.route_weights(0)[:, None])
    assert -1 <= cmp.spearman <= 1 and 0 <= cmp.overlap <= 1
    masses = [r[2] for r in cmp.rows()]
    assert masses == sorted(masses, reverse=True)
    dla.heads = cmp.trace_mass.clone()
    same = R.compare_heads(tiny_trace, dla, k=3)
    assert same.spearman == pytest.approx(1.0, abs=1e-6) and same.overlap == 1.0
    dla.heads = -cmp.trace_mass.clone()
    assert R.compare_heads(tiny_trace, dla, k=3).spearman == pytest.approx(-1.0, abs=1e-6)


def test_compare_heads_ranks_by_the_default_route_weighting_and_says_so(tiny_llama):
    # issue 11 item 6: one ranking everywhere (Trace.top_heads' default, route weighting)
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, hops=1)
    dla = R.direct_logit_attribution(tiny_llama, tr)
    cmp = R.compare_heads(tr, dla, k=3)
    routed = (tr.hops[0].heads * tr.route_weights(0)[:, None, None]).sum(-1)
    torch.testing.assert_close(cmp.trace_mass, routed)
    order = routed.flatten().argsort(descending=True)[:3].tolist()
    assert [(l * tr.n_heads + h) for l, h, *_ in cmp.rows()] == order
    assert "route-weighted" in render.comparison_view(cmp).html()


def test_bad_spans_raise_span_error_and_leave_no_hooks(tiny_llama, tiny_trace):
    with pytest.raises(SpanError):
        R.direct_logit_attribution(tiny_llama, ids=[1, 2, 3], span=(0, 2))
    with pytest.raises(SpanError):
        R.logit_lens(tiny_llama, ids=[1, 2, 3], span=(2, 9))
    with pytest.raises(SpanError):
        R.logit_lens(tiny_llama)
    other = R.direct_logit_attribution(tiny_llama, ids=tiny_trace.ids, span=(3, 5))
    with pytest.raises(SpanError):
        R.compare_heads(tiny_trace, other)
    assert _no_hooks(tiny_llama)


def test_hooks_are_removed_when_the_forward_raises(tiny_llama):
    ids = tiny_llama.tokenizer(PROMPT)["input_ids"]
    ids[1] = 10**7  # out of the vocabulary: the forward raises with the hooks registered
    with pytest.raises(Exception):
        R.direct_logit_attribution(tiny_llama, ids=ids, span=(3, 6))
    with pytest.raises(Exception):
        R.logit_lens(tiny_llama, ids=ids, span=(3, 6))
    assert _no_hooks(tiny_llama)


def test_residual_views_render_offline_html(tiny, tiny_trace):
    dla = R.direct_logit_attribution(tiny, tiny_trace)
    views = [
        render.logit_lens_view(R.logit_lens(tiny, tiny_trace)),
        render.dla_view(dla),
        render.component_shares_view(R.component_shares(tiny_trace)),
        render.comparison_view(R.compare_heads(tiny_trace, dla)),
    ]
    for v in views:
        html = v.html()
        assert "<svg" in html and "unpkg.com" not in html
