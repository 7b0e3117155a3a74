r"""Tokenisation in context and the tokens as they are shown.

The formatted prompt and the target are tokenised together, so the attributed ids are the
ids the model would see.  A target that begins with whitespace the prompt's last token
would swallow (``"\n\nParis."`` after a template ending in ``"\n"``) keeps the prompt's
ids: the swallowed whitespace is tokenised on its own and the rest of the target in
context.  A target whose tokens do not round-trip, that is blank, or whose *text* (not
whitespace) merges with the prompt at the boundary, is refused.

Generated replies are traced by id: the ids are used verbatim, and each token's characters
are found by incremental decoding (:func:`decode_with_offsets`); a reply cut inside a
multi-byte character keeps its pieces and gains no U+FFFD token.

Displayed tokens (:func:`display_tokens`): each character is shown once, on the first
token that holds any of its bytes; the other pieces of a character split over several
byte-level tokens are *continuations*, shown as :data:`CONTINUATION` (the empty string:
``" 東京"`` -> ``' 東' '' '' '京' ''``), so ``"".join(tokens)`` is the text.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from .errors import SpanError

__all__ = ["CONTINUATION", "tokenize_in_context", "decode_with_offsets", "display_tokens"]

#: How :func:`display_tokens` shows a continuation piece of a multi-byte character.
CONTINUATION = ""


def encode_text(tokenizer: Any, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except (TypeError, UnicodeError, ValueError) as exc:
        raise SpanError(
            f"the text cannot be tokenised ({type(exc).__name__}); remove invalid unicode such as "
            "lone surrogates"
        ) from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokenize_in_context(
    tokenizer: Any, formatted: str, special: bool, target: str
) -> tuple[list[int], list[tuple[int, int]], int]:
    """Ids and char offsets of ``formatted + target`` and the prompt length in tokens.

    The prompt keeps the ids it has on its own.  Where its last token would swallow
    the target's leading whitespace (``"...assistant\\n" + "\\n\\nParis."``), that
    whitespace is tokenised on its own and the rest of the target in context.
    """
    if not target:
        raise SpanError("the target is empty; pass the text to attribute, or target=None to generate")
    if not target.strip():
        raise SpanError(
            "the target is blank (only whitespace); pass the text to attribute, or target=None to generate"
        )
    prompt_ids, prompt_offsets = encode_text(tokenizer, formatted, special)
    ids, offsets = encode_text(tokenizer, formatted + target, special)
    p = len(prompt_ids)
    if ids[:p] != prompt_ids:
        base = len(formatted)
        j = next((i for i, (s, _) in enumerate(offsets) if s >= base), len(ids))
        head = target[: (offsets[j][0] - base) if j < len(ids) else len(target)]
        if head.strip():
            raise SpanError(
                f"the prompt and the target merge into one token at their boundary (the prompt ends "
                f"{formatted[-12:]!r}, the target starts {target[:12]!r}); end the prompt with a space "
                "or newline, or start the target with one"
            )
        head_ids, head_offsets = encode_text(tokenizer, head, False) if head else ([], [])
        ids = prompt_ids + head_ids + ids[j:]
        offsets = prompt_offsets + [(s + base, e + base) for s, e in head_offsets] + offsets[j:]
    if len(ids) == p:
        raise SpanError("the target produced no tokens; pass a non-empty target")
    decoded = tokenizer.decode(ids[p:], skip_special_tokens=False)
    if decoded != target:
        raise SpanError(
            f"the target does not round-trip through the tokenizer (decodes to {decoded[:60]!r}); "
            "normalise its whitespace/unicode or pass text exactly as the model writes it"
        )
    return ids, offsets, p


#: Left context (tokens) re-decoded with each window, so that decoders that treat a
#: sequence's first token specially (sentencepiece's leading space) cancel out.
_DECODE_CONTEXT = 4
#: A character is at most 4 UTF-8 bytes; a piece that stays incomplete longer is invalid
#: UTF-8 the model wrote, shown as U+FFFD like ``decode`` does.
_MAX_PENDING = 8
_FFFD = "\ufffd"


def decode_with_offsets(tokenizer: Any, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``ids`` and, per token, the half-open range of characters it touches.

    Incremental decoding: ``started[i]``, the number of characters begun by ``ids[:i+1]``,
    is the length of their decoded text, a trailing run of U+FFFD (what decoders emit for
    an incomplete character: one per run or one per byte) counting as one; it is computed
    on a short window after the last complete character.  The text is ``decode(ids)``,
    except that a character cut at the end is one U+FFFD.  Token ``i``
    touches characters ``[started[i-1], started[i])``, and one more on the left when it
    continues a character an earlier token began (the convention of fast tokenizers'
    offsets).  A token holding only continuation bytes gets ``(c, c + 1)`` of that
    character; one that decodes to nothing gets an empty range.
    """
    ids = [int(i) for i in ids]

    def dec(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    parts: list[str] = []
    committed = 0  # characters of the complete text so far
    c = 0  # ids[:c] decode to exactly those characters
    offsets: list[tuple[int, int]] = []
    prev_started, prev_incomplete = 0, False
    head_key, head, new = None, "", ""
    for i in range(len(ids)):
        w = max(0, c - _DECODE_CONTEXT)
        if head_key != (w, c):
            head_key, head = (w, c), dec(ids[w:c])
        full = dec(ids[w : i + 1])
        new = full[len(head) :]
        if new.endswith(_FFFD):  # one character begun (decoders emit one U+FFFD per byte or per run)
            new = new.rstrip(_FFFD) + _FFFD
        started = committed + len(new)
        a = prev_started - 1 if prev_incomplete else prev_started
        offsets.append((min(a, started), max(a, started)))
        incomplete = new.endswith(_FFFD) and i + 1 - c < _MAX_PENDING
        if not incomplete:
            parts.append(new)
            committed, c = started, i + 1
        prev_started, prev_incomplete = started, incomplete
    if c < len(ids):  # cut inside a character: keep its U+FFFD, as decode does
        parts.append(new)
    return "".join(parts), offsets


def display_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """The tokens of ``ids`` as shown to a user: each character once, on its first piece.

    A character split over several byte-level tokens (``" 東"`` = ``'Ġæ' 'Ŀ' '±'``) is
    shown on the first token holding any of its bytes; the other pieces are
    continuations, shown as :data:`CONTINUATION` (the empty string), so
    ``"".join(display_tokens(tok, ids)) == tok.decode(ids)``.  Whole tokens, special
    tokens included, are shown as they decode.
    """
    text, offsets = decode_with_offsets(tokenizer, ids)
    return _shown_once(text, offsets)


#: What a *stop token* decodes to on its own (surrounding whitespace stripped): ``stop_rows="skip"``
#: never traces these rows (see :func:`stop_tokens`).
STOP_TEXTS = ("", ",", ".")


def stop_tokens(tokenizer: Any, ids: list[int]) -> Bool[Tensor, " pos"]:
    """Per id, whether it is a stop token: it decodes on its own to ``,`` or ``.`` (surrounding
    whitespace allowed) or to whitespace only.  These positions mostly gather the sentence or act
    as attention sinks; ``stop_rows="skip"`` keeps them as sources but does not trace their rows."""
    return torch.tensor([tokenizer.decode([int(i)]).strip() in STOP_TEXTS for i in ids], dtype=torch.bool)


def _shown_once(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    out, shown = [], 0
    for a, b in offsets:
        out.append(text[max(a, shown) : b] if b > shown else CONTINUATION)
        shown = max(shown, b)
    return out


def check_ids(tokenizer: Any, ids: Any) -> list[int]:
    try:
        out = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    except (TypeError, ValueError):
        raise SpanError("target_ids must be a list of token ids (integers)") from None
    if not out:
        raise SpanError("target_ids is empty; pass the ids to attribute, or target=None to generate")
    vocab = len(tokenizer)
    bad = [i for i in out if not 0 <= i < vocab]
    if bad:
        raise SpanError(f"target_ids has ids outside the tokenizer's vocabulary 0..{vocab - 1}: {bad[:5]}")
    return out
