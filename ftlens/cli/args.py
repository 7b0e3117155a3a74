"""Argument values of the ``ftlens`` command and the checks made before any model loads.

Text arguments take ``TEXT``, ``@FILE`` or ``@@TEXT``; output paths are refused when they are
folders, under a file or not writable; ``--device``/``--dtype`` are resolved; the default
model's tokenizer resolves spans.  :func:`prelude` runs a command's checks in one place, in
this order: its trace options (:class:`~ftlens.options.TraceOptions`), output folder and files,
model options, then ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import SpanError

#: Exit codes: ok; failure (one line ``ftlens: error: ...``); usage error (argparse); Ctrl-C.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED", "add_trace_flags", "read_text_arg", "check_prompt", "nonneg_int", "positive_int", "parse_shard", "check_writable_dir",
           "check_writable_file", "check_spans_with_tokenizer", "check_model_options", "set_threads", "prelude",
           "load"]


def read_text_arg(value: str, flag: str) -> str:
    """``TEXT`` as is, ``@FILE`` as the UTF-8 contents of FILE, ``@@TEXT`` as ``@TEXT``."""
    if value.startswith("@@"):
        return value[1:]
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpanError(
            f"{flag} file {str(path)!r} does not exist; check the path (write @@TEXT for a literal text starting with @)"
        ) from None
    except IsADirectoryError:
        raise SpanError(f"{flag} file {str(path)!r} is a folder; pass @FILE with a text file") from None
    except UnicodeDecodeError as exc:
        raise SpanError(
            f"{flag} file {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8"
        ) from None
    except OSError as exc:
        raise SpanError(f"cannot read {flag} file {str(path)!r}: {exc.strerror}") from None


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise SpanError("the prompt is empty; pass the question or instruction text with --prompt TEXT or @FILE")


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def positive_int(text: str) -> int:
    v = nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected an integer >= 1, got 0")
    return v


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` with ``0 <= i < n``: this run does input lines ``L`` with ``(L - 1) % n == i``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not (0 <= int(m.group(1)) < int(m.group(2))):
        raise argparse.ArgumentTypeError(f"--shard wants i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path with none)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(value: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any model loads, an output folder that is a file or cannot be created/written."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise SpanError(f"{flag} {str(value)!r} is a file, not a folder; pass a folder path")
    _check_parent(path, flag, value)
    return path


def check_writable_file(value: str | os.PathLike | None, flag: str) -> None:
    """Refuse, before any model loads, an output file path that is a folder or cannot be written."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        example = path / ("trace.html" if flag == "--html" else "trace.json")
        raise SpanError(f"{flag} {str(value)!r} is a folder; pass a file name, e.g. {str(example)!r}")
    _check_parent(path.parent, flag, value)


def _check_parent(folder: Path, flag: str, value: str | os.PathLike) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise SpanError(f"{flag} {str(value)!r} cannot be written: {str(base)!r} is a file, not a folder; pick another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SpanError(
            f"{flag} {str(value)!r} cannot be written: the folder {str(base)!r} is not writable; "
            "pick another path or fix its permissions"
        )


def check_spans_with_tokenizer(args: argparse.Namespace, prompt: str, target: str | None,
                                output: Any, reasoning: Any, chat_template: bool | None) -> None:
    """Resolve the spans with the default model's tokenizer (~0.1 s) before loading the model.

    Only for the default model (its tokenizer is available offline without the weights, and is
    exactly the one the loaded model uses); other models check spans once loaded.
    """
    if target is None or args.model not in (None, "default"):
        return
    from ..models import default_tokenizer
    from ..spans import build_sequence

    build_sequence(default_tokenizer(), prompt, target, output=output, reasoning=reasoning, chat_template=chat_template)


def check_model_options(args: argparse.Namespace) -> None:
    """``--device`` and ``--dtype`` checked before anything slow (no model is loaded)."""
    from ..models import resolve_device, resolve_dtype

    resolve_device(args.device)
    resolve_dtype(args.dtype)


def set_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch's intra-op CPU threads for this run."""
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)


def prelude(args: argparse.Namespace, *, trace: bool = True, out_dir: str | None = None,
            out_files: Sequence[tuple[str | None, str]] = (), **fixed: Any):
    """A command's checks before its model loads, then ``--threads``; returns its
    :class:`~ftlens.options.TraceOptions` (from its flags and ``fixed``) when ``trace``."""
    from ..options import TraceOptions

    options = TraceOptions.from_args(args, **fixed) if trace else None
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
    for path, flag in out_files:
        check_writable_file(path, flag)
    check_model_options(args)
    set_threads(args)
    return options


def load(args: argparse.Namespace):
    """The model the command asked for (``--model``, ``--device``, ``--dtype``)."""
    import ftlens

    return ftlens.load_model(args.model, device=args.device, dtype=args.dtype)


def add_trace_flags(group: Any) -> None:
    """Add every trace option's flag (its :class:`~ftlens.options.TraceOptions` field's ``cli``
    metadata) to an argparse group: the one place the CLI's trace flags come from."""
    import dataclasses

    from ..options import TraceOptions

    types = {"int": int, "float": float, "positive_int": positive_int}
    for f in dataclasses.fields(TraceOptions):
        spec = f.metadata["cli"]
        if spec is None:
            continue
        kw = {k: v for k, v in spec.items() if k != "flag"}
        if "type" in kw:
            kw["type"] = types[kw["type"]]
        if "choices" in kw:
            kw["choices"] = list(kw["choices"])
        if kw.get("action") != "store_true":
            kw.setdefault("dest", f.name)
            kw["default"] = f.default
        group.add_argument(spec["flag"], **kw)
