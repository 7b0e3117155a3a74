"""ftlens' own error types.

Every error a user can cause (bad input, missing model, bad file) is raised as a
subclass of :class:`FtlensError`, with a one-line message that names the fix.
``FtlensError`` subclasses ``ValueError`` so generic ``except ValueError`` code
keeps working.
"""

from __future__ import annotations


class FtlensError(ValueError):
    """Base class of every documented ftlens error."""


class SpanError(FtlensError):
    """A prompt, target or span selection that cannot be used as given."""


class ModelLoadError(FtlensError):
    """A model that is neither cached locally nor reachable."""


class TraceError(FtlensError):
    """A trace that cannot run: bad parameters, too long, non-finite activations."""


class SchemaError(FtlensError):
    """A saved trace file that is corrupt, truncated or of an unknown schema."""
