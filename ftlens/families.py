"""Block families: what ``a``, ``b``, the per-head write and the attention recomputation are.

ftlens decomposes each block's attention update exactly (method §3-§4):

    b_t - a_t = sum_{h, s} z[h, t <- s] + bias part

and what ``b``, the edge ``z`` and the queries/keys of the recomputed attention are
depends on the block's structure.  One :class:`BlockFamily` per structure says it,
read once per model from its Hugging Face ``model_type`` and configuration, and
checked against the bridge's components:

``pre-norm``
    sequential pre-norm blocks (Llama, Qwen2/3, Mistral, Mixtral, Qwen3-MoE, Gemma 1,
    SmolLM, Phi-3, GPT-2): ``b`` is the residual after the attention add, read at the
    hook of the next sub-layer's input (``ln2.hook_in``); ``z = A[h,t,s] W_O[h] v[s]``.
``post-norm``
    a norm on the attention output before the add (Gemma 2/3 "sandwich", OLMo2):
    ``b_t - a_t = N(o_t)`` with ``N(x) = g * x * rsqrt(mean(x^2) + eps)``.  With the
    per-token scale ``s_t = rsqrt(mean(o_t^2) + eps)`` frozen at its actual value,
    ``N(o_t) = s_t g * o_t`` exactly, so ``z = s_t A[h,t,s] (g * W_O[h] v[s])``: ftlens
    folds ``g`` into ``W_O`` (and ``b_O``) and ``s_t`` into the attention rows.
    ``b`` is read at ``ln2.hook_in`` (Gemma) or ``mlp.hook_in`` (OLMo2, no pre-norm).
``parallel``
    attention and MLP read the same ``a`` (GPT-NeoX/Pythia, GPT-J, Phi-1/2):
    ``c = a + attn_out + mlp_out``.  The attention step's whole is the virtual mid
    residual ``b = a + attn_out`` (``attn.hook_out``), so the MLP share is taken
    against ``c`` as for sequential blocks.

Queries and keys as they enter the softmax (``qk``):

- ``"rot"``: ``attn.hook_rot_q/k`` (rotary bridges; QK-norm happens before);
- ``"normed"``: ``attn.hook_q_normed/k_normed`` (QK-norm after RoPE);
- ``"plain"``: ``attn.q/k.hook_out`` (no rotary: GPT-2's learned absolute positions
  are part of ``a``);
- ``"bridge-rotary"``: ``attn.q/k.hook_out`` rotated with the bridge's own
  ``_apply_rotary_pos_emb`` and the ``hook_cos/hook_sin`` it fired (joint-QKV bridges
  whose ``hook_rot_q/k`` never fire: GPT-NeoX, Phi-3);
- ``"gptj"``: ``attn.q/k.hook_out`` rotated with GPT-J's own (interleaved, partial)
  rotary from its Hugging Face module.

Anything else is refused *before* the forward pass by :func:`describe`, with a
:class:`~ftlens.errors.TraceError` that names the structure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .bridge import hf_config
from .errors import TraceError

__all__ = ["BlockFamily", "describe", "SUPPORTED", "REFUSED", "rotate_qk"]


@dataclass(frozen=True)
class BlockFamily:
    """How one model's blocks decompose (see the module docstring)."""

    model_type: str
    kind: str  # "pre-norm" | "post-norm" | "parallel"
    mid_hook: str | None  # hook under blocks.{l} carrying b; None: b = a + attn.hook_out
    post_norm: str | None  # bridge submodule of the post-attention norm ("ln1_post")
    qk: str  # "rot" | "normed" | "plain" | "bridge-rotary" | "gptj"

    @property
    def needs_attn_out(self) -> bool:
        """Whether capture must keep the attention output rows ``o_t`` (attn.hook_out)."""
        return self.mid_hook is None or self.post_norm is not None


#: model_type -> (kind, qk); kind "neox" is resolved from ``use_parallel_residual``.
SUPPORTED: dict[str, tuple[str, str]] = {
    "llama": ("pre-norm", "rot"),
    "mistral": ("pre-norm", "rot"),
    "mixtral": ("pre-norm", "rot"),
    "qwen2": ("pre-norm", "rot"),
    "qwen3": ("pre-norm", "rot"),
    "qwen3_moe": ("pre-norm", "rot"),
    "gemma": ("pre-norm", "rot"),
    "phi3": ("pre-norm", "bridge-rotary"),
    "gpt2": ("pre-norm", "plain"),
    "gemma2": ("post-norm", "rot"),
    "gemma3_text": ("post-norm", "rot"),
    "olmo2": ("post-norm", "rot"),
    "gpt_neox": ("neox", "bridge-rotary"),
    "gptj": ("parallel", "gptj"),
    "phi": ("parallel", "rot"),
}

