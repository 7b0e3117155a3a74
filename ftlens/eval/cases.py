"""Evaluation cases: one generated example (:mod:`ftlens.eval.tasks`) laid on the model's token
sequence, with the user-prompt positions, the answer span and the evidence tokens the metrics
need (:mod:`ftlens.eval.scoring`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Int
from torch import Tensor

from ..generation import generate
from ..chat import format_prompt
from ..spans import Sequence, build_sequence


@dataclass
class Case:
    """One evaluation example on a fixed token sequence.

    ``ids``: the full sequence (formatted prompt + target); ``prompt_pos``: the user-prompt
    positions (absolute); ``target_start``: first target position; ``output``: answer span
    (absolute, half-open); ``evidence``: indices INTO ``prompt_pos`` of the evidence tokens.
    """

    ids: Int[Tensor, " pos"]
    prompt_pos: list[int]
    target_start: int
    output: tuple[int, int]
    evidence: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def greedy_agreement(model: Any, examples: list[dict[str, Any]], max_new_tokens: int = 48) -> float:
    """Fraction of examples whose greedy generation contains the reference answer."""
    hits = 0
    for ex in examples:
        hits += ex["answer"] in generate(model, ex["prompt"], max_new_tokens=max_new_tokens)
    return hits / max(1, len(examples))


def build_case(
    model: Any, ex: dict[str, Any], chat_template: bool | None = None
) -> tuple[Sequence, Case, str]:
    """``(Sequence, Case, formatted_prompt)`` for one example: ids, user-prompt positions and
    evidence tokens (prompt tokens whose characters overlap an evidence range); ``meta["question"]``
    indexes the prompt tokens on the prompt's last line."""
    tok = model.tokenizer
    seq = build_sequence(tok, ex["prompt"], ex["target"], chat_template=chat_template)
    formatted, special = format_prompt(tok, ex["prompt"], chat_template)
    c0 = formatted.rfind(ex["prompt"])
    offsets = tok(formatted, add_special_tokens=special, return_offsets_mapping=True)["offset_mapping"]
    prompt_pos = [i for i, r in enumerate(seq.roles) if r == "prompt"]
    q0 = ex["prompt"].rfind("\n")  # the question is the prompt's last line (none without a newline)
    evidence, question = [], []
    for j, pos in enumerate(prompt_pos):
        s, e = offsets[pos][0] - c0, offsets[pos][1] - c0
        if any(s < b and e > a for a, b in ex["evidence"]):
            evidence.append(j)
        if q0 >= 0 and s > q0:
            question.append(j)
    case = Case(ids=seq.ids, prompt_pos=prompt_pos, target_start=seq.prompt_len, output=seq.output,
                evidence=evidence, meta={"id": ex.get("id"), "task": ex.get("task"), "question": question})
    return seq, case, formatted
