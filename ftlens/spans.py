"""Tokenisation in context, roles per position, and span selection.

The prompt is formatted (chat template on by default where the tokenizer has
one), the target is appended, and the *concatenated text* is tokenised once, so
the attributed ids are the ids the model would see.  A target whose tokens do
not round-trip, or that merges with the prompt at the boundary, is refused.

Roles: ``template`` (chat-template tokens), ``prompt`` (the user's text),
``reasoning`` and ``output`` (the two target spans), ``other`` (target tokens in
neither span, e.g. ``<think>`` tags).

Span selection (``output=`` / ``reasoning=``), always relative to the target:

- a ``str``: a literal substring of the target text (``Select(text, occurrence=k)``
  picks one of several occurrences);
- a compiled ``re.Pattern`` or ``Select(regex=...)``: the first/k-th regex match;
- a pair ``(a, b)``: target-token indices, half-open like a Python slice;
- ``"auto"``: if the target has ``</think>``, reasoning is the text between
  ``<think>`` (or the start) and ``</think>`` and the output is what follows it;
  otherwise the output is the last non-empty line (or, for one-line targets, the
  last sentence) and everything before it is the reasoning; a one-sentence target
  is all output with no reasoning.  With one span given explicitly, ``"auto"`` for
  the other means: reasoning = target text before the output; output = target text
  after the reasoning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import SpanError

ROLES = ("template", "prompt", "reasoning", "output", "other")


@dataclass(frozen=True)
class Select:
    """An explicit span selection: exactly one of ``text``, ``regex``, ``tokens``."""

    text: str | None = None
    regex: str | None = None
    tokens: tuple[int, int] | None = None
    occurrence: int | None = None


SpanSpec = Union[None, str, "re.Pattern[str]", tuple, list, slice, Select]


@dataclass
class Sequence:
    """A tokenised prompt + target with roles and the two spans (absolute, half-open)."""

    ids: Int[Tensor, " pos"]
    tokens: list[str]
    roles: list[str]
    prompt_len: int
    user_prompt: tuple[int, int]
    target_text: str
    output: tuple[int, int]
    reasoning: tuple[int, int] | None

    @property
    def n(self) -> int:
        return int(self.ids.numel())


def as_select(spec: SpanSpec, what: str) -> Select | str | None:
    """Normalise a user span argument to ``Select``, ``"auto"`` or ``None``."""
    if spec is None or isinstance(spec, Select):
        return spec
    if isinstance(spec, str):
        if spec == "auto":
            return "auto"
        return Select(text=spec)
    if isinstance(spec, re.Pattern):
        return Select(regex=spec.pattern)
    if isinstance(spec, slice):
        if spec.step not in (None, 1) or spec.start is None or spec.stop is None:
            raise SpanError(f"{what} span slice needs a start and a stop and no step, e.g. slice(3, 10)")
        return Select(tokens=(spec.start, spec.stop))
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        return Select(tokens=(int(spec[0]), int(spec[1])))
    raise SpanError(
        f"{what} span must be a substring, a regex (re.compile), a token range (a, b), "
        f"'auto' or ftlens.Select; got {spec!r}"
    )


def format_prompt(tokenizer: Any, prompt: str, chat_template: bool | None) -> tuple[str, bool]:
    """The prompt text as the model sees it, and whether special tokens are added by encoding."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpanError("the prompt is empty; pass the question or instruction text to attribute to")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    use = has_template if chat_template is None else bool(chat_template)
    if use and not has_template:
        raise SpanError("this tokenizer has no chat template; pass chat_template=False")
    if use:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return text, False
    return prompt, True


