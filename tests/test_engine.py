"""The engine against the method (docs/method.md): completeness, normalisation, span facts, brute force."""

from __future__ import annotations

import pytest
import torch

import ftlens
from ftlens.aggregate import span_shares, span_shares_many, tokenwise_shares
from ftlens.attention import attention_rows
from ftlens.capture import capture, model_info
from ftlens.spans import build_sequence

from . import bruteforce as bf
from .conftest import PROMPT, TARGET


def _setup(model, prompt=PROMPT, target=TARGET):
    seq = build_sequence(model.tokenizer, prompt, target)
    info = model_info(model)
    states = capture(model, seq.ids, seq.prompt_len, info)
    row_pos = torch.arange(seq.prompt_len, seq.n)
    return seq, info, states, row_pos


def test_capture_hooks_carry_resid_pre_mid_post(tiny):
    """Our real hook names carry what the method calls a, b, c (aliases checked numerically)."""
    seq, info, states, _ = _setup(tiny)
    _, cache = tiny.run_with_cache(seq.ids[None])
    p = seq.prompt_len
    for layer, st in enumerate(states):
        torch.testing.assert_close(st.a, cache[f"blocks.{layer}.hook_resid_pre"][0, p:].float())
        torch.testing.assert_close(st.b, cache[f"blocks.{layer}.hook_resid_mid"][0, p:].float())
        torch.testing.assert_close(st.c, cache[f"blocks.{layer}.hook_resid_post"][0, p:].float())
        # b = a + attention output, c = b + MLP output
        attn_out = cache[f"blocks.{layer}.hook_attn_out"][0, p:].float()
        mlp_out = cache[f"blocks.{layer}.hook_mlp_out"][0, p:].float()
        torch.testing.assert_close(st.b, st.a + attn_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.c, st.b + mlp_out, atol=1e-5, rtol=1e-5)


def test_recomputed_attention_equals_hook_pattern(tiny):
    """Attention rows recomputed from captured q, k equal the bridge's hook_pattern rows."""
    seq, info, states, row_pos = _setup(tiny)
    _, cache = tiny.run_with_cache(seq.ids[None])
    for layer, st in enumerate(states):
        ours = attention_rows(st.q, st.k, row_pos, info.specs[layer])
        theirs = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, seq.prompt_len :].float()
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_completeness_b_equals_a_plus_edges_plus_bias(tiny):
    """b[l,t] = a[l,t] + sum_{h,s} A[l,h,t,s] u[l,h,s] + beta[l] for every tracked row."""
    from ftlens.ifr import head_writes

    seq, info, states, row_pos = _setup(tiny)
    for layer, st in enumerate(states):
        attn = attention_rows(st.q, st.k, row_pos, info.specs[layer])  # head row src
        u = head_writes(st.v, info.w_o[layer])  # head src d
        edges = torch.einsum("hts,hsd->td", attn, u)
        beta = info.b_o[layer] if info.b_o[layer] is not None else 0.0
        gap = st.b - (st.a + edges + beta)
        assert float(gap.abs().max()) < 1e-4, f"layer {layer}: completeness gap {gap.abs().max()}"


def test_per_layer_shares_sum_to_one(tiny):
    seq, info, states, row_pos = _setup(tiny)
    w = torch.zeros(seq.n - seq.prompt_len)
    w[seq.output[0] - seq.prompt_len : seq.output[1] - seq.prompt_len] = 1.0
    plain = span_shares(states, info, row_pos, w)
    keep_all = 0.5 * float(plain.heads.flatten(1).amax(1).min())  # below every layer's largest share
    for threshold in (None, keep_all):
        sh = span_shares(states, info, row_pos, w, threshold)
        total = sh.heads.sum(dim=(1, 2)) + sh.residual + sh.bias
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    tw = tokenwise_shares(states, info, row_pos, torch.arange(3))
    total = tw.mean.heads.sum(dim=(1, 2)) + tw.mean.residual + tw.mean.bias
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_threshold_zeroes_small_normalised_shares(tiny_llama):
    seq, info, states, row_pos = _setup(tiny_llama)
    w = torch.ones(seq.n - seq.prompt_len)
    plain = span_shares(states, info, row_pos, w)
    theta = 0.9 * float(plain.heads.flatten(1).amax(1).min())  # keeps a share in every layer
    sh = span_shares(states, info, row_pos, w, threshold=theta)
    nz = sh.heads[sh.heads > 0]
    assert 0 < nz.numel() < (plain.heads > 0).sum()  # some shares were zeroed, not all
    # every surviving share was >= theta before renormalisation, and renormalisation only grows it
    assert float(nz.min()) >= theta


