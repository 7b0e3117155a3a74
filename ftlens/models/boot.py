"""Wrapping an already-loaded Hugging Face model as a TransformerLens ``TransformerBridge``.

The bridge is booted in its default mode: raw Hugging Face weights, logits equal to the
HF model's. We do **not** call ``enable_compatibility_mode()``: it folds the norms and
centres weights (HookedTransformer's coordinate system), which would change the
quantities attribution is computed from, and every hook ftlens needs already fires
without it (hook names: :mod:`ftlens.bridge`; shapes and the full list:
``notes/bridge_hooks.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def boot_bridge(
    name: str,
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    dtype: torch.dtype,
) -> TransformerBridge:
    """Wrap an already-loaded HF model: no hub access (config comes from ``hf_model``).

    ``boot_transformers`` leaves a pre-loaded model where it is, so it is cast and
    moved here; it also switches the model to eager attention, which the
    pattern/score hooks need. ``name`` becomes ``model.cfg.model_name``.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    return TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
