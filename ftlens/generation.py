"""Greedy generation through the bridge's Hugging Face model: the ids, verbatim.

ftlens traces the ids the model generated, never a re-tokenisation of their decoded text
(which can differ: ``'ĊĊ'`` vs ``'Ċ' 'Ċ'``, or a character cut in the middle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .bridge import device_of, hf_model
from .errors import SpanError, TraceError
from .chat import format_prompt

__all__ = ["Generation", "generate_ids", "generate"]


@dataclass
class Generation:
    """A greedy generation: the ids the model wrote (EOS left out), their text, and
    whether it stopped on an end-of-sequence token (``False``: ``max_new_tokens`` ran out)."""

    ids: list[int]
    text: str
    stopped_on_eos: bool


def generate_ids(
    model: Any,
    prompt: str | None = None,
    *,
    max_new_tokens: int = 128,
    chat_template: bool | None = None,
    messages: Any = None,  # list of {"role", "content"} dicts; checked at run time (SpanError)
    system: str | None = None,
) -> Generation:
    """Greedy generation after the formatted prompt: the generated ids, verbatim.

    The ids after the prompt up to (not including) the first end-of-sequence token of
    the model's generation config (or the tokenizer's EOS) are kept; ``text`` is their
    decoded text with special tokens dropped.  ``prompt`` / ``messages`` / ``system`` as
    in :func:`trace`.
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise TraceError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    tok = model.tokenizer
    formatted, special = format_prompt(tok, prompt, chat_template, messages=messages, system=system)
    ids = tok(formatted, add_special_tokens=special, return_tensors="pt")["input_ids"]
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and ids.shape[1] >= n_ctx:
        raise SpanError(
            f"the prompt has {ids.shape[1]} tokens but the model's context is {n_ctx}; shorten the prompt"
        )
    device = device_of(model)
    hf = hf_model(model)
    with torch.no_grad():
        out = hf.generate(
            ids.to(device),
            attention_mask=torch.ones_like(ids).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    gen = [int(i) for i in out[0, ids.shape[1] :].tolist()]
    eos = _eos_ids(hf, tok)
    stop = next((i for i, t in enumerate(gen) if t in eos), None)
    kept = gen if stop is None else gen[:stop]
    return Generation(kept, tok.decode(kept, skip_special_tokens=True), stop is not None)


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
) -> str:
    """Greedy generation of the model's answer text (special tokens dropped); the ids
    themselves: :func:`generate_ids`."""
    g = generate_ids(
        model, prompt, max_new_tokens=max_new_tokens, chat_template=chat_template, messages=messages, system=system
    )
    if not g.text.strip():
        raise TraceError("the model generated no text for this prompt; pass target= explicitly")
    return g.text