def test_span_of_one_token_equals_tokenwise_row(tiny):
    seq, info, states, row_pos = _setup(tiny)
    n_rows = seq.n - seq.prompt_len
    tw = tokenwise_shares(states, info, row_pos, torch.arange(n_rows))
    for r in (0, n_rows // 2, n_rows - 1):
        w = torch.zeros(n_rows)
        w[r] = 1.0
        sh = span_shares(states, info, row_pos, w)
        torch.testing.assert_close(sh.raw_scores, tw.row_scores[r], atol=1e-6, rtol=1e-6)


def test_scaling_span_weights_changes_nothing(tiny):
    seq, info, states, row_pos = _setup(tiny)
    w = torch.rand(seq.n - seq.prompt_len, generator=torch.Generator().manual_seed(0))
    a = span_shares(states, info, row_pos, w)
    b = span_shares(states, info, row_pos, 7.5 * w)
    torch.testing.assert_close(a.heads, b.heads, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.residual, b.residual, atol=1e-6, rtol=1e-5)


def test_span_tokens_are_sources_too(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, TARGET, method="ifr-span")
    o0, o1 = tr.output
    assert float(tr.scores[o0:o1].sum()) > 0


@pytest.mark.parametrize("method", ["ifr-span", "ifr-tokenwise", "flashtrace"])
def test_fast_engine_matches_bruteforce_reference(tiny, method):
    """The fast engine equals an explicit-loop reference from run_with_cache within 1e-5 (GQA)."""
    assert tiny.cfg.n_key_value_heads < tiny.cfg.n_heads  # grouped-query attention is exercised
    tr = ftlens.trace(tiny, PROMPT, TARGET, method=method, hops=2 if method == "flashtrace" else None)
    T = bf.cache_tensors(tiny, torch.tensor(tr.ids))
    o0, o1 = tr.output
    if method == "ifr-span":
        ref = bf.token_scores(T, {t: 1.0 for t in range(o0, o1)})
        E, R, B = bf.shares(T, {t: 1.0 for t in range(o0, o1)})
        torch.testing.assert_close(tr.hops[0].heads.double(), E, atol=1e-5, rtol=0)
        torch.testing.assert_close(tr.hops[0].residual.double(), R, atol=1e-5, rtol=0)
    elif method == "ifr-tokenwise":
        rows = [bf.token_scores(T, {t: 1.0}) for t in range(o0, o1)]
        torch.testing.assert_close(tr.row_scores.double(), torch.stack(rows), atol=1e-5, rtol=0)
        ref = torch.stack(rows).mean(0)
    else:
        ref, contribs, ratios, out_mass = bf.flashtrace(T, tr.output, tr.reasoning, hops=2)
        for hop, c in zip(tr.hops, contribs):
            torch.testing.assert_close(hop.scores.double(), c, atol=1e-5, rtol=0)
        assert tr.thinking_ratios == pytest.approx(ratios, abs=1e-5)
        assert tr.output_mass == pytest.approx(out_mass, abs=1e-5)
    torch.testing.assert_close(tr.scores.double(), ref, atol=1e-5, rtol=0)


def test_recursion_conserves_mass(tiny):
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=3)
    assert tr.reasoning is not None
    total = float(tr.scores.sum()) + tr.unresolved + tr.output_mass
    assert total == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(sum(h.scores for h in tr.hops), tr.scores, atol=1e-6, rtol=0)
    # per-head attribution of the whole trace sums to F
    torch.testing.assert_close(tr.head_attribution.sum(dim=(0, 1)), tr.scores, atol=1e-5, rtol=0)
    # mass moves from reasoning to inputs: thinking ratios shrink hop by hop
    r = tr.thinking_ratios
    assert all(b < a for a, b in zip(r, r[1:]))


def test_route_weights_are_products_of_shares_along_the_residual_path(tiny):
    """w[l] = (1 - mlp[l]) * prod_{l' > l} residual[l'] (1 - mlp[l']), per hop, by explicit loops."""
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=2)
    for k, hop in enumerate(tr.hops):
        L = tr.n_layers
        expect = []
        for layer in range(L):
            w = 1.0 - float(hop.mlp[layer])
            for later in range(layer + 1, L):
                w *= float(hop.residual[later]) * (1.0 - float(hop.mlp[later]))
            expect.append(w)
        torch.testing.assert_close(tr.route_weights(k).double(), torch.tensor(expect, dtype=torch.float64),
                                   atol=1e-6, rtol=1e-5)
        assert float(tr.route_weights(k).max()) <= 1.0 and float(tr.route_weights(k).min()) >= 0.0


