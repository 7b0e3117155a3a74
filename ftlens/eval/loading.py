"""The model an analysis runs on, by name (``None``, ``"tiny"`` or a model name)."""

from __future__ import annotations

from typing import Any

from ..models import default_tokenizer, load_model, tiny_model


def load_model_for(name: str | None) -> Any:
    """The model an analysis runs on: ``None`` = the default model, ``"tiny"`` = a tiny random
    Llama (2 layers, d_model 64, 4 heads, 2 KV heads) for smoke runs, else ``load_model(name)``."""
    if name == "tiny":
        return tiny_model("llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)
    return load_model(name)


def default_tokenizer_for(name: str | None) -> Any:
    """The tokenizer of a model name without loading the model (``tiny`` = the default's)."""
    if name in (None, "tiny"):
        return default_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)
