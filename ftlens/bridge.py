"""What ftlens reads from a TransformerBridge, in one place: its device, its Hugging Face
model and config, hook names, and temporary hooks that are always removed.

Hook names follow TransformerLens' ``blocks.{layer}.{name}`` scheme (like
``transformer_lens.utils.get_act_name``); :func:`act_name` builds them, so no other module
spells the pattern out.

The hooks ftlens reads on a bridge booted in its default mode (raw HF weights, no
``enable_compatibility_mode()``; per block ``l``; ``notes/bridge_hooks.md`` has the full
list and how it was measured)::

    blocks.{l}.hook_resid_pre     [batch, pos, d_model]   (= blocks.{l}.hook_in)
    blocks.{l}.hook_attn_out      [batch, pos, d_model]   (= blocks.{l}.attn.hook_out)
    blocks.{l}.hook_resid_mid     [batch, pos, d_model]   (= blocks.{l}.ln2.hook_in)
    blocks.{l}.hook_mlp_out       [batch, pos, d_model]   (= blocks.{l}.mlp.hook_out)
    blocks.{l}.hook_resid_post    [batch, pos, d_model]   (= blocks.{l}.hook_out)
    blocks.{l}.ln1/ln2.hook_scale [batch, pos, 1]         (RMSNorm 1/rms factor)
    blocks.{l}.attn.hook_q        [batch, pos, n_heads, d_head]
    blocks.{l}.attn.hook_k / hook_v  [batch, pos, n_key_value_heads, d_head]  (NOT repeated)
    blocks.{l}.attn.hook_rot_q / hook_rot_k   (after RoPE)
    blocks.{l}.attn.hook_attn_scores / hook_pattern  [batch, n_heads, query, key]
    blocks.{l}.attn.hook_z        [batch, pos, n_heads, d_head]  (= attn.o.hook_in)
    blocks.{l}.attn.hook_result   [batch, pos, n_heads, d_model] only after
                                  ``model.set_use_attn_result(True)``
    blocks.{l}.mlp.hook_pre / hook_pre_linear / hook_post   [batch, pos, d_mlp]

with ``hook_resid_mid = hook_resid_pre + hook_attn_out`` and
``hook_resid_post = hook_resid_mid + hook_mlp_out`` exactly (sequential pre-norm blocks;
other structures: :mod:`ftlens.families`), and
``hook_z[:, :, h] = hook_pattern[:, h] @ hook_v[:, :, h // (n_heads // n_key_value_heads)]``.
``model.blocks[l].attn.W_O`` is ``[n_heads, d_head, d_model]``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

__all__ = ["device_of", "hf_model", "hf_config", "act_name", "temporary_hooks"]


def device_of(model: Any) -> torch.device:
    """The device of the model's first parameter (where its inputs go)."""
    return next(model.parameters()).device


def hf_model(model: Any) -> Any:
    """The Hugging Face model a bridge wraps (the model itself if it is not a bridge)."""
    return getattr(model, "original_model", model)


def hf_config(model: Any) -> Any:
    """The Hugging Face config behind a bridge (``None`` if there is none)."""
    return getattr(getattr(model, "original_model", None), "config", None)


def act_name(layer: int, name: str) -> str:
    """``blocks.{layer}.{name}``: the bridge hook ``name`` (e.g. ``"attn.hook_z"``) of a block."""
    return f"blocks.{layer}.{name}"


@contextlib.contextmanager
def temporary_hooks(model: Any, hooks: list[tuple[str, Callable]]) -> Iterator[None]:
    """Register ``(hook_name, fn)`` pairs on the bridge and remove exactly those on exit,
    also when the body raises."""
    added = []
    try:
        for name, fn in hooks:
            point = model.hook_dict[name]
            handle = point.add_hook(fn)
            added.append((point, handle))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)
