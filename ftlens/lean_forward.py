"""A memory-lean attention forward for the capture pass (no ``[H, T, T]`` tensor).

The TransformerBridge re-implements attention in eager mode so that it can fire
``hook_attn_scores`` and ``hook_pattern``; that materialises a ``[H, T, T]``
tensor per layer (several copies: scores, mask, softmax) and is the dominant cost
of a long capture.  ftlens never reads those two hooks (attention rows are
recomputed later, only for target rows, by :mod:`ftlens.attention`), so during
capture each attention bridge's ``forward`` is replaced, on the instance and only
for the duration of a ``with fast_attention(model):`` block, by one that computes

    out = softmax(scale * q k^T + causal mask) v          (fused: torch SDPA)

and still fires every other hook on the live path, in the stock order:
``attn.hook_in``, ``q/k/v`` (``hook_in``/``hook_out`` of the linear bridges),
``hook_q_normed``/``hook_k_normed`` (QK-norm), ``hook_cos``/``hook_sin``,
``hook_rot_q``/``hook_rot_k``, ``o`` (``hook_z``) and ``attn.hook_out``.

It is used only where it is exactly the stock computation up to float rounding:
a standard rotary decoder layer (full-width RoPE in the Llama layout, QK-norm
before RoPE or none, no soft-capping, no sliding window, no attention sinks, no
gates, no split-QKV inputs, no KV cache, eval mode) with no hook registered on
``hook_attn_scores`` / ``hook_pattern``.  Any other layer, or any call that does
not fit (for example a non-causal mask), runs the stock forward unchanged.  The
original forwards are restored on exit, also when the forward raises.  The
equality with the stock forward is pinned by ``tests/test_fastattn.py``.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fast_attention", "supports_fast_attention"]


def _has_hooks(point: Any) -> bool:
    return bool(getattr(point, "fwd_hooks", None)) or bool(getattr(point, "_forward_hooks", None))


def supports_fast_attention(attn: Any) -> bool:
    """Whether ``attn`` (an attention bridge) is a layer the lean forward reproduces exactly."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    if type(attn) is not PositionEmbeddingsAttentionBridge:  # subclasses may change the maths
        return False
    hf = getattr(attn, "original_component", None)
    cfg = attn.config
    if hf is None or cfg is None:
        return False
    if any(getattr(hf, name, None) is not None for name in ("sinks", "attn_logit_softcapping", "key_multiplier")):
        return False
    if getattr(hf, "sliding_window", None) is not None:
        return False
    rope_params = getattr(getattr(hf, "config", None), "rope_parameters", None)
    if isinstance(rope_params, dict) and rope_params.get("llama_4_scaling_beta") is not None:
        return False
    if getattr(getattr(hf, "config", None), "clip_qkv", None) is not None:
        return False
    flags = (
        "use_split_qkv_input", "use_attn_in", "gated_q_proj", "qk_norm_after_rope",
        "rotary_interleaved_cos_sin", "rotary_adjacent_pairs", "use_attn_result",
    )
    if any(bool(getattr(cfg, f, False)) for f in flags):
        return False
    if getattr(cfg, "positional_embedding_type", "rotary") != "rotary":
        return False
    if attn._modules.get("gate") is not None or hasattr(attn, "hook_gate") or hasattr(attn, "hook_q_gate"):
        return False
    if type(attn)._pre_output_projection is not PositionEmbeddingsAttentionBridge._pre_output_projection:
        return False
    if not all(name in attn.submodules for name in ("q", "k", "v", "o")):
        return False
    has_q_norm = "q_norm" in attn.submodules
    if has_q_norm and (attn._qk_norm_phase != "post_reshape" or attn._qk_norm_per_head):
        return False
    if "k_norm" in attn.submodules and not has_q_norm:
        return False
    if not (attn.is_causal and not getattr(attn, "is_cross_attention", False)):
        return False
    return True


def _mask_is_plain_causal(mask: Tensor | None, n_q: int, n_kv: int, cache: dict) -> bool:
    """True if ``mask`` adds nothing to the causal mask (None, or a 4D causal mask of batch 1)."""
    if mask is None:
        return True
    if mask.ndim != 4 or mask.shape[0] != 1 or n_q != n_kv:
        return False
    key = (mask.data_ptr(), tuple(mask.shape), mask.dtype, getattr(mask, "_version", 0))
    if key in cache:
        return cache[key]
    m = mask[0, :, :n_q, :n_kv]
    if m.dtype == torch.bool:
        allowed = m
    else:
        allowed = m == 0
        if not bool(((m == 0) | (m <= torch.finfo(m.dtype).min / 2) | torch.isneginf(m)).all()):
            cache[key] = False
            return False
    causal = torch.ones(n_q, n_kv, dtype=torch.bool, device=m.device).tril_()
    ok = bool((allowed == causal[None]).all())
    cache[key] = ok
    return ok


