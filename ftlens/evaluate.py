"""Faithfulness metrics (method §13): deletion / insertion curves, RISE, MAS, Recovery@k%.

Definitions (``n`` user-prompt tokens, ``k`` groups, default 20):

- Ranking: user-prompt tokens sorted by score, highest first (stable: ties keep prompt order).
- Step ``i = 0..k`` deletes the top ``m_i = round(i * n / k)`` ranked tokens, replacing each
  by one fixed token id (``fill``, the same for every method); ``s_i = sum_t log p(x_t | x_<t)``
  over the scored target tokens of the perturbed sequence.  Two variants are scored from the
  same forward pass: ``answer`` (output span only) and ``target`` (every target token:
  reasoning + answer, think tags included).
- ``s_hat_i = clip((s_i - s_k) / |s_0 - s_k|, 0, 1)`` then made monotone non-increasing by a
  running minimum (``s_hat_i = min_{j <= i} s_hat_j``).  ``|s_0 - s_k| = 0`` gives all zeros.
- ``RISE = trapz(s_hat) / k`` (unit spacing, so the value is in [0, 1]; lower is better).
- ``MAS``: ``d_i`` = fraction of the (non-negative) attribution mass still undeleted after step
  ``i``; ``c_i = clip(s_hat_i + |s_hat_i - d_i|, 0, 1)``, min-max rescaled over ``i``,
  ``MAS = trapz(c_rescaled) / k`` (lower is better).  Mass uses ``max(score, 0)``; a method with
  no positive mass gets uniform mass.
- Insertion: start from every user-prompt token replaced and restore the top ``m_i``;
  ``s'_0`` = all replaced (= ``s_k``), ``s'_k`` = original (= ``s_0``);
  ``ins_hat_i = clip((s'_i - s'_0) / |s'_k - s'_0|, 0, 1)`` made monotone non-decreasing
  (running max); ``insertion AUC = trapz(ins_hat) / k`` (higher is better).
- ``Recovery@p%``: fraction of evidence tokens among the top ``ceil(p/100 * n)`` prompt tokens.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .fileio import atomic_write_text

VARIANTS = ("answer", "target")


# ---------------------------------------------------------------------------- pure metrics
def ranking(scores: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
    """Indices of ``scores`` from highest to lowest (stable: ties keep their order)."""
    return torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices


def step_sizes(n: int, k: int = 20) -> list[int]:
    """``m_i = round(i * n / k)`` for ``i = 0..k``: tokens deleted after step ``i``."""
    if k < 1:
        raise ValueError("k must be >= 1")
    return [int(math.floor(i * n / k + 0.5)) for i in range(k + 1)]


def normalise_deletion(s: Sequence[float]) -> Float[Tensor, " k1"]:
    """``s_hat_i = clip((s_i - s_k) / |s_0 - s_k|, 0, 1)``, running minimum from the left."""
    s = torch.as_tensor(s, dtype=torch.float64)
    span = float(abs(s[0] - s[-1]))
    if span == 0.0:
        return torch.zeros_like(s)
    out = ((s - s[-1]) / span).clamp(0.0, 1.0)
    return torch.cummin(out, dim=0).values


def normalise_insertion(s: Sequence[float]) -> Float[Tensor, " k1"]:
    """``clip((s_i - s_0) / |s_k - s_0|, 0, 1)``, running maximum from the left."""
    s = torch.as_tensor(s, dtype=torch.float64)
    span = float(abs(s[-1] - s[0]))
    if span == 0.0:
        return torch.zeros_like(s)
    out = ((s - s[0]) / span).clamp(0.0, 1.0)
    return torch.cummax(out, dim=0).values


def _area(y: Tensor) -> float:
    """Trapezoid area with unit spacing, divided by the number of intervals."""
    k = y.numel() - 1
    return float(torch.trapezoid(y.double())) / k


def rise(s: Sequence[float]) -> float:
    """RISE = trapezoid area under the normalised deletion curve / k (lower is better)."""
    return _area(normalise_deletion(s))


def insertion_auc(s: Sequence[float]) -> float:
    """Area under the normalised insertion curve / k (higher is better)."""
    return _area(normalise_insertion(s))


def mass_remaining(scores: Float[Tensor, " n"], k: int = 20) -> Float[Tensor, " k1"]:
    """``d_i``: fraction of ``max(score, 0)`` mass not yet deleted after step ``i``."""
    w = scores.detach().double().cpu().clamp(min=0.0)
    if float(w.sum()) <= 0.0:
        w = torch.ones_like(w)
    w = w[ranking(scores)]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
    m = step_sizes(scores.numel(), k)
    return 1.0 - cum[m] / cum[-1]


def mas(s: Sequence[float], d: Sequence[float]) -> float:
    """MAS = area of min-max rescaled ``clip(s_hat + |s_hat - d|, 0, 1)`` / k (lower is better)."""
    sh = normalise_deletion(s)
    d = torch.as_tensor(d, dtype=torch.float64)
    c = (sh + (sh - d).abs()).clamp(0.0, 1.0)
    lo, hi = float(c.min()), float(c.max())
    c = (c - lo) / (hi - lo) if hi > lo else torch.zeros_like(c)
    return _area(c)


def recovery(scores: Float[Tensor, " n"], evidence: Sequence[int], pct: float = 10.0) -> float:
    """Fraction of ``evidence`` (indices into ``scores``) in the top ``ceil(pct% * n)``."""
    ev = set(int(i) for i in evidence)
    if not ev:
        return float("nan")
    top = max(1, math.ceil(pct / 100.0 * scores.numel()))
    chosen = set(ranking(scores)[:top].tolist())
    return len(ev & chosen) / len(ev)


# ---------------------------------------------------------------------------- model scoring
def _hf(model: Any) -> Any:
    return getattr(model, "original_model", model)


def target_logprobs(
    model: Any,
    batch: Int[Tensor, "b pos"],
    start: int,
    *,
    chunk: int = 8,
) -> Float[Tensor, "b tgt"]:
    """Per-token ``log p(x_t | x_<t)`` for ``t = start..T-1`` of every row of ``batch``.

    Only the target rows go through the unembedding (the prompt rows' logits are not needed).
    """
    hf = _hf(model)
    body = getattr(hf, "model", None)
    head = getattr(hf, "lm_head", None)
    device = next(hf.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, batch.shape[0], chunk):
            x = batch[i : i + chunk].to(device)
            if body is not None and head is not None:
                h = body(input_ids=x).last_hidden_state[:, start - 1 : -1]
                logits = head(h).float()
            else:
                logits = hf(input_ids=x).logits[:, start - 1 : -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            outs.append(lp.gather(-1, x[:, start:, None]).squeeze(-1).cpu())
    return torch.cat(outs, 0)


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

    def _logp(self, batch: Tensor) -> dict[str, Tensor]:
        lp = target_logprobs(self.model, batch, self.case.target_start, chunk=self.chunk)
        a, b = self.case.output
        off = self.case.target_start
        return torch.stack([lp[:, a - off : b - off].sum(-1), lp.sum(-1)], -1)  # [b, 2]

    def curves(self, scores: Float[Tensor, " n"]) -> dict[str, Tensor]:
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

    def evaluate(self, scores: Float[Tensor, " n"], pct: float = 10.0) -> dict[str, float]:
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


def evidence_first_scores(n: int, evidence: Sequence[int]) -> Float[Tensor, " n"]:
    """Calibration ordering: evidence tokens (score 1) before all others (score 0)."""
    s = torch.zeros(n)
    s[list(evidence)] = 1.0
    return s


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


# ---------------------------------------------------------------------------- reporting helpers
def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error (``std(ddof=1) / sqrt(n)``, 0 for one value) and ``n``; NaNs dropped."""
    v = [float(x) for x in values if x == x]
    if not v:
        return float("nan"), float("nan"), 0
    n = len(v)
    mu = sum(v) / n
    if n == 1:
        return mu, 0.0, 1
    var = sum((x - mu) ** 2 for x in v) / (n - 1)
    return mu, math.sqrt(var / n), n


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """Write dict rows as CSV (columns: union of keys in first-seen order), atomically."""
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
