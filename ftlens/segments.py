"""Segments of a token sequence: words, sentences, lines, or the user's character spans.

A segment is a half-open range of positions ``[start, end)`` inside one *run* of a role
(consecutive positions with the same role: a run of user-prompt tokens, of template tokens,
the reasoning span, the answer).  Segment scores are sums of token scores, so mass is kept.

Segments that are only whitespace (a blank line) join the segment before them.
Boundaries are read from the display tokens (``Trace.tokens``: each character shown once,
continuation pieces ``""``), so ``"".join(tokens[a:b])`` is the segment's text:

- ``"token"``: every position;
- ``"word"``: a new word starts at a token that begins with whitespace (continuations and
  punctuation stay with the word before);
- ``"line"``: a line ends after a token that contains a newline;
- ``"sentence"``: a sentence ends after a token ending in ``.``, ``!`` or ``?`` (optionally
  followed by closing quotes or brackets) when the next token starts with whitespace or the
  run ends, and after a token that contains a newline;
- character spans ``[(c0, c1), ...]`` relative to the run's text: each token goes to the span
  holding its first character; tokens in no span are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SpanError

__all__ = ["BY", "Segment", "role_runs", "split_run", "char_segments"]

#: Segmentation granularities.
BY = ("token", "word", "sentence", "line")

_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*\s*$")


@dataclass(frozen=True)
class Segment:
    """Positions ``[start, end)`` of one run of role ``role``; ``text`` its display text."""

    start: int
    end: int
    role: str
    text: str

    def __len__(self) -> int:
        return self.end - self.start


def role_runs(roles: list[str], roles_wanted: set[str] | None = None) -> list[tuple[int, int, str]]:
    """Maximal runs ``(start, end, role)`` of equal roles (only ``roles_wanted`` if given)."""
    runs, start = [], 0
    for i in range(1, len(roles) + 1):
        if i == len(roles) or roles[i] != roles[start]:
            if roles_wanted is None or roles[start] in roles_wanted:
                runs.append((start, i, roles[start]))
            start = i
    return runs


def _boundary_after(tokens: list[str], i: int, end: int, by: str) -> bool:
    tok = tokens[i]
    if by == "token":
        return True
    if by == "line":
        return "\n" in tok
    if by == "sentence":
        if "\n" in tok:
            return True
        nxt = tokens[i + 1] if i + 1 < end else None
        if nxt == "":  # a continuation piece belongs to this character
            return False
        return bool(_SENTENCE_END.search(tok)) and (nxt is None or nxt[:1].isspace())
    if by == "word":
        nxt = tokens[i + 1] if i + 1 < end else None
        return nxt is None or nxt[:1].isspace() or "\n" in tok
    raise SpanError(f"segment by must be one of {', '.join(BY)} or character spans, got {by!r}")


def split_run(tokens: list[str], start: int, end: int, role: str, by: str) -> list[Segment]:
    """Split positions ``[start, end)`` (one run) into segments by ``by`` (see the module doc)."""
    cuts, a = [], start
    for i in range(start, end):
        if i == end - 1 or _boundary_after(tokens, i, end, by):
            cuts.append((a, i + 1))
            a = i + 1
    if by != "token":  # whitespace alone (a blank line) joins the segment before it
        merged: list[tuple[int, int]] = []
        for a, b in cuts:
            if merged and not "".join(tokens[a:b]).strip():
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        cuts = merged
    return [Segment(a, b, role, "".join(tokens[a:b])) for a, b in cuts]


def char_segments(
    tokens: list[str], start: int, end: int, role: str, chars: list[tuple[int, int]]
) -> list[Segment]:
    """Segments for character spans ``[(c0, c1), ...]`` of the run's text ``"".join(tokens[start:end])``."""
    first_char, pos = [], 0
    for i in range(start, end):
        first_char.append(pos)
        pos += len(tokens[i])
    out = []
    for c0, c1 in chars:
        if not (isinstance(c0, int) and isinstance(c1, int) and 0 <= c0 < c1 <= pos):
            raise SpanError(f"character span {(c0, c1)} is outside the text's 0..{pos} characters")
        idx = [start + j for j, c in enumerate(first_char) if c0 <= c < c1 and tokens[start + j] != ""]
        if not idx:
            raise SpanError(f"character span {(c0, c1)} starts no token; widen it")
        a, b = idx[0], idx[-1] + 1
        while b < end and tokens[b] == "":  # keep a character's continuation pieces
            b += 1
        out.append(Segment(a, b, role, "".join(tokens[a:b])))
    return out
