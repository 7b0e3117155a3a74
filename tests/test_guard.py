"""The completeness guard (method §3): it records the per-layer gap, it fires when the
decomposition does not match the forward that ran, and the DLA's own guard and per-part
values agree with a reference written from the HF modules (``tests/hf_reference.py``)."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch

import ftlens
import ftlens.capture
import ftlens.residual as R
from ftlens.errors import TraceError

from .hf_reference import ARCHS, HFReference

KW = dict(seed=0, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
PROMPT = "The code is 7351. Remember it. What is the code?"
TARGET = "Let me think. The code was given above, it is 7351."


@functools.cache
def _model(arch: str):
    from ftlens.models import tiny_model

    return tiny_model(arch, **KW)


def _n_hooks(model) -> int:
    return sum(len(getattr(p, "fwd_hooks", [])) for p in model.hook_dict.values())


def _without_post_norm_fold(monkeypatch):
    """Make ftlens describe post-norm blocks as plain pre-norm ones (a broken decomposition)."""
    real = ftlens.capture.describe

    def broken(model):
        fam = real(model)
        return dataclasses.replace(fam, kind="pre-norm", post_norm=None)

    monkeypatch.setattr(ftlens.capture, "describe", broken)


def test_guard_fires_on_a_broken_decomposition_and_names_the_layer(monkeypatch):
    model = _model("gemma2")
    before = _n_hooks(model)
    _without_post_norm_fold(monkeypatch)
    with pytest.raises(TraceError, match=r"completeness guard: at layer 0 .*tolerance 1e-04"):
        ftlens.trace(model, PROMPT, TARGET, chat_template=False)
    with pytest.raises(TraceError, match=r"completeness guard: at layer 0"):
        ftlens.trace(model, PROMPT, TARGET, method="ifr-tokenwise", chat_template=False)
    assert _n_hooks(model) == before  # nothing left registered on the user's model


def test_broken_decomposition_gap_is_large_when_tolerated(monkeypatch):
    """With the tolerance lifted the gap is still recorded: large for the broken fold."""
    _without_post_norm_fold(monkeypatch)
    tr = ftlens.trace(_model("gemma2"), PROMPT, TARGET, chat_template=False, completeness_tol=1e9)
    assert float(tr.completeness.min()) > 1e-2


def test_guard_fires_when_a_user_hook_changes_the_attention_output():
    """An ablation hook on hook_z changes what layer 1 adds; ftlens refuses to decompose it."""
    model = _model("llama")
    model.blocks[1].attn.hook_z.add_hook(lambda z, hook: torch.zeros_like(z))
    try:
        with pytest.raises(TraceError, match=r"at layer 1 .*Remove hooks you registered"):
            ftlens.trace(model, PROMPT, TARGET, chat_template=False)
    finally:
        model.reset_hooks()
    tr = ftlens.trace(model, PROMPT, TARGET, chat_template=False)  # hooks gone: fine again
    assert float(tr.completeness.max()) < 1e-5


def test_completeness_is_recorded_per_hop_and_layer_and_saved(tmp_path):
    model = _model("gemma3")
    tr = ftlens.trace(
        model, PROMPT, TARGET, hops=2, chat_template=False,
        reasoning=ftlens.Select(text="Let me think."), output=ftlens.Select(text="7351."),
    )
    gaps = tr.completeness
    assert gaps.shape == (len(tr.hops), model.cfg.n_layers) == (3, 2)
    assert float(gaps.max()) < 1e-5 and float(gaps.min()) > 0  # float error, measured not assumed
    assert tr.params["completeness_tol"] == 1e-4 and tr.params["family"] == "post-norm"
    assert "completeness: max relative gap" in tr.summary(3)
    path = tr.save(tmp_path / "t.json")
    back = ftlens.Trace.load(path)
    torch.testing.assert_close(back.completeness, gaps)
    raw = json.loads(path.read_text())
    assert len(raw["hops"][0]["completeness_gap"]) == 2


def test_default_tolerance_follows_the_dtype():
    from ftlens.aggregate import TOLERANCES, default_tolerance

    model = _model("llama")
    assert default_tolerance(model) == TOLERANCES[torch.float32] == 1e-4
    assert TOLERANCES[torch.bfloat16] > TOLERANCES[torch.float16] > TOLERANCES[torch.float32]


def test_bad_completeness_tol_is_refused_before_the_forward_pass():
    with pytest.raises(TraceError, match="completeness_tol must be a number > 0"):
        ftlens.trace(_model("llama"), PROMPT, TARGET, completeness_tol=-1)


# --------------------------------------------------------------------------- DLA


def _reference_dla(arch: str, ids: torch.Tensor, span: tuple[int, int]):
    """Per-head and per-MLP direct logit attribution from the HF modules' own outputs.

    The final norm's frozen linear part is measured on the final residual ``x``: for RMS
    norms ``N(x) / x`` elementwise, for LayerNorm ``(N(x) - beta) / (x - mean x)`` applied to
    the centred part.  Head ``h``'s write at row ``t``: ``M_t * sum_s A[h,t,s] u[h,s]`` (``M_t``
    the post-norm's map, 1 otherwise); the MLP's: ``c - b``.
    """
    from ftlens.models import tiny_hf_model

    hf = tiny_hf_model(arch, **KW).double().eval()
    if getattr(hf.config, "_experts_implementation", None) not in (None, "eager"):
        hf.set_experts_implementation("eager")
    ref = HFReference(arch, ids, hf_model=hf)
    final_norm = next(m for n, m in hf.named_modules() if n.endswith(("model.norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")))
    w_u = hf.get_output_embeddings().weight.double()  # [vocab, d]
    a, b = span
    rows = torch.arange(a - 1, b - 1)
    tgt = ids[a:b]
    x = ref.layers[-1].c[rows]
    centre = isinstance(final_norm, torch.nn.LayerNorm)
    with torch.no_grad():
        nx = final_norm(x)
    if centre:
        xc = x - x.mean(-1, keepdim=True)
        lin = (nx - final_norm.bias) / xc

        def read(p):
            return ((p - p.mean(-1, keepdim=True)) * lin * w_u[tgt]).sum()
    else:
        lin = nx / x

        def read(p):
            return (p * lin * w_u[tgt]).sum()

    heads, mlp = [], []
    for layer in ref.layers:
        per_head = torch.einsum("hts,hsd->htd", layer.A[:, rows], layer.u)
        if layer.M is not None:
            per_head = per_head * layer.M[rows][None]
        heads.append(torch.stack([read(per_head[h]) for h in range(per_head.shape[0])]))
        mlp.append(read(layer.c[rows] - layer.b[rows]))
    return torch.stack(heads), torch.stack(mlp)


@pytest.mark.parametrize("arch", ARCHS)
def test_dla_parts_match_the_hf_reference_and_add_up(arch):
    model = _model(arch)
    ids = torch.tensor(model.tokenizer(PROMPT + " " + TARGET)["input_ids"])
    span = (len(ids) - 4, len(ids))
    dla = R.direct_logit_attribution(model, ids=ids, span=span)
    want_heads, want_mlp = _reference_dla(arch, ids, span)
    torch.testing.assert_close(dla.heads.double(), want_heads, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dla.mlp.double(), want_mlp, atol=1e-4, rtol=1e-4)
    assert dla.completeness_gap < 1e-5
    assert abs(dla.gap) <= 1e-4 * max(1.0, abs(dla.total))


def test_dla_guard_fires_on_a_broken_decomposition(monkeypatch):
    model = _model("olmo2")
    ids = torch.tensor(model.tokenizer(PROMPT)["input_ids"])
    _without_post_norm_fold(monkeypatch)
    with pytest.raises(TraceError, match=r"completeness guard \(DLA\)"):
        R.direct_logit_attribution(model, ids=ids, span=(3, 6))


@pytest.mark.parametrize("arch", ARCHS)
def test_dla_read_in_the_traces_own_forward_pass_matches_the_hf_reference(arch):
    """DLACollector's hooks ride on the trace's capture pass (which stops after the last block):
    same heads and MLPs as the HF-module reference, and its total (the model's final norm and
    unembedding on the kept rows, before any soft-cap) equals the standalone pass's total."""
    model = _model(arch)
    text = PROMPT + " " + TARGET
    n = len(model.tokenizer(text)["input_ids"])
    col = R.DLACollector(model)
    tr = ftlens.trace(model, PROMPT, " " + TARGET, output=(-4, None), chat_template=False,
                      collect=lambda seq: col.hooks(seq.ids, seq.output))
    dla = col.result()
    assert tr.ids == model.tokenizer(text)["input_ids"] and tr.output == (n - 4, n)
    want_heads, want_mlp = _reference_dla(arch, torch.tensor(tr.ids), tr.output)
    torch.testing.assert_close(dla.heads.double(), want_heads, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dla.mlp.double(), want_mlp, atol=1e-4, rtol=1e-4)
    alone = R.direct_logit_attribution(model, ids=tr.ids, span=tr.output)
    assert dla.total == pytest.approx(alone.total, abs=1e-4 * max(1.0, abs(alone.total)))
    assert abs(dla.gap) <= 1e-4 * max(1.0, abs(dla.total))
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