def _cache_is_empty(attn: Any, cache: Any) -> bool:
    """No KV cache, or one that holds nothing yet for this layer (a fresh forward)."""
    if cache is None:
        return True
    layer = getattr(attn, "_layer_idx", None)
    try:
        return layer is not None and int(cache.get_seq_length(layer)) == 0
    except Exception:  # an unknown cache type: let the stock forward handle it
        return False


def _lean_forward(self: Any, stock: Any, mask_cache: dict, *args: Any, **kwargs: Any) -> Any:
    """The stock forward of a plain rotary layer with SDPA in place of eager softmax."""
    if (
        self.training
        or _has_hooks(self.hook_attn_scores)
        or _has_hooks(self.hook_pattern)
        or kwargs.get("layer_past") is not None
        or kwargs.get("output_attentions")
        or not _cache_is_empty(self, kwargs.get("past_key_values"))
    ):
        return stock(*args, **kwargs)
    call_kwargs = dict(kwargs)
    if "hidden_states" in call_kwargs:
        hidden_states, rest = call_kwargs.pop("hidden_states"), args
    elif args and isinstance(args[0], torch.Tensor):
        hidden_states, rest = args[0], args[1:]
    else:
        return stock(*args, **kwargs)
    position_embeddings = call_kwargs.get("position_embeddings")
    attention_mask = call_kwargs.get("attention_mask")
    hf_attn = self.original_component
    head_dim = hf_attn.head_dim
    n_pos = hidden_states.shape[-2]
    if (
        rest
        or hidden_states.ndim != 3
        or not isinstance(position_embeddings, tuple)
        or len(position_embeddings) != 2
        or position_embeddings[0].shape[-1] != head_dim
        or not _mask_is_plain_causal(attention_mask, n_pos, n_pos, mask_cache)
    ):
        return stock(*args, **kwargs)

    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    hidden_states = self.hook_in(hidden_states)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, head_dim)
    q = self.q(hidden_states).view(hidden_shape).transpose(1, 2)
    k = self.k(hidden_states).view(hidden_shape).transpose(1, 2)
    v = self.v(hidden_states).view(hidden_shape).transpose(1, 2)
    if "q_norm" in self.submodules:  # post-reshape QK-norm (Qwen3), before RoPE
        q = self.hook_q_normed(self.q_norm(q))
        if "k_norm" in self.submodules:
            k = self.hook_k_normed(self.k_norm(k))
    cos, sin = self._apply_position_embedding_hooks(position_embeddings)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    q = self.hook_rot_q(q)
    k = self.hook_rot_k(k)
    k, v = self._update_kv_cache(k, v, **call_kwargs)  # the bridge passes an empty cache
    if k.shape[-2] != q.shape[-2]:
        raise RuntimeError(f"{self.name}: KV cache was not empty; fast attention cannot be used")
    groups = getattr(hf_attn, "num_key_value_groups", 1)
    if groups > 1:
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scaling = getattr(hf_attn, "scaling", head_dim**-0.5)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
    out = out.transpose(1, 2).contiguous().reshape(*input_shape, -1)
    o_weight = getattr(getattr(self.o, "original_component", None), "weight", None)
    if isinstance(o_weight, torch.Tensor) and o_weight.dtype.is_floating_point and out.dtype != o_weight.dtype:
        out = out.to(dtype=o_weight.dtype)
    out = self.hook_out(self.o(out))
    return out, None


@contextlib.contextmanager
def fast_attention(model: Any, enabled: bool = True) -> Iterator[int]:
    """Swap in the lean forward on every supported attention bridge of ``model``.

    Yields the number of layers swapped.  Instance attributes are restored (or
    removed) on exit, whatever happens inside the block.
    """
    swapped: list[tuple[Any, bool, Any]] = []
    cache: dict = {}  # causal-mask checks, shared by all layers (HF passes one mask object)
    try:
        if enabled:
            for block in getattr(model, "blocks", []):
                attn = getattr(block, "attn", None)
                if attn is None or not supports_fast_attention(attn):
                    continue
                had = "forward" in attn.__dict__
                before = attn.__dict__.get("forward")
                stock = attn.forward

                def lean(self, *a, _stock=stock, _cache=cache, **kw):
                    return _lean_forward(self, _stock, _cache, *a, **kw)

                swapped.append((attn, had, before))
                # object.__setattr__: bridge components forward attribute writes to the HF module
                object.__setattr__(attn, "forward", types.MethodType(lean, attn))
        yield len(swapped)
    finally:
        for attn, had, before in reversed(swapped):
            if had:
                object.__setattr__(attn, "forward", before)
            else:
                attn.__dict__.pop("forward", None)