def test_routed_head_attribution_weights_each_hop_by_its_route(tiny):
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=2)
    inputs = torch.arange(len(tr.tokens)) < tr.inputs_end
    expect = sum(h.heads * inputs * (h.weight / h.norm) * tr.route_weights(k)[:, None, None]
                 for k, h in enumerate(tr.hops))
    torch.testing.assert_close(tr.head_attribution_routed, expect, atol=1e-7, rtol=1e-6)
    per_head = expect[:, :, tr.prompt_positions].sum(-1).flatten()
    top = tr.top_heads(4, weighting="route")
    assert [(h.layer * tr.n_heads + h.head) for h in top] == torch.argsort(per_head, descending=True)[:4].tolist()
    assert tr.top_heads(4) == top  # route is the default ranking
    additive = tr.head_attribution[:, :, tr.prompt_positions].sum(-1).flatten()
    share = tr.top_heads(4, weighting="share")
    assert [(h.layer * tr.n_heads + h.head) for h in share] == torch.argsort(additive, descending=True)[:4].tolist()
    with pytest.raises(ValueError, match="weighting must be 'share' or 'route'"):
        tr.top_heads(3, weighting="layer")


def test_hops_zero_equals_normalised_ifr_span(tiny):
    ft = ftlens.trace(tiny, PROMPT, TARGET, hops=0)
    span = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-span")
    p = span.scores / span.scores.sum()
    p[ft.inputs_end :] = 0
    torch.testing.assert_close(ft.scores, p, atol=1e-6, rtol=1e-5)


def test_explain_target_matches_bruteforce_reference(tiny):
    """explain="target": hop 0 is one span over [reasoning start, output end), then the usual hops."""
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=2, explain="target")
    assert tr.reasoning is not None and tr.params["explain"] == "target"
    T = bf.cache_tensors(tiny, torch.tensor(tr.ids))
    ref, contribs, ratios, out_mass = bf.flashtrace(T, tr.output, tr.reasoning, hops=2, explain="target")
    for hop, c in zip(tr.hops, contribs):
        torch.testing.assert_close(hop.scores.double(), c, atol=1e-5, rtol=0)
    assert tr.thinking_ratios == pytest.approx(ratios, abs=1e-5)
    assert tr.output_mass == pytest.approx(out_mass, abs=1e-5)
    torch.testing.assert_close(tr.scores.double(), ref, atol=1e-5, rtol=0)
    # it really is a different attribution from the answer-only hop 0
    default, _, _, _ = bf.flashtrace(T, tr.output, tr.reasoning, hops=2)
    assert float((ref - default).abs().max()) > 1e-3
    # ifr-span and ifr-tokenwise follow the same span: raw r(s) and the mean of its rows
    whole = range(tr.reasoning[0], tr.output[1])
    span = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-span", explain="target")
    torch.testing.assert_close(span.scores.double(), bf.token_scores(T, {t: 1.0 for t in whole}), atol=1e-5, rtol=0)
    tw = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-tokenwise", explain="target")
    rows = torch.stack([bf.token_scores(T, {t: 1.0}) for t in whole])
    torch.testing.assert_close(tw.scores.double(), rows.mean(0), atol=1e-5, rtol=0)


def test_explain_target_conserves_mass(tiny):
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=3, explain="target")
    total = float(tr.scores.sum()) + tr.unresolved + tr.output_mass
    assert total == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(tr.head_attribution.sum(dim=(0, 1)), tr.scores, atol=1e-5, rtol=0)


def test_explain_target_without_reasoning_equals_output(tiny_llama):
    a = ftlens.trace(tiny_llama, PROMPT, " It is 7351.", hops=2)
    b = ftlens.trace(tiny_llama, PROMPT, " It is 7351.", hops=2, explain="target")
    assert a.reasoning is None
    torch.testing.assert_close(a.scores, b.scores, atol=0, rtol=0)


def test_no_reasoning_means_no_pending_mass(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, " It is 7351.", hops=2)
    assert tr.reasoning is None
    assert tr.unresolved == 0.0
    assert float(tr.scores.sum()) + tr.output_mass == pytest.approx(1.0, abs=1e-5)


