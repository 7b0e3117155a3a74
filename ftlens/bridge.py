"""What ftlens reads from a TransformerBridge, in one place: its device, its Hugging Face
model and config, hook names, and temporary hooks that are always removed.

Hook names follow TransformerLens' ``blocks.{layer}.{name}`` scheme (like
``transformer_lens.utils.get_act_name``); :func:`act_name` builds them, so no other module
spells the pattern out.
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
