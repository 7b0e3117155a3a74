"""Device and dtype options of :func:`~ftlens.models.load_model` and
:func:`~ftlens.models.tiny_model`: each accepted spelling resolved to a torch object,
or a :class:`ModelLoadError` that says what to pass instead."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError

__all__ = ["resolve_device", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → ``cuda`` when available, else ``cpu``; strings go through ``torch.device``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', ...") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device={device!r} was asked for but CUDA is not available here; use device='cpu' "
            "(CLI: --device cpu) or leave the device unset"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(
            f"device={str(device)!r} was asked for but MPS (Apple Metal) is not available here; use "
            "device='cpu' (CLI: --device cpu) or leave the device unset"
        )
    try:  # cuda:7 on a 1-GPU machine, a backend this torch was not built with
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError, ValueError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:120]
        raise ModelLoadError(
            f"device={str(device)!r} is not available here ({why}); use device='cpu' "
            "(CLI: --device cpu) or leave the device unset"
        ) from None
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``None`` → ``float32`` (on every device: attribution wants full precision).

    Accepts torch dtypes and the strings ``float32``/``bfloat16``/``float16``
    (also ``fp32``, ``bf16``, ``fp16``, ``half``, ``torch.float32``, ...).
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ModelLoadError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)} or a torch.dtype.")
