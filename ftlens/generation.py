"""Greedy generation through the bridge's Hugging Face model: the ids, verbatim.

ftlens traces the ids the model generated, never a re-tokenisation of their decoded text
(which can differ: ``'ĊĊ'`` vs ``'Ċ' 'Ċ'``, or a character cut in the middle).

Where a generation stops (``stop_at``):

- ``"eos"``: at the model's end-of-sequence token (left out) or after ``max_new_tokens``;
- ``"line"``: also at the first line break that follows non-blank text.  The ids up to it are
  kept; the token holding the line break is kept only when it also holds text before the
  break (``'.\\n'``), and everything after it is dropped;
- ``"auto"`` (default): ``"line"`` when the prompt is fed as raw text (no chat template: a base
  model's continuation runs on past its answer, e.g. ``" Green.\\nQuestion: What"``), ``"eos"``
  when the chat template formats it (the model ends its turn itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .bridge import device_of, hf_model
from .chat import format_prompt
from .errors import SpanError, TraceError
from .options import TraceOptions

__all__ = ["Generation", "generate_ids", "generate", "resolve_stop_at"]



@dataclass
class Generation:
    """A greedy generation: the ids the model wrote (EOS left out), their text, and why it
    stopped: ``stopped_on`` is ``"eos"`` (an end-of-sequence token), ``"line"`` (a line break
    after text, ``stop_at="line"``) or ``"length"`` (``max_new_tokens`` ran out)."""

    ids: list[int]
    text: str
    stopped_on_eos: bool
    stopped_on: str = "length"


def resolve_stop_at(stop_at: str, chat_formatted: bool) -> str:
    """``"auto"`` -> ``"eos"`` for a chat-formatted prompt, ``"line"`` for raw text; else as given
    (a checked :data:`~ftlens.options.STOP_AT` value)."""
    if stop_at == "auto":
        return "eos" if chat_formatted else "line"
    return stop_at


def _line_break(piece: str, seen_text: bool) -> tuple[bool | None, bool]:
    """One generated piece: ``(None, seen_text')`` when no line ends in it, else ``(keep, _)``:
    a line break after text ends here, and ``keep`` says whether the piece holds text before it."""
    before, nl, _ = piece.partition("\n")
    if nl and (seen_text or before.strip()):
        return bool(before.strip()), True
    return None, seen_text or bool(piece.strip())


def first_line_end(tokenizer: Any, ids: list[int]) -> int | None:
    """How many of ``ids`` make the first line: the index after the last kept token when a line
    break follows non-blank text (the break's token is kept only when it holds text before the
    break), else ``None`` (no such break)."""
    seen_text = False
    for i, t in enumerate(ids):
        keep, seen_text = _line_break(tokenizer.decode([t], skip_special_tokens=True), seen_text)
        if keep is not None:
            return i + 1 if keep else i
    return None


class _LineStop:
    """A Hugging Face stopping criterion: stop once the generated ids hold a line break after
    text (reads each new token once)."""

    def __init__(self, tokenizer: Any, start: int) -> None:
        self.tokenizer, self.next, self.seen_text, self.done = tokenizer, start, False, False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for t in input_ids[0, self.next :].tolist():
            if not self.done:
                keep, self.seen_text = _line_break(self.tokenizer.decode([t], skip_special_tokens=True), self.seen_text)
                self.done = keep is not None
        self.next = input_ids.shape[1]
        return torch.full((input_ids.shape[0],), self.done, dtype=torch.bool, device=input_ids.device)


def generate_ids(
    model: Any,
    prompt: str | None = None,
    *,
    max_new_tokens: int = 128,
    chat_template: bool | None = None,
    messages: Any = None,  # list of {"role", "content"} dicts; checked at run time (SpanError)
    system: str | None = None,
    stop_at: str = "auto",
) -> Generation:
    """Greedy generation after the formatted prompt: the generated ids, verbatim.

    The ids after the prompt up to (not including) the first end-of-sequence token of
    the model's generation config (or the tokenizer's EOS) are kept, cut at the first line
    break after text when ``stop_at`` resolves to ``"line"`` (module docstring); ``text`` is
    their decoded text with special tokens dropped.  ``prompt`` / ``messages`` / ``system`` as
    in :func:`trace`.
    """
    TraceOptions(max_new_tokens=max_new_tokens, stop_at=stop_at, chat_template=chat_template)  # the one check
    tok = model.tokenizer
    formatted, special = format_prompt(tok, prompt, chat_template, messages=messages, system=system)
    mode = resolve_stop_at(stop_at, chat_formatted=not special)
    ids = tok(formatted, add_special_tokens=special, return_tensors="pt")["input_ids"]
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and ids.shape[1] >= n_ctx:
        raise SpanError(
            f"the prompt has {ids.shape[1]} tokens but the model's context is {n_ctx}; shorten the prompt"
        )
    device = device_of(model)
    hf = hf_model(model)
    extra: dict[str, Any] = {}
    if mode == "line":
        from transformers import StoppingCriteriaList

        extra["stopping_criteria"] = StoppingCriteriaList([_LineStop(tok, ids.shape[1])])
    with torch.no_grad():
        out = hf.generate(
            ids.to(device),
            attention_mask=torch.ones_like(ids).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            **extra,
        )
    gen = [int(i) for i in out[0, ids.shape[1] :].tolist()]
    eos = _eos_ids(hf, tok)
    stop = next((i for i, t in enumerate(gen) if t in eos), None)
    kept = gen if stop is None else gen[:stop]
    stopped_on = "eos" if stop is not None else "length"
    if mode == "line":
        cut = first_line_end(tok, kept)
        if cut is not None:
            kept, stopped_on = kept[:cut], "line"
    return Generation(kept, tok.decode(kept, skip_special_tokens=True), stopped_on == "eos", stopped_on)


def _eos_ids(hf: Any, tok: Any) -> set[int]:
    eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    return {int(e) for e in [*eos, tok.eos_token_id] if e is not None}


def generate(
    model: Any,
    prompt: str | None = None,
    *,
    max_new_tokens: int = 128,
    chat_template: bool | None = None,
    messages: Any = None,  # list of {"role", "content"} dicts; checked at run time (SpanError)
    system: str | None = None,
    stop_at: str = "auto",
) -> str:
    """Greedy generation of the model's answer text (special tokens dropped); the ids
    themselves: :func:`generate_ids`."""
    g = generate_ids(
        model, prompt, max_new_tokens=max_new_tokens, chat_template=chat_template, messages=messages, system=system,
        stop_at=stop_at,
    )
    if not g.text.strip():
        raise TraceError("the model generated no text for this prompt; pass target= explicitly")
    return g.text
