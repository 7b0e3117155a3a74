"""The coverage matrix (issue 10): every supported block family, exact; every refused one,
refused by name before any forward pass.

For each tiny random model (2 layers, d_model 64, 4 heads; randomised norm gains and biases;
sliding window 8 where the family has one, shorter than the ~40-token sequence):

1. the independent reference (``tests/hf_reference.py``: a separate plain HF instance,
   float64, HF modules' own outputs) closes its own decomposition (gap <= 1e-6);
2. ftlens' ``ifr-span``, ``ifr-tokenwise`` and ``flashtrace`` (2 hops, explicit reasoning
   span) agree with that reference within 1e-5;
3. ftlens' own completeness gaps ``Trace.completeness`` [hop, layer] are <= 1e-5;
4. ftlens' recomputed attention equals the bridge's ``hook_pattern`` (and that equals the
   HF instance's eager attention weights).
"""

from __future__ import annotations

import functools
import re

import pytest
import torch

import ftlens
from ftlens.errors import TraceError

from .hf_reference import ARCHS, HFReference
from .test_models import _block_network

KW = dict(seed=0, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
PROMPT = "The code is 7351. Remember it. What is the code?"
REASONING = "Let me think. The code was given above, it is"
ANSWER = "7351."
TARGET = f"{REASONING} {ANSWER}"
SPANS = dict(output=ftlens.Select(text=ANSWER), reasoning=ftlens.Select(text=REASONING), chat_template=False)
HOPS = 2
TOL = 1e-5
WINDOW = 8  # ftlens.models.TINY_WINDOW

#: Refused structures: tiny arch -> what the TraceError must name (regex, case-insensitive).
REFUSED = {
    "bloom": r"alibi",
    "gpt_oss": r"sink",
    "jamba": r"state.space|hybrid|mamba",
    "bart": r"encoder.decoder",
}


# --------------------------------------------------------------------------- cached per module


@functools.cache
def _model(arch: str):
    """The tiny model, booted with the network blocked (it must boot offline)."""
    from ftlens.models import tiny_model

    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        return tiny_model(arch, **KW)


@functools.cache
def _hf(arch: str):
    """A separate plain HF instance with the same weights (never wrapped by the bridge)."""
    from ftlens.models import tiny_hf_model

    return tiny_hf_model(arch, **KW)


@functools.cache
def _reference(arch: str, ids: tuple[int, ...]) -> HFReference:
    return HFReference(arch, torch.tensor(ids), **KW)  # its own HF instance, same seed


@functools.cache
def _trace(arch: str, method: str) -> ftlens.Trace:
    hops = HOPS if method == "flashtrace" else None
    return ftlens.trace(_model(arch), PROMPT, TARGET, method=method, hops=hops, **SPANS)


@pytest.fixture(scope="module", autouse=True)
def _free_models_after_module():
    """The tiny models are built once per module (~20 of them); free them afterwards."""
    yield
    for cached in (_model, _hf, _reference, _trace):
        cached.cache_clear()


def _ref_for(tr: ftlens.Trace, arch: str) -> HFReference:
    return _reference(arch, tuple(int(i) for i in tr.ids))


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got.double(), want, atol=TOL, rtol=0, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------- the tiny models


@pytest.mark.parametrize("arch", ARCHS + tuple(sorted(REFUSED)))
def test_tiny_model_boots_offline_with_hf_logits(arch):
    """Every tiny family boots through TransformerBridge offline; logits equal a separate HF instance's."""
    from ftlens.models import ENCODER_DECODER

    model = _model(arch)
    ids = model.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    hf = _hf(arch)
    with torch.no_grad():
        if arch in ENCODER_DECODER:
            want, got = hf(input_ids=ids, decoder_input_ids=ids).logits, model(ids, decoder_input=ids)
        else:
            want, got = hf(ids).logits, model(ids)
    assert got.shape == (1, ids.shape[1], 49152)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS + tuple(sorted(REFUSED)))
def test_tiny_model_norm_gains_and_biases_are_random(arch):
    """No norm gain is left at its init (1, or 0 for Gemma's 1 + w) and no bias at 0, so code
    that ignores one gives a different answer."""
    hf = _hf(arch)
    n_norms = n_biases = 0
    for module in hf.modules():
        for name, p in module.named_parameters(recurse=False):
            if "norm" in type(module).__name__.lower() and name == "weight":
                n_norms += 1
                assert not (torch.all(p == 1) or torch.all(p == 0)), f"{type(module).__name__}.{name}"
            elif name == "bias":
                n_biases += 1
                assert not torch.all(p == 0), f"{type(module).__name__}.bias"
    assert n_norms > 0


