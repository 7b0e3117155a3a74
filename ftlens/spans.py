r"""The traced sequence: roles per position and span selection.

The prompt is formatted (:mod:`ftlens.chat`) and tokenised together with the target
(:mod:`ftlens.tokens`; ``target_ids=`` traces given ids verbatim); ``Sequence.tokens`` are
the display tokens (each character once, continuation pieces ``""``).

Roles: ``template`` (chat-template tokens), ``prompt`` (the user's text),
``reasoning`` and ``output`` (the two target spans), ``other`` (target tokens in
neither span, e.g. ``<think>`` tags).

Span selection (``output=`` / ``reasoning=``), always relative to the target:

- a ``str``: a literal substring of the target text (``Select(text=..., occurrence=k)``
  picks one of several occurrences; a negative ``k`` counts from the last);
- a compiled ``re.Pattern`` or ``Select(regex=..., occurrence=k)``: the k-th regex match;
- a pair ``(a, b)``, ``slice(a, b)`` or ``Select(tokens=(a, b))``: target-token
  indices, half-open like a Python slice: a negative index counts from the end of
  the target (``(-3, -1)``), ``None`` is the start / the end (``(-2, None)``: the
  last two tokens); after that ``0 <= a < b <= len(target tokens)`` must hold;
- ``"auto"``: if the target has ``</think>``, reasoning is the text between the
  *first* ``<think>`` (or the start) and the *last* ``</think>`` (several blocks,
  and any text between them, form one reasoning span) and the output is what
  follows the last ``</think>``; a ``<think>`` with no ``</think>`` after it (a
  reply cut off while thinking) has no automatic output and is refused: pass
  ``output=``.  Otherwise the output is the last non-empty line (or, for one-line
  targets, the last sentence) and everything before it is the reasoning; a
  one-sentence target is all output with no reasoning.  A generated target
  (``target=None``) without tags is all output: no reasoning is guessed from a
  continuation that runs on (:mod:`ftlens.generation` stops a raw-text prompt's
  generation at its first line break).  With one span given
  explicitly, ``"auto"`` for the other means: reasoning = target text before the
  output; output = target text after the reasoning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Int
from torch import Tensor

from .chat import format_prompt, user_contents
from .errors import SpanError
from .tokens import check_ids, encode_text, decode_with_offsets, display_tokens, tokenize_in_context

#: Roles a position can have.
ROLES = ("template", "prompt", "reasoning", "output", "other")


@dataclass(frozen=True)
class Select:
    """An explicit span selection: exactly one of ``text``, ``regex``, ``tokens``.

    ``tokens=(a, b)``: target-token indices, half-open; negative counts from the end,
    ``None`` is the start / end.  ``occurrence=k``: the k-th match of ``text`` / ``regex``
    (negative: from the last).
    """

    text: str | None = None
    regex: str | None = None
    tokens: tuple[int | None, int | None] | None = None
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
    chat_formatted: bool = True  #: the chat template formatted the prompt (else raw text + the tokenizer's BOS)

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
        if spec.step not in (None, 1) or not all(_is_index(x) for x in (spec.start, spec.stop)):
            raise SpanError(f"{what} span slice takes integer (or None) bounds and no step, e.g. slice(3, 10)")
        return Select(tokens=(spec.start, spec.stop))
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(_is_index(x) for x in spec):
        return Select(tokens=tuple(None if x is None else int(x) for x in spec))
    raise SpanError(
        f"{what} span must be a substring, a regex (re.compile), a token range (a, b), "
        f"'auto' or ftlens.Select; got {spec!r}"
    )


def _is_index(x: Any) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


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
        if not (isinstance(sel.tokens, (tuple, list)) and len(sel.tokens) == 2 and all(map(_is_index, sel.tokens))):
            raise SpanError(f"{what} tokens= must be a pair (a, b) of integers or None, got {sel.tokens!r}")
        a0, b0 = sel.tokens
        a = 0 if a0 is None else (a0 + m if a0 < 0 else a0)
        b = m if b0 is None else (b0 + m if b0 < 0 else b0)
        if not (0 <= a < b <= m):
            shown = f"{'' if a0 is None else a0}:{'' if b0 is None else b0}"
            raise SpanError(
                f"{what} token range {shown} is empty or out of range; the target has {m} tokens "
                f"(valid: 0 <= a < b <= {m}; negative indices count from the end)"
            )
        return p + a, p + b
    if sel.text is not None and not sel.text.strip():
        raise SpanError(f"{what} span text is empty; pass a non-blank substring of the target")
    found = _find_all(target, sel)
    label = repr(sel.text if sel.text is not None else sel.regex)
    how = f"{'text' if sel.text is not None else 'regex'}={label}"
    if not found:
        raise SpanError(
            f"{what} span {label} was not found in the target text; pass text that occurs in the "
            "target (case and whitespace count)"
        )
    if sel.occurrence is None and len(found) > 1:
        where = ", ".join(str(c0) for c0, _ in found[:5])
        raise SpanError(
            f"{what} span {label} occurs {len(found)} times in the target (at chars {where}); "
            f"pick one with ftlens.Select({how}, occurrence=k) (CLI: --{what}-occurrence k), "
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


def auto_spans(target: str, generated: bool = False) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(reasoning, output) char ranges by the documented ``auto`` rule.

    With ``</think>``: reasoning from after the first ``<think>`` (or the start) to the
    last ``</think>``, output after it.  A ``<think>`` after the last ``</think>`` (or
    with none) is unterminated: :class:`SpanError`, there is no output to find.
    Without tags, a ``generated`` target (the model's own continuation) is all output: no
    reasoning span is guessed from where its lines or sentences break.
    """
    close = target.rfind("</think>")
    if target.rfind("<think>") > close:
        raise SpanError(
            "the target has an unterminated <think> (no </think> after it: was the reply cut off "
            "while thinking?), so there is no output to find automatically; pass output= (e.g. "
            "the last tokens, output=(-5, None)) or generate more tokens"
        )
    if close >= 0:
        open_ = target.find("<think>", 0, close)
        r0 = open_ + len("<think>") if open_ >= 0 else 0
        return _strip_range(target, r0, close), _strip_range(target, close + len("</think>"), len(target))
    if generated:
        return None, _strip_range(target, 0, len(target))
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
    prompt: str | None,
    target: str | None = None,
    *,
    output: SpanSpec = "auto",
    reasoning: SpanSpec = "auto",
    chat_template: bool | None = None,
    target_ids: list[int] | None = None,
    messages: Any = None,  # list of {"role", "content"} dicts; checked at run time (SpanError)
    system: str | None = None,
    generated: bool = False,
) -> Sequence:
    """Tokenise prompt + target in context, select the spans and assign roles.

    ``target`` (text, tokenised in context) or ``target_ids`` (ids used verbatim, e.g.
    what the model generated; spans are found on their decoded text).  ``prompt`` (with
    optional ``system``) or ``messages``: see the module docstring.  ``generated``: the
    target is the model's own generation (the ``auto`` rule then guesses no reasoning span
    without ``<think>`` tags, :func:`auto_spans`).
    """
    formatted, special = format_prompt(tokenizer, prompt, chat_template, messages=messages, system=system)
    base = len(formatted)
    if target_ids is not None:
        if target is not None:
            raise SpanError("pass either target= or target_ids=, not both")
        target_ids = check_ids(tokenizer, target_ids)
        prompt_ids, offsets = encode_text(tokenizer, formatted, special)
        p = len(prompt_ids)
        target, t_off = decode_with_offsets(tokenizer, target_ids)
        if not target.strip():
            raise SpanError("target_ids decode to blank text; pass ids of the text to attribute")
        ids = prompt_ids + target_ids
        offsets = offsets + [(a + base, b + base) for a, b in t_off]
    else:
        if not isinstance(target, str):
            raise SpanError("target must be a string (or None to generate)")
        ids, offsets, p = tokenize_in_context(tokenizer, formatted, special, target)
    m = len(ids) - p
    t_offsets = offsets[p:]
    out_sel, rea_sel = as_select(output, "output"), as_select(reasoning, "reasoning")
    if out_sel is None:
        raise SpanError("output span is required; pass a substring, a token range or 'auto'")

    def tok_range(chars: tuple[int, int] | None) -> tuple[int, int] | None:
        if chars is None:
            return None
        a, b = _chars_to_tokens(chars, t_offsets, base)
        return p + a, p + b

    if out_sel == "auto" and rea_sel not in ("auto", None):
        rea = _resolve(rea_sel, "reasoning", target, t_offsets, base, p, m)
        out = tok_range(_strip_range(target, _char_end(rea[1] - 1, offsets, base), len(target)))
    elif out_sel == "auto":
        auto_r, auto_o = auto_spans(target, generated)
        out = tok_range(auto_o)
        rea = tok_range(auto_r) if rea_sel == "auto" else None
    else:
        out = _resolve(out_sel, "output", target, t_offsets, base, p, m)
        if rea_sel == "auto":
            rea = (p, out[0]) if out[0] > p and target[: _char_start(out[0], offsets, base)].strip() else None
        elif rea_sel is None:
            rea = None
        else:
            rea = _resolve(rea_sel, "reasoning", target, t_offsets, base, p, m)
    if out is None:
        raise SpanError("could not find an output span automatically; pass output= explicitly")
    if rea is not None and rea[1] > out[0]:
        raise SpanError(
            f"the output span (target tokens {out[0] - p}:{out[1] - p}) must come after the reasoning "
            f"span (target tokens {rea[0] - p}:{rea[1] - p})"
        )
    user, marked = _user_prompt_range(formatted, user_contents(prompt, messages, system), offsets[:p])
    roles = ["template"] * p
    for i in marked:
        roles[i] = "prompt"
    roles += ["other"] * m
    if rea is not None:
        for i in range(*rea):
            roles[i] = "reasoning"
    for i in range(*out):
        roles[i] = "output"
    return Sequence(
        ids=torch.tensor(ids, dtype=torch.long),
        tokens=display_tokens(tokenizer, ids),
        roles=roles,
        prompt_len=p,
        user_prompt=user,
        target_text=target,
        output=out,
        reasoning=rea,
        chat_formatted=not special,
    )