def _encode(tokenizer: Any, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
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
    """Ids and char offsets of ``formatted + target`` and the prompt length in tokens."""
    prompt_ids, _ = _encode(tokenizer, formatted, special)
    ids, offsets = _encode(tokenizer, formatted + target, special)
    if not target:
        raise SpanError("the target is empty; pass the text to attribute, or target=None to generate")
    if ids[: len(prompt_ids)] != prompt_ids:
        raise SpanError(
            "the prompt and the target merge into one token at their boundary; start the target "
            "with a space or newline, or end the prompt with one"
        )
    p = len(prompt_ids)
    if len(ids) == p:
        raise SpanError("the target produced no tokens; pass a non-empty target")
    decoded = tokenizer.decode(ids[p:], skip_special_tokens=False)
    if decoded != target:
        raise SpanError(
            f"the target does not round-trip through the tokenizer (decodes to {decoded[:60]!r}); "
            "normalise its whitespace/unicode or pass text exactly as the model writes it"
        )
    return ids, offsets, p


def _find_all(target: str, sel: Select) -> list[tuple[int, int]]:
    if sel.text is not None:
        if not sel.text:
            return []
        out, i = [], target.find(sel.text)
        while i >= 0:
            out.append((i, i + len(sel.text)))
            i = target.find(sel.text, i + 1)
        return out
    try:
        pattern = re.compile(sel.regex or "")
    except re.error as exc:
        raise SpanError(f"span regex {sel.regex!r} does not compile: {exc}") from None
    return [(m.start(), m.end()) for m in pattern.finditer(target) if m.end() > m.start()]


def _chars_to_tokens(chars: tuple[int, int], offsets: list[tuple[int, int]], base: int) -> tuple[int, int]:
    """Target-token range ``[a, b)`` whose char offsets overlap ``chars`` (target-relative)."""
    c0, c1 = chars[0] + base, chars[1] + base
    hit = [i for i, (s, e) in enumerate(offsets) if s < c1 and e > c0]
    if not hit:  # the tokenizer's offsets can be wrong around characters it cannot map
        raise SpanError(
            "the tokenizer's character offsets do not cover this span (unusual unicode nearby?); "
            "select the span by target-token range instead: (a, b), CLI A:B"
        )
    return hit[0], hit[-1] + 1


def _resolve(
    sel: Select, what: str, target: str, offsets: list[tuple[int, int]], base: int, p: int, m: int
) -> tuple[int, int]:
    """Absolute half-open token range of one explicit selection."""
    given = [x is not None for x in (sel.text, sel.regex, sel.tokens)]
    if sum(given) != 1:
        raise SpanError(f"{what} selection needs exactly one of text=, regex=, tokens=")
    if sel.tokens is not None:
        a, b = sel.tokens
        if not (0 <= a < b <= m):
            raise SpanError(
                f"{what} token range {a}:{b} is empty or out of range; the target has {m} tokens "
                f"(valid: 0 <= a < b <= {m})"
            )
        return p + a, p + b
    if sel.text is not None and not sel.text.strip():
        raise SpanError(f"{what} span text is empty; pass a non-blank substring of the target")
    found = _find_all(target, sel)
    label = repr(sel.text if sel.text is not None else sel.regex)
    if not found:
        raise SpanError(
            f"{what} span {label} was not found in the target text; pass text that occurs in the "
            "target (case and whitespace count)"
        )
    if sel.occurrence is None and len(found) > 1:
        where = ", ".join(str(c0) for c0, _ in found[:5])
        raise SpanError(
            f"{what} span {label} occurs {len(found)} times in the target (at chars {where}); "
            f"pick one with ftlens.Select({label}, occurrence=k) (CLI: --{what}-occurrence k), "
            f"k in 0..{len(found) - 1}"
        )
    k = sel.occurrence or 0
    if not (-len(found) <= k < len(found)):
        raise SpanError(f"{what} span {label}: occurrence {k} out of range 0..{len(found) - 1}")
    a, b = _chars_to_tokens(found[k], offsets, base)
    return p + a, p + b


def _strip_range(text: str, c0: int, c1: int) -> tuple[int, int] | None:
    while c0 < c1 and text[c0].isspace():
        c0 += 1
    while c1 > c0 and text[c1 - 1].isspace():
        c1 -= 1
    return (c0, c1) if c1 > c0 else None


def auto_spans(target: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(reasoning, output) char ranges by the documented ``auto`` rule."""
    close = target.rfind("</think>")
    if close >= 0:
        open_ = target.rfind("<think>", 0, close)
        r0 = open_ + len("<think>") if open_ >= 0 else 0
        return _strip_range(target, r0, close), _strip_range(target, close + len("</think>"), len(target))
    lines = [m for m in re.finditer(r"[^\n]+", target) if m.group().strip()]
    if len(lines) > 1:
        last = lines[-1]
        return _strip_range(target, 0, last.start()), _strip_range(target, last.start(), last.end())
    body = _strip_range(target, 0, len(target))
    if body is None:
        return None, None
    cuts = [m.end() for m in re.finditer(r"[.!?](?=\s+\S)", target[: body[1]])]
    if cuts:
        return _strip_range(target, 0, cuts[-1]), _strip_range(target, cuts[-1], body[1])
    return None, body


def build_sequence(
    tokenizer: Any,
    prompt: str,
    target: str,
    *,
    output: SpanSpec = "auto",
    reasoning: SpanSpec = "auto",
    chat_template: bool | None = None,
) -> Sequence:
    """Tokenise prompt + target in context, select the spans and assign roles."""
    formatted, special = format_prompt(tokenizer, prompt, chat_template)
    if not isinstance(target, str):
        raise SpanError("target must be a string (or None to generate)")
    ids, offsets, p = tokenize_in_context(tokenizer, formatted, special, target)
    m = len(ids) - p
    base = len(formatted)
    t_offsets = offsets[p:]
    out_sel, rea_sel = as_select(output, "output"), as_select(reasoning, "reasoning")
    if out_sel is None:
        raise SpanError("output span is required; pass a substring, a token range or 'auto'")

    def tok_range(chars: tuple[int, int] | None) -> tuple[int, int] | None:
        if chars is None:
            return None
        a, b = _chars_to_tokens(chars, t_offsets, base)
        return p + a, p + b

    auto_r, auto_o = auto_spans(target)
    out = (
        tok_range(auto_o)
        if out_sel == "auto"
        else _resolve(out_sel, "output", target, t_offsets, base, p, m)
    )
    if rea_sel == "auto" and out_sel == "auto":
        rea = tok_range(auto_r)
    elif rea_sel == "auto":
        rea = (p, out[0]) if out[0] > p and target[: _char_start(out[0], offsets, base)].strip() else None
    elif rea_sel is None:
        rea = None
    else:
        rea = _resolve(rea_sel, "reasoning", target, t_offsets, base, p, m)
    if out_sel == "auto" and rea_sel not in ("auto", None) and rea is not None:
        rest = _strip_range(target, _char_end(rea[1] - 1, offsets, base), len(target))
        out = tok_range(rest)
    if out is None:
        raise SpanError("could not find an output span automatically; pass output= explicitly")
    if rea is not None and rea[1] > out[0]:
        raise SpanError(
            f"the output span (target tokens {out[0] - p}:{out[1] - p}) must come after the reasoning "
            f"span (target tokens {rea[0] - p}:{rea[1] - p})"
        )
    user = _user_prompt_range(formatted, prompt, offsets[:p])
    roles = ["template"] * p
    for i in range(*user):
        roles[i] = "prompt"
    roles += ["other"] * m
    if rea is not None:
        for i in range(*rea):
            roles[i] = "reasoning"
    for i in range(*out):
        roles[i] = "output"
    text = formatted + target
    tokens = [
        text[s:e] if e > s else tokenizer.decode([tid], skip_special_tokens=False)
        for tid, (s, e) in zip(ids, offsets)
    ]
    return Sequence(
        ids=torch.tensor(ids, dtype=torch.long),
        tokens=tokens,
        roles=roles,
        prompt_len=p,
        user_prompt=user,
        target_text=target,
        output=out,
        reasoning=rea,
    )


def _char_start(pos: int, offsets: list[tuple[int, int]], base: int) -> int:
    return max(0, offsets[pos][0] - base)


def _char_end(pos: int, offsets: list[tuple[int, int]], base: int) -> int:
    return max(0, offsets[pos][1] - base)


def _user_prompt_range(formatted: str, prompt: str, offsets: list[tuple[int, int]]) -> tuple[int, int]:
    c0 = formatted.rfind(prompt)
    if c0 < 0:
        return 0, len(offsets)
    c1 = c0 + len(prompt)
    hit = [i for i, (s, e) in enumerate(offsets) if s < c1 and e > c0]
    return (hit[0], hit[-1] + 1) if hit else (0, len(offsets))
