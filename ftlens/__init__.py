"""ftlens: FlashTrace span attribution on TransformerLens, per layer and head.

Public API::

    import ftlens
    model = ftlens.load_model()                       # SmolLM2-135M-Instruct, offline
    tr = ftlens.trace(model, prompt, target, hops=1)  # -> ftlens.Trace
    tr.top(10); tr.top_heads(10); tr.save("trace.json")
"""

from __future__ import annotations

from ._version import __version__

from .errors import FtlensError, ModelLoadError, SchemaError, SpanError, TraceError
from .spans import Select
from .result import Trace
from .generation import Generation, generate, generate_ids
from .options import METHODS
from .pipeline import trace


def load_model(name: str | None = None, *, device=None, dtype=None, device_map=None):
    """Load a TransformerBridge; see :func:`ftlens.models.load_model`."""
    from .models import load_model as _load

    return _load(name, device=device, dtype=dtype, device_map=device_map)


__all__ = [
    "__version__",
    "load_model",
    "trace",
    "generate",
    "generate_ids",
    "Generation",
    "Trace",
    "Select",
    "METHODS",
    "FtlensError",
    "ModelLoadError",
    "SchemaError",
    "SpanError",
    "TraceError",
]
