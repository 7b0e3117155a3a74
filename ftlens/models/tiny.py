"""Tiny random-weight models of every supported family (and of a few refused ones), for tests.

Built from local configs (no hub), with grouped-query attention where the family has it,
random norm gains and biases, and the SmolLM2 tokenizer. :func:`tiny_model` boots one as a
``TransformerBridge``; :func:`tiny_hf_model` is the bare HF model behind it (the same seed
gives the same weights, so tests compare a bridge against an independent HF copy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .boot import boot_bridge
from .bundled import default_tokenizer
from .options import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

__all__ = ["tiny_model"]

#: Tiny random test models: key -> HF architecture (see :func:`tiny_model`).
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "neox": "GPTNeoXForCausalLM",
    "neox_seq": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "phi": "PhiForCausalLM",
    # structures ftlens refuses (for refusal tests)
    "bloom": "BloomForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "jamba": "JambaForCausalLM",
    "bart": "BartForConditionalGeneration",
}
#: Tiny families that have no grouped-query attention: ``n_kv_heads`` is forced to ``n_heads``.
_MHA_ONLY = frozenset({"gpt2", "neox", "neox_seq", "gptj", "phi", "bloom", "bart"})
ENCODER_DECODER = frozenset({"bart"})
TINY_WINDOW = 8  # sliding window of the tiny models that have one: shorter than test sequences
_TINY_QUERY_SCALAR = 24  # Gemma 2/3 query_pre_attn_scalar (scale 24**-0.5, not d_head**-0.5)


def _tiny_config(
    arch: str,
    *,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    d_mlp: int,
    n_ctx: int,
    vocab_size: int,
    initializer_range: float,
    tie_word_embeddings: bool,
) -> Any:
    """The HF config of a tiny model of family ``arch`` (see :data:`ARCHITECTURES`)."""
    import transformers as hf

    d_head = d_model // n_heads
    window = TINY_WINDOW
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)  # SmolLM2: <|im_start|>, <|im_end|>
    common = dict(
        vocab_size=vocab_size,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        architectures=[ARCHITECTURES[arch]],
        attn_implementation="eager",
        **special,
    )
    # Llama-style configs (hidden_size / num_hidden_layers / num_attention_heads ...).
    llama_like = dict(
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=n_ctx,
        **common,
    )
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    gpt_like = dict(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=n_ctx, n_inner=d_mlp, **common)
    if arch == "llama":
        return hf.LlamaConfig(head_dim=d_head, **llama_like)
    if arch == "qwen2":
        return hf.Qwen2Config(head_dim=d_head, **llama_like)
    if arch == "qwen3":
        return hf.Qwen3Config(head_dim=d_head, **llama_like)
    if arch == "mistral":
        return hf.MistralConfig(head_dim=d_head, sliding_window=window, **llama_like)
    if arch == "mixtral":
        return hf.MixtralConfig(
            head_dim=d_head, sliding_window=window, num_local_experts=4, num_experts_per_tok=2, **llama_like
        )
    if arch == "qwen3_moe":
        return hf.Qwen3MoeConfig(
            head_dim=d_head, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=d_mlp,
            decoder_sparse_step=1, mlp_only_layers=[], **llama_like,
        )  # fmt: skip
    if arch == "gemma":
        return hf.GemmaConfig(head_dim=d_head, **llama_like)
    if arch == "gemma2":
        return hf.Gemma2Config(
            head_dim=d_head, sliding_window=window, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            query_pre_attn_scalar=_TINY_QUERY_SCALAR, layer_types=alternating, **llama_like,
        )  # fmt: skip
    if arch == "gemma3":
        return hf.Gemma3TextConfig(
            head_dim=d_head, sliding_window=window, query_pre_attn_scalar=_TINY_QUERY_SCALAR,
            layer_types=alternating, **llama_like,
        )  # fmt: skip
    if arch == "olmo2":
        return hf.Olmo2Config(**llama_like)
    if arch == "gpt2":
        return hf.GPT2Config(**gpt_like)
    if arch in ("neox", "neox_seq"):
        return hf.GPTNeoXConfig(rotary_pct=0.5, use_parallel_residual=arch == "neox", **llama_like)
    if arch == "gptj":
        return hf.GPTJConfig(rotary_dim=d_head // 2, **gpt_like)
    if arch == "phi3":
        return hf.Phi3Config(sliding_window=window, **llama_like)
    if arch == "phi":
        return hf.PhiConfig(partial_rotary_factor=0.5, **llama_like)
    # ----- refused structures (builders for refusal tests)
    if arch == "bloom":  # ALiBi position biases
        return hf.BloomConfig(hidden_size=d_model, n_layer=n_layers, n_head=n_heads, **common)
    if arch == "gpt_oss":  # attention sinks (learned per-head softmax sink logits)
        return hf.GptOssConfig(
            head_dim=d_head, sliding_window=window, num_local_experts=4, num_experts_per_tok=2,
            layer_types=alternating, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            **llama_like,
        )  # fmt: skip
    if arch == "jamba":  # hybrid attention / Mamba (state-space) layers
        return hf.JambaConfig(
            num_experts=1, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
            expert_layer_period=1, expert_layer_offset=0, mamba_d_state=4, mamba_d_conv=4,
            mamba_expand=2, mamba_dt_rank=4, **llama_like,
        )  # fmt: skip
    if arch == "bart":  # encoder-decoder
        return hf.BartConfig(
            d_model=d_model, encoder_layers=n_layers, decoder_layers=n_layers, encoder_attention_heads=n_heads,
            decoder_attention_heads=n_heads, encoder_ffn_dim=d_mlp, decoder_ffn_dim=d_mlp,
            max_position_embeddings=n_ctx, init_std=initializer_range, decoder_start_token_id=2,
            **{k: v for k, v in common.items() if k != "initializer_range"},
        )  # fmt: skip
    raise ValueError(f"Unknown tiny arch {arch!r}: use one of {sorted(ARCHITECTURES)}.")


def _randomise_norms_and_biases(model: PreTrainedModel, scale: float) -> None:
    """Perturb every norm gain and bias (HF initialises them to 1 / 0): code that ignores
    a bias, a LayerNorm bias or a norm weight then gives a different answer.

    A parameter is a norm gain when it is a direct ``weight`` of a module whose class name
    contains ``Norm`` (LayerNorm, ``*RMSNorm``, ...), whatever the module is called
    (``ln_1``, ``ln_f``, ``input_layernorm``, ``q_norm``). Gemma-style norms store ``w`` with
    gain ``1 + w``; adding noise to ``w`` randomises the gain all the same.
    """
    norm_gains = {
        id(p)
        for m in model.modules()
        if "norm" in type(m).__name__.lower()
        for n, p in m.named_parameters(recurse=False)
        if n == "weight"
    }
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith(".bias") or pname.endswith("_bias"):
                param.normal_(0.0, scale)
            elif id(param) in norm_gains or "norm" in pname:
                param.add_(torch.randn_like(param), alpha=scale)


def tiny_hf_model(
    arch: str,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int | None = None,
    n_ctx: int = 512,
    vocab_size: int = 49152,
    initializer_range: float = 0.1,
    tie_word_embeddings: bool = False,
) -> PreTrainedModel:
    """The bare random HF model behind :func:`tiny_model` (float32, CPU, eager, eval).

    Families without grouped-query attention (:data:`_MHA_ONLY`) get ``n_kv_heads = n_heads``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown tiny arch {arch!r}: use one of {sorted(ARCHITECTURES)}.")
    if arch in _MHA_ONLY:
        n_kv_heads = n_heads
    if d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError("need d_model % n_heads == 0 and n_heads % n_kv_heads == 0")
    config = _tiny_config(
        arch,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_mlp=d_mlp or 2 * d_model,
        n_ctx=n_ctx,
        vocab_size=vocab_size,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    auto = AutoModelForSeq2SeqLM if arch in ENCODER_DECODER else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
        _randomise_norms_and_biases(model, initializer_range)
    return model.eval()


def tiny_model(
    arch: str,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int | None = None,
    n_ctx: int = 512,
    initializer_range: float = 0.1,
    tie_word_embeddings: bool = False,
    device: str | torch.device | None = "cpu",
) -> TransformerBridge:
    """A small random-weight model for tests, booted as a ``TransformerBridge``; no hub.

    Args:
        arch: a key of ``ARCHITECTURES``. Pre-norm sequential: ``"llama"``, ``"qwen2"``
            (q/k/v biases), ``"qwen3"`` (RMS QK-norm per head), ``"mistral"`` (sliding
            window 8), ``"mixtral"`` (window 8, 4 experts, 2 per token), ``"qwen3_moe"``,
            ``"gemma"`` (norm gain ``1 + w``), ``"phi3"`` (fused qkv, window 8), ``"gpt2"``
            (LayerNorm, learned positions, biases), ``"neox_seq"``. Post-attention norm:
            ``"gemma2"`` (soft-capping 50 / 30, window 8 on alternate layers,
            ``query_pre_attn_scalar`` 24), ``"gemma3"`` (alternating sliding / full
            layers), ``"olmo2"``. Parallel attention + MLP: ``"neox"`` (partial rotary),
            ``"gptj"`` (rotary_dim ``d_head / 2``), ``"phi"`` (partial rotary). Structures
            ftlens refuses, for refusal tests: ``"bloom"`` (ALiBi), ``"gpt_oss"``
            (attention sinks), ``"jamba"`` (hybrid attention / Mamba), ``"bart"``
            (encoder-decoder).
        seed: same seed, same weights (the global torch RNG is left untouched).
        n_layers, d_model, n_heads, n_kv_heads: shape; ``n_kv_heads < n_heads`` gives
            grouped-query attention (the default: 4 query heads share 2 KV heads).
            Families without GQA (GPT-2, GPT-NeoX, GPT-J, Phi, BLOOM, BART) use
            ``n_kv_heads = n_heads``.
        d_mlp: MLP width (default ``2 * d_model``). n_ctx: max positions.
        initializer_range: std of the random weights. 0.1 (HF uses 0.02) gives
            non-uniform attention patterns, so attribution tests discriminate.
            Every bias and every norm gain (RMSNorm and LayerNorm weights and biases,
            whatever the module is called) is randomised with the same scale.
        tie_word_embeddings: share W_E and W_U (SmolLM2 does; off by default).
        device: where to put it (default CPU; ``None`` = cuda if available).

    The tokenizer is SmolLM2's (vocab 49152, ``config.vocab_size`` matches), so text
    works; float32; ``model.cfg.model_name`` is ``"ftlens/tiny-<arch>"``.
    """
    tokenizer = default_tokenizer()
    hf_model = tiny_hf_model(
        arch,
        seed=seed,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    assert len(tokenizer) <= hf_model.config.vocab_size
    return boot_bridge(f"ftlens/tiny-{arch}", hf_model, tokenizer, resolve_device(device), torch.float32)