#: model_type -> why ftlens refuses it (method §6).
REFUSED: dict[str, str] = {
    "bloom": "ALiBi attention biases (no rotary or absolute positions)",
    "mpt": "ALiBi attention biases",
    "falcon": "ALiBi or multi-query parallel blocks with a shared norm (no block description yet)",
    "gpt_oss": "attention sinks (a learned per-head logit that takes softmax mass without a source token)",
    "mamba": "state-space (Mamba) layers, not attention",
    "mamba2": "state-space (Mamba) layers, not attention",
    "falcon_mamba": "state-space (Mamba) layers, not attention",
    "jamba": "a hybrid of attention and state-space (Mamba) layers",
    "bamba": "a hybrid of attention and state-space (Mamba) layers",
    "falcon_h1": "a hybrid of attention and state-space (Mamba) layers",
    "granitemoehybrid": "a hybrid of attention and state-space (Mamba) layers",
    "lfm2": "a hybrid of attention and short-convolution layers",
    "qwen3_next": "a hybrid of attention and linear-attention (gated delta-net) layers",
    "gemma3": "the multimodal Gemma 3 wrapper; load the text model (Gemma3ForCausalLM)",
}


def _refuse(model_type: str, why: str) -> TraceError:
    supported = ", ".join(sorted(SUPPORTED))
    return TraceError(
        f"ftlens cannot attribute {model_type!r} models: {why}. Exact block descriptions exist for: "
        f"{supported} (see the README's model-support table)"
    )


def describe(model: Any) -> BlockFamily:
    """The block family of ``model``, or a :class:`TraceError` naming what is unsupported.

    Runs no forward pass: everything is read from the config and the bridge's modules.
    """
    cfg = hf_config(model)
    if cfg is None:
        raise TraceError("ftlens needs a TransformerBridge booted from a Hugging Face model (no HF config found)")
    model_type = str(getattr(cfg, "model_type", "") or "unknown")
    if bool(getattr(cfg, "is_encoder_decoder", False)):
        raise _refuse(model_type, "an encoder-decoder (ftlens attributes decoder-only models)")
    if model_type in REFUSED:
        raise _refuse(model_type, REFUSED[model_type])
    if model_type not in SUPPORTED:
        raise _refuse(model_type, "no block description for this model type")
    if str(getattr(getattr(model, "cfg", None), "positional_embedding_type", "")) == "alibi":
        raise _refuse(model_type, "ALiBi attention biases")
    blocks = list(getattr(model, "blocks", []))
    if not blocks:
        raise _refuse(model_type, "no transformer blocks found on the bridge")
    for layer, block in enumerate(blocks):
        hf_attn = getattr(getattr(block, "attn", None), "original_component", None)
        if getattr(hf_attn, "sinks", None) is not None:
            raise _refuse(model_type, f"attention sinks at layer {layer}")
    kind, qk = SUPPORTED[model_type]
    if kind == "neox":
        kind = "parallel" if bool(getattr(cfg, "use_parallel_residual", True)) else "pre-norm"
    if qk == "rot" and bool(getattr(model.cfg, "qk_norm_after_rope", False)):
        qk = "normed"
    subs = set(blocks[0]._modules)
    post_norm = "ln1_post" if kind == "post-norm" else None
    if kind == "parallel":
        mid = None
    elif "ln2" in subs:
        mid = "ln2.hook_in"
    else:
        mid = "mlp.hook_in"
    if kind == "post-norm" and "ln1_post" not in subs:
        raise _refuse(model_type, "a post-attention norm that the bridge does not expose as ln1_post")
    return BlockFamily(model_type=model_type, kind=kind, mid_hook=mid, post_norm=post_norm, qk=qk)


def qk_hooks(family: BlockFamily) -> tuple[str, str]:
    """Hook names (under ``blocks.{l}.attn``) that carry the queries and keys ftlens keeps."""
    if family.qk == "rot":
        return "hook_rot_q", "hook_rot_k"
    if family.qk == "normed":
        return "hook_q_normed", "hook_k_normed"
    return "q.hook_out", "k.hook_out"