def test_batched_span_passes_equal_one_pass_per_span(tiny):
    """span_shares_many (the step graph's batched passes) gives each weight vector exactly the
    shares of its own span_shares pass: heads, residual, bias, mlp and the guard's gap."""
    seq, info, states, row_pos = _setup(tiny)
    n = row_pos.numel()
    w = torch.zeros(3, n)
    w[0, : n // 2] = 1.0 / (n // 2)
    w[1, n // 2 :] = 1.0 / (n - n // 2)
    w[2] = torch.linspace(0.1, 1.0, n)
    many = span_shares_many(states, info, row_pos, w, threshold=1e-4)
    for v in range(3):
        one = span_shares(states, info, row_pos, w[v], threshold=1e-4)
        for name in ("heads", "residual", "bias", "mlp", "gap"):
            torch.testing.assert_close(getattr(many[v], name), getattr(one, name), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(many[0].heads, many[1].heads)


def _stop_positions(model, ids) -> frozenset[int]:
    """Stop tokens written out from the tokenizer: ',' '.' (spaces allowed) or whitespace only."""
    return frozenset(i for i, t in enumerate(ids) if model.tokenizer.decode([t]).strip() in ("", ",", "."))


@pytest.mark.parametrize("explain", ["output", "target"])
def test_skipping_stop_rows_matches_the_bruteforce_reference(tiny, explain):
    """stop_rows="skip": the target's ',' '.' and blank rows are never traced (hop 0 weights and the
    relayed mass leave them out); inputs keep them as sources; mass is conserved."""
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=2, explain=explain, stop_rows="skip")
    skip = _stop_positions(tiny, tr.ids)
    assert tr.params["stop_rows"] == "skip" and any(s >= tr.reasoning[0] for s in skip)
    T = bf.cache_tensors(tiny, torch.tensor(tr.ids))
    ref, contribs, ratios, out_mass = bf.flashtrace(T, tr.output, tr.reasoning, hops=2, explain=explain, skip=skip)
    for hop, c in zip(tr.hops, contribs):
        torch.testing.assert_close(hop.scores.double(), c, atol=1e-5, rtol=0)
    assert tr.thinking_ratios == pytest.approx(ratios, abs=1e-5)
    assert tr.output_mass == pytest.approx(out_mass, abs=1e-5)
    torch.testing.assert_close(tr.scores.double(), ref, atol=1e-5, rtol=0)
    assert float(tr.scores.sum()) + tr.unresolved + tr.output_mass == pytest.approx(1.0, abs=1e-5)
    relayed = tr.relayed_mass()
    assert all(float(relayed[:, s].abs().max()) == 0.0 for s in skip if s >= tr.reasoning[0])
    kept, _, _, _ = bf.flashtrace(T, tr.output, tr.reasoning, hops=2, explain=explain)
    assert float((ref - kept).abs().max()) > 1e-4  # it is not the stop_rows="keep" attribution
    assert "rows are not traced" in tr.summary()


def test_a_trace_skipping_stop_rows_survives_a_file(tiny, tmp_path):
    tr = ftlens.trace(tiny, PROMPT, TARGET, hops=2, explain="target", stop_rows="skip")
    back = ftlens.Trace.load(tr.save(tmp_path / "t.json"))
    assert back.params["stop_rows"] == "skip"
    torch.testing.assert_close(back.scores, tr.scores)


def test_skipping_stop_rows_in_one_pass_methods_drops_exactly_those_rows(tiny):
    tr = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-tokenwise", explain="target", stop_rows="skip")
    skip = _stop_positions(tiny, tr.ids)
    T = bf.cache_tensors(tiny, torch.tensor(tr.ids))
    rows = [t for t in range(tr.reasoning[0], tr.output[1]) if t not in skip]
    assert tr.row_scores.shape[0] == len(rows) < tr.output[1] - tr.reasoning[0]
    torch.testing.assert_close(tr.row_scores.double(), torch.stack([bf.token_scores(T, {t: 1.0}) for t in rows]),
                               atol=1e-5, rtol=0)
    span = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-span", explain="target", stop_rows="skip")
    torch.testing.assert_close(span.scores.double(), bf.token_scores(T, {t: 1.0 for t in rows}), atol=1e-5, rtol=0)


def test_a_span_made_only_of_stop_tokens_is_still_traced(tiny):
    """An explained span of stop tokens only (here the final '.') keeps its rows under skip."""
    tr = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-span", output=(-1, None), stop_rows="skip")
    assert tr.tokens[tr.output[0]].strip() == "."
    keep = ftlens.trace(tiny, PROMPT, TARGET, method="ifr-span", output=(-1, None))
    torch.testing.assert_close(tr.scores, keep.scores)


def test_bad_stop_rows_value_is_refused_in_one_line(tiny):
    with pytest.raises(ftlens.TraceError, match="stop_rows must be 'keep' or 'skip'"):
        ftlens.trace(tiny, PROMPT, TARGET, stop_rows="content")
