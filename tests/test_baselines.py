"""Baselines: shapes, hooks left behind, and the property each one is defined by."""

from __future__ import annotations

import pytest
import torch

import ftlens
from ftlens.eval import baselines as B
from ftlens.eval import reference as R
from ftlens.eval import tasks as T
from ftlens.eval.cases import build_case
from ftlens.eval.scoring import target_logprobs


@pytest.fixture(scope="module")
def case(tiny_llama):
    ex = T.make_examples("twohop", tiny_llama.tokenizer, 1, 48)[0]
    seq, case, fmt = build_case(tiny_llama, ex)
    return ex, seq, case, fmt


def _n_hooks(model) -> int:
    return sum(len(p.fwd_hooks) for p in model.hook_dict.values())


@pytest.mark.parametrize("name", B.BASELINES)
def test_every_baseline_scores_every_position_and_leaves_no_hooks(tiny_llama, case, name):
    _, seq, _, _ = case
    before = _n_hooks(tiny_llama)
    s = B.run_baseline(name, tiny_llama, seq, fill=79, ig_steps=4)
    assert s.shape == (seq.n,) and torch.isfinite(s).all()
    assert _n_hooks(tiny_llama) == before


def test_last_layer_attention_matches_hf_attentions(tiny_llama, case):
    _, seq, _, _ = case
    s = B.last_layer_attention(tiny_llama, seq)
    with torch.no_grad():
        att = R.plain_hf(tiny_llama)(input_ids=seq.ids[None], output_attentions=True).attentions[-1][0]
    a, b = seq.output
    assert torch.allclose(s, att[:, a:b].mean((0, 1)), atol=1e-5)


def test_rollout_rows_are_distributions(tiny_llama, case):
    _, seq, _, _ = case
    s = B.rollout(tiny_llama, seq)
    assert float(s.sum()) == pytest.approx(1.0, abs=1e-4) and bool((s >= 0).all())
    assert float(s[seq.output[1]:].abs().sum()) == 0.0  # causal: nothing after the answer


def test_integrated_gradients_completeness_converges_with_steps(tiny_llama, case):
    """sum_s IG(s) -> f(x) - f(x') as the Riemann sum refines (only the user prompt is
    interpolated).  The zero baseline is steep near alpha=0 (RMSNorm of a tiny vector), so
    convergence is slow: the error must shrink with steps (measured: 1.03 at 16, 0.37 at 64,
    0.12 at 256 steps), not vanish at 16."""
    _, seq, _, _ = case
    ig16 = B.integrated_gradients(tiny_llama, seq, steps=16, baseline="zero")
    ig = B.integrated_gradients(tiny_llama, seq, steps=96, baseline="zero", batch=32)
    hf = tiny_llama.original_model
    x = hf.get_input_embeddings()(seq.ids[None]).detach().float()
    x0 = x.clone()
    x0[0, seq.user_prompt[0]:seq.user_prompt[1]] = 0.0
    with torch.no_grad():
        fx = B._answer_logprob(hf, x, seq.ids, seq.output)
        f0 = B._answer_logprob(hf, x0, seq.ids, seq.output)
    err, err16 = abs(float(ig.sum() - (fx - f0))), abs(float(ig16.sum() - (fx - f0)))
    assert err < 0.5 * err16
    assert float(ig[: seq.user_prompt[0]].abs().sum()) == 0.0


def test_occlusion_is_the_logprob_drop_of_one_replacement(tiny_llama, case):
    _, seq, _, _ = case
    s = B.occlusion(tiny_llama, seq, fill=79)
    j = seq.user_prompt[0] + 3
    x = seq.ids.clone()
    x[j] = 79
    lp = target_logprobs(tiny_llama, torch.stack([seq.ids, x]), seq.prompt_len)
    o = slice(seq.output[0] - seq.prompt_len, seq.output[1] - seq.prompt_len)
    assert float(s[j]) == pytest.approx(float(lp[0, o].sum() - lp[1, o].sum()), abs=1e-4)
    with pytest.raises(ftlens.TraceError):
        B.occlusion(tiny_llama, seq, fill=79, max_prompt=5)


def test_ftlens_family_equals_direct_traces(tiny_llama, case):
    ex, seq, c, _ = case
    fam = B.ftlens_scores(tiny_llama, ex["prompt"], ex["target"], seq, hops_max=2, tokenwise=False)
    span = ftlens.trace(tiny_llama, ex["prompt"], ex["target"], method="ifr-span")
    h1 = ftlens.trace(tiny_llama, ex["prompt"], ex["target"], hops=1)
    pp = c.prompt_pos
    assert torch.allclose(fam["ifr-span"][0][pp], span.scores[pp], atol=1e-6)
    assert torch.allclose(fam["flashtrace-h1"][0], h1.scores, atol=1e-6)
    assert set(fam) == {"ifr-span", "flashtrace-h0", "flashtrace-h1", "flashtrace-h2"}


def test_reference_runs_aligned_on_the_same_positions(tiny_llama, case):
    pytest.importorskip("flashtrace")
    _, seq, c, fmt = case
    s = R.reference_flashtrace(tiny_llama, seq, fmt, hops=1)
    assert s.shape == (seq.n,) and torch.isfinite(s).all()
    assert float(s[c.prompt_pos].sum()) > 0 and float(s[seq.prompt_len:].abs().sum()) == 0.0


def test_evidence_tokens_cover_the_evidence_text(tiny_llama, case):
    ex, seq, c, _ = case
    text = "".join(seq.tokens[c.prompt_pos[j]] for j in c.evidence)
    for a, b in ex["evidence"]:
        assert ex["prompt"][a:b].split()[0] in text


def test_tasks_are_reproducible_and_sized(tiny_llama):
    tok = tiny_llama.tokenizer
    for task in T.TASKS:
        a = T.make_examples(task, tok, 2, 160)
        assert a == T.make_examples(task, tok, 2, 160)
        assert a[0]["prompt"] != a[1]["prompt"]
        assert all(abs(e["n_prompt_tokens"] - 160) <= 40 for e in a)
        assert all(e["answer"] in e["target"].split("</think>")[1] for e in a)