def _char_start(pos: int, offsets: list[tuple[int, int]], base: int) -> int:
    return max(0, offsets[pos][0] - base)


def _char_end(pos: int, offsets: list[tuple[int, int]], base: int) -> int:
    return max(0, offsets[pos][1] - base)


def _user_prompt_range(
    formatted: str, contents: list[str], offsets: list[tuple[int, int]]
) -> tuple[tuple[int, int], list[int]]:
    """The prompt tokens holding the user's ``contents`` (each message's text), found from
    the end of ``formatted`` backwards (a template's default system prompt comes first),
    as their overall range and the positions themselves.  Text the template does not
    copy verbatim (nor stripped) stays ``template``; if none is found, all is prompt."""
    end, hit = len(formatted), set()
    for content in reversed(contents):
        for text in (content, content.strip()):
            c0 = formatted.rfind(text, 0, end) if text else -1
            if c0 >= 0:
                c1 = c0 + len(text)
                hit.update(i for i, (s, e) in enumerate(offsets) if s < c1 and e > c0)
                end = c0
                break
    if not hit:
        return (0, len(offsets)), list(range(len(offsets)))
    marked = sorted(hit)
    return (marked[0], marked[-1] + 1), marked


_RANGE = re.compile(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*")


def parse_span(value: Any, flag: str, occurrence: int | None = None, allow_none: bool = False) -> Any:
    """A span written as text (CLI flags, batch records) -> an argument of :func:`ftlens.trace`.

    ``auto``; ``A:B`` (target tokens, half-open); ``re:REGEX``; ``text:LITERAL``; ``none``
    (with ``allow_none``); ``[a, b]`` (JSON); anything else is a substring.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        value = f"{value[0]}:{value[1]}"
    if not isinstance(value, str):
        raise SpanError(f"{flag} must be a string (auto, A:B, re:REGEX or a substring) or [a, b]; got {value!r:.60}")
    if value == "auto":
        if occurrence is not None:
            raise SpanError(f"{flag}-occurrence needs a substring or re:REGEX span, not auto")
        return "auto"
    if value == "none" and allow_none:
        return None
    if value.startswith("re:"):
        pattern = value[3:]
        if not pattern:
            raise SpanError(f"{flag} re: needs a regular expression after the prefix, e.g. re:[0-9]+")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SpanError(f"{flag} regex {pattern!r} does not compile ({exc}); fix the pattern") from None
        return Select(regex=pattern, occurrence=occurrence)
    if value.startswith("text:"):
        return Select(text=value[5:], occurrence=occurrence)
    if ":" in value and re.fullmatch(r"[\s\d:+-]*", value):
        m = _RANGE.fullmatch(value)
        if m is None:
            raise SpanError(
                f"{flag} {value!r} is not a token range; write A:B with two integers, e.g. 0:5 "
                f"(target tokens, half-open), or text:{value} for a literal"
            )
        if occurrence is not None:
            raise SpanError(f"{flag}-occurrence needs a substring or re:REGEX span, not a token range")
        return Select(tokens=(int(m.group(1)), int(m.group(2))))
    return Select(text=value, occurrence=occurrence)