# --------------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_closes_its_own_decomposition(arch):
    """b - a = sum of edges + bias part, from the HF modules' own outputs (sanity of the reference)."""
    tr_ids = _model(arch).tokenizer(PROMPT + " " + TARGET)["input_ids"]
    ref = _reference(arch, tuple(tr_ids))
    assert ref.n > 2 * WINDOW  # longer than any sliding window
    n = ref.n
    span = ref.span(n // 2, n)
    assert float(span.gap.max()) <= 1e-6, f"{arch}: span gaps {span.gap.tolist()}"
    for t in (n // 2, n - 1):
        row = ref.shares({t: 1.0})
        assert float(row.gap.max()) <= 1e-6, f"{arch}: row {t} gaps {row.gap.tolist()}"
        total = row.heads.sum(dim=(1, 2)) + row.residual + row.bias
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-12, rtol=0)


def test_reference_sees_the_sliding_window():
    """On Mistral (window 8) the HF attention the reference reads is zero outside the window."""
    tr_ids = _model("mistral").tokenizer(PROMPT + " " + TARGET)["input_ids"]
    ref = _reference("mistral", tuple(tr_ids))
    A = ref.layers[0].A  # head t s
    t = ref.n - 1
    assert float(A[:, t, : t - WINDOW + 1].abs().max()) == 0.0
    assert float(A[:, t, t - WINDOW + 1 :].sum(-1).sub(1).abs().max()) < 1e-6


# --------------------------------------------------------------------------- ftlens vs the reference


@pytest.mark.parametrize("arch", ARCHS)
def test_ifr_span_matches_hf_reference(arch):
    tr = _trace(arch, "ifr-span")
    ref = _ref_for(tr, arch)
    want = ref.span(*tr.output)
    _close(tr.scores, want.scores, f"{arch} scores")
    hop = tr.hops[0]
    _close(hop.heads, want.heads, f"{arch} heads")
    _close(hop.residual, want.residual, f"{arch} residual shares")
    _close(hop.bias, want.bias, f"{arch} bias shares")
    _close(hop.mlp, want.mlp, f"{arch} MLP shares")


@pytest.mark.parametrize("arch", ARCHS)
def test_ifr_tokenwise_matches_hf_reference(arch):
    tr = _trace(arch, "ifr-tokenwise")
    ref = _ref_for(tr, arch)
    rows = ref.tokenwise(*tr.output)
    _close(tr.row_scores, rows, f"{arch} row scores")
    _close(tr.scores, rows.mean(0), f"{arch} scores")


@pytest.mark.parametrize("arch", ARCHS)
def test_flashtrace_matches_hf_reference(arch):
    tr = _trace(arch, "flashtrace")
    assert tr.reasoning is not None and tr.reasoning[1] <= tr.output[0]
    ref = _ref_for(tr, arch)
    F, contributions, ratios, out_mass, hop_heads = ref.flashtrace(tr.output, tr.reasoning, HOPS)
    assert len(tr.hops) == len(contributions) == HOPS + 1
    _close(tr.scores, F, f"{arch} F")
    for k, (hop, c, e) in enumerate(zip(tr.hops, contributions, hop_heads)):
        _close(hop.scores, c, f"{arch} hop {k} contribution")
        _close(hop.heads, e, f"{arch} hop {k} heads")
    assert tr.thinking_ratios == pytest.approx(ratios, abs=TOL)
    assert tr.output_mass == pytest.approx(out_mass, abs=TOL)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["ifr-span", "flashtrace"])
def test_ftlens_completeness_gap_is_small(arch, method):
    tr = _trace(arch, method)
    gaps = getattr(tr, "completeness", None)
    assert gaps is not None, "Trace.completeness [hop, layer] is missing"
    gaps = torch.as_tensor(gaps)
    assert gaps.shape == (len(tr.hops), _model(arch).cfg.n_layers)
    assert float(gaps.max()) <= TOL, f"{arch} {method}: completeness gaps {gaps.tolist()}"


@pytest.mark.parametrize("arch", ARCHS)
def test_recomputed_attention_equals_hook_pattern(arch):
    """ftlens' attention rows (from captured post-rotary q, k) equal the bridge's hook_pattern,
    which equals the eager attention weights of the separate HF instance."""
    from ftlens.attention import attention_rows
    from ftlens.capture import capture, model_info
    from ftlens.spans import build_sequence

    model = _model(arch)
    seq = build_sequence(model.tokenizer, PROMPT, TARGET, **SPANS)
    assert seq.n > 2 * WINDOW
    info = model_info(model)
    states = capture(model, seq.ids, seq.prompt_len, info)
    row_pos = torch.arange(seq.prompt_len, seq.n)
    _, cache = model.run_with_cache(seq.ids[None])
    ref = _reference(arch, tuple(int(i) for i in seq.ids))
    for layer, st in enumerate(states):
        theirs = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, seq.prompt_len :].float()
        torch.testing.assert_close(
            theirs.double(), ref.layers[layer].A[:, seq.prompt_len :], atol=1e-5, rtol=0
        )
        ours = attention_rows(st.q, st.k, row_pos, info.specs[layer])
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=lambda m: f"{arch} layer {layer}: {m}")


# --------------------------------------------------------------------------- refused structures


@pytest.mark.parametrize("arch", sorted(REFUSED))
def test_refused_family_is_named_before_any_forward_pass(arch, monkeypatch):
    model = _model(arch)

    def no_forward(*args, **kwargs):
        raise AssertionError(f"{arch}: a forward pass ran before the refusal")

    monkeypatch.setattr(model, "forward", no_forward)
    monkeypatch.setattr(model.original_model, "forward", no_forward)
    with pytest.raises(TraceError) as err:
        ftlens.trace(model, PROMPT, TARGET, method="ifr-span", **SPANS)
    assert re.search(REFUSED[arch], str(err.value), re.IGNORECASE), str(err.value)