def rotate_qk(
    family: BlockFamily,
    attn: Any,
    q: Float[Tensor, "head row dh"],
    k: Float[Tensor, "kv pos dh"],
    row_pos: Tensor,
    cos: Tensor | None,
    sin: Tensor | None,
) -> tuple[Float[Tensor, "head row dh"], Float[Tensor, "kv pos dh"]]:
    """Queries and keys as they enter the softmax, from the pre-rotary ``q.hook_out/k.hook_out``.

    ``"bridge-rotary"``: the bridge's own ``_apply_rotary_pos_emb`` with the cos/sin it
    fired (``hook_cos``/``hook_sin``, ``[1, pos, rotary_dim]``); ``"gptj"``: the Hugging Face
    GPT-J module's own rotary (interleaved pairs on the first ``rotary_dim`` channels).
    Other families are returned unchanged.
    """
    if family.qk == "bridge-rotary":
        if cos is None or sin is None:
            raise TraceError("the attention's hook_cos/hook_sin did not fire; cannot rotate queries and keys")
        rows = row_pos.to(cos.device)
        q_rot, _ = attn._apply_rotary_pos_emb(q[None], q[None], cos[:, rows], sin[:, rows])
        k_rot, _ = attn._apply_rotary_pos_emb(k[None], k[None], cos, sin)
        return q_rot[0], k_rot[0]
    if family.qk == "gptj":
        hf_attn = attn.original_component
        mod = sys.modules[type(hf_attn).__module__]
        n_pos = k.shape[1]
        pos_ids = torch.arange(n_pos, device=k.device)[None]
        table = hf_attn._get_embed_positions(pos_ids)  # [1, max_pos, rotary_dim]
        sincos = table[0, :n_pos].to(k.dtype)
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        rd = int(hf_attn.rotary_dim) if hf_attn.rotary_dim is not None else k.shape[-1]

        def rot(x: Tensor, pos: Tensor) -> Tensor:  # x: [n, pos, dh] -> HF layout [1, pos, n, dh]
            xs = x.transpose(0, 1)[None]
            head, tail = xs[..., :rd], xs[..., rd:]
            head = mod.apply_rotary_pos_emb(head, sin[pos][None], cos[pos][None])
            return torch.cat([head, tail], dim=-1)[0].transpose(0, 1)

        return rot(q, row_pos.to(k.device)), rot(k, torch.arange(n_pos, device=k.device))
    return q, k


def attention_scale(family: BlockFamily, attn: Any, layer: int, d_head: int) -> float:
    """The factor on ``q . k`` before the softmax, as the forward that runs applies it."""
    hf_attn = getattr(attn, "original_component", None)
    if family.qk in ("rot", "normed"):
        return float(getattr(hf_attn, "scaling", None) or d_head**-0.5)
    scale = d_head**-0.5  # joint-QKV bridges and GPT-J divide by sqrt(d_head)
    cfg = getattr(attn, "config", None)
    if family.qk == "plain" and bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False)):
        scale /= float(layer + 1)
    return scale


def sliding_window(hf_attn: Any, cfg: Any, layer: int) -> int | None:
    """The layer's sliding window ``W`` (keys with ``t - s < W`` are seen), ``None`` if full.

    Read where Hugging Face reads it: the attention module's ``sliding_window`` when it
    has one (Gemma 2/3 set it per layer), else the config's per-layer ``layer_types``,
    else ``config.sliding_window`` (unless ``use_sliding_window`` is off).
    """
    if hf_attn is not None and hasattr(hf_attn, "sliding_window"):
        w = hf_attn.sliding_window
        return int(w) if w else None
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and layer < len(types):
        return int(window) if types[layer] == "sliding_attention" else None
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    return int(window)


def post_norm_gain(norm: Any, d_model: int) -> tuple[Float[Tensor, " d"], float]:
    """``(g, eps)`` of an RMS post-norm ``N(x) = g * x * rsqrt(mean(x^2) + eps)``.

    ``g`` is measured from the module itself on ``x = 1`` (where ``mean(x^2) = 1``):
    ``g = N(1) * sqrt(1 + eps)``; this covers Gemma's ``1 + w`` and OLMo2's ``w`` alike.
    """
    hf = getattr(norm, "original_component", norm)
    eps = getattr(hf, "variance_epsilon", None)
    if eps is None:
        eps = getattr(hf, "eps", None)
    if eps is None:
        raise TraceError(f"post-attention norm {type(hf).__name__} has no eps; ftlens cannot fold it")
    weight = next((p for p in hf.parameters()), None)
    ones = torch.ones(1, d_model, device=weight.device if weight is not None else "cpu")
    if weight is not None:
        ones = ones.to(weight.dtype)
    with torch.no_grad():
        out = hf(ones).float()[0]
    return out * (1.0 + float(eps)) ** 0.5, float(eps)
