"""The model side of the faithfulness metrics (method §13): target log-probabilities of
perturbed sequences, and the deletion / insertion curves of one :class:`~ftlens.eval.cases.Case`.

Step ``i`` of a curve replaces the top ``m_i`` ranked user-prompt tokens by one fixed token id
(``fill``, the same for every method) and scores ``s_i = sum_t log p(x_t | x_<t)`` over the
target; two variants come from the same forward pass: ``answer`` (output span only) and
``target`` (every target token).  :mod:`ftlens.eval.metrics` turns the curves into RISE, MAS,
insertion AUC and Recovery.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..logprobs import target_logprobs
from .cases import Case
from .metrics import insertion_auc, mas, mass_remaining, ranking, recovery, rise, step_sizes

VARIANTS = ("answer", "target")


class Scorer:
    """Deletion / insertion curves of one :class:`Case`, shared by every method.

    ``fill``: the replacement token id (same for every method); ``k``: number of groups.
    The unperturbed and fully replaced sequences are scored once and cached.
    """

    def __init__(self, model: Any, case: Case, *, fill: int, k: int = 20, chunk: int = 8,
                 insertion: bool = True):
        self.model, self.case, self.fill, self.k, self.chunk = model, case, int(fill), k, chunk
        self.insertion = insertion
        self._cache: dict[bytes, Tensor] = {}  # replaced-position set -> [2] log-probs
        self.n = len(case.prompt_pos)
        self._pos = torch.tensor(case.prompt_pos, dtype=torch.long)
        full = case.ids.clone()
        empty = case.ids.clone()
        empty[self._pos] = self.fill
        lp = self._logp(torch.stack([full, empty]))
        self.s_full, self.s_empty = lp[0], lp[1]

    def _logp(self, batch: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch 2"]:
        lp = target_logprobs(self.model, batch, self.case.target_start, chunk=self.chunk)
        a, b = self.case.output
        off = self.case.target_start
        return torch.stack([lp[:, a - off : b - off].sum(-1), lp.sum(-1)], -1)  # [b, 2]

    def curves(self, scores: Float[Tensor, " prompt"]) -> dict[str, Tensor]:
        """Raw deletion and insertion curves ``[k+1, 2]`` (columns: answer, target)."""
        if scores.numel() != self.n:
            raise ValueError(f"expected {self.n} prompt scores, got {scores.numel()}")
        order = self._pos[ranking(scores)]
        m = step_sizes(self.n, self.k)
        sets = [order[: m[i]] for i in range(1, self.k)]
        if self.insertion:
            sets += [order[m[i] :] for i in range(1, self.k)]
        keys = [torch.sort(s_).values.numpy().tobytes() for s_ in sets]
        todo = {}
        for key, s_ in zip(keys, sets):
            if key not in self._cache and key not in todo:
                todo[key] = s_
        if todo:
            batch = []
            for s_ in todo.values():
                x = self.case.ids.clone()
                x[s_] = self.fill
                batch.append(x)
            for key, v in zip(todo, self._logp(torch.stack(batch))):
                self._cache[key] = v
        lp = torch.stack([self._cache[key] for key in keys]) if keys else torch.zeros(0, 2)
        d = torch.cat([self.s_full[None], lp[: self.k - 1], self.s_empty[None]])
        out = {"deletion": d}
        if self.insertion:
            out["insertion"] = torch.cat([self.s_empty[None], lp[self.k - 1 :], self.s_full[None]])
        return out

    def evaluate(self, scores: Float[Tensor, " prompt"], pct: float | int = 10.0) -> dict[str, float]:
        """All metrics for one method's prompt scores (both target variants)."""
        c = self.curves(scores)
        d = mass_remaining(scores, self.k)
        out: dict[str, float] = {}
        for j, v in enumerate(VARIANTS):
            out[f"rise_{v}"] = rise(c["deletion"][:, j].tolist())
            out[f"mas_{v}"] = mas(c["deletion"][:, j].tolist(), d.tolist())
            out[f"ins_{v}"] = insertion_auc(c["insertion"][:, j].tolist()) if self.insertion else float("nan")
        out["recovery"] = recovery(scores, self.case.evidence, pct) if self.case.evidence else float("nan")
        return out


def default_fill(tokenizer: Any) -> int:
    """The replacement token: ``"_"`` when it is one token (a neutral, in-text symbol), else
    the tokenizer's pad id, else its EOS id, else 0.  (Pad/EOS of chat models are end-of-turn
    markers; a run of them inside the user turn is far out of distribution.)"""
    ids = tokenizer("_", add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    return 0
