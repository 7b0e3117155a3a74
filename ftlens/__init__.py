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
from .options import METHODS

# The rest loads on first use (PEP 562), so `ftlens --help` and `import ftlens.cli` need no torch.


def __getattr__(name: str):
    if name == "trace":
        from .pipeline import trace

        return trace
    if name == "Trace":
        from .result import Trace

        return Trace
    if name == "Select":
        from .spans import Select

        return Select
    if name in ("Generation", "generate", "generate_ids"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'ftlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
