"""``ftlens.trace``: from text to a :class:`~ftlens.trace.Trace`.

    text -> spans (tokenise in context, roles) -> capture (one forward pass)
         -> aggregate (per-layer shares) -> recursion (hops) -> Trace
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .aggregate import span_shares, tokenwise_shares
from .capture import capture, model_info
from .errors import SpanError, TraceError
from .progress import Progress
from .recursion import EXPLAIN, explained_span, recurse
from .spans import SpanSpec, build_sequence, format_prompt
from .trace import HopRecord, Trace

METHODS = ("flashtrace", "ifr-span", "ifr-tokenwise")
#: Largest ``hops`` accepted; recursion stops earlier once the pending mass is <= PENDING_TOL.
MAX_HOPS = 1000
#: Pending (reasoning) mass below which further hops change no score by more than this.
PENDING_TOL = 1e-6


def _model_name(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or getattr(model, "ftlens_name", None) or "unknown")


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
    messages: list[dict[str, str]] | None = None,
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
    device = next(model.parameters()).device
    hf = model.original_model
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
    messages: list[dict[str, str]] | None = None,
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


def trace(
    model: Any,
    prompt: str | None = None,
    target: str | None = None,
    *,
    target_ids: list[int] | None = None,
    messages: list[dict[str, str]] | None = None,
    system: str | None = None,
    output: SpanSpec = "auto",
    reasoning: SpanSpec = "auto",
    hops: int | None = None,
    method: str = "flashtrace",
    explain: str = "output",
    threshold: float | None = None,
    chat_template: bool | None = None,
    max_new_tokens: int = 128,
    progress: bool = False,
    completeness_tol: float | int | None = None,
) -> Trace:
    """Attribute the output span of ``target`` to every earlier position.

    ``method``: ``"flashtrace"`` (span + recursion through the reasoning span, ``hops``
    times, default 1; it stops early once the pending mass is <= ``PENDING_TOL`` and
    ``params["hops_run"]`` says how many ran; other methods refuse ``hops``),
    ``"ifr-span"`` (one span pass, raw token scores ``r(s)``) or
    ``"ifr-tokenwise"`` (one row per output token, scores = mean row).
    ``explain``: what hop 0 explains, ``"output"`` (the answer span, method §10, default)
    or ``"target"`` (reasoning + answer: hop 0 is one span pass over ``[reasoning start,
    output end)``, ifr-tokenwise averages those rows; flashtrace then recurses the mass hop 0
    puts on reasoning tokens).  Same result when there is no reasoning span.
    ``threshold`` zeroes normalised per-layer shares below it (off by default).
    With ``target=None`` the model first generates ``max_new_tokens`` greedily and the
    generated ids are traced verbatim (:func:`generate_ids`; the EOS is left out,
    ``params["stopped_on_eos"]`` says whether it stopped on one, ``params["generated"]``
    that the target was generated).  ``target_ids=`` traces given ids (no re-tokenisation)
    instead of ``target`` text.  ``messages=[{"role": "system"|"user"|"assistant",
    "content": ...}, ...]`` (ending with a user turn) replaces ``prompt``; ``system=`` adds
    a system prompt to ``prompt``; both need a chat template, and every message's content
    is role ``prompt`` (see :mod:`ftlens.spans`).
    ``completeness_tol``: the completeness guard's tolerance on each layer's relative L1
    gap (method §3); default :func:`default_tolerance` of the model's dtype (1e-4 in
    float32).  Above it the trace raises :class:`TraceError` naming the layer.
    Unsupported model structures are refused before any forward pass.
    """
    if method not in METHODS:
        raise TraceError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if explain not in EXPLAIN:
        raise TraceError(f"explain must be 'output' (the answer span) or 'target' (reasoning + answer), got {explain!r}")
    if hops is not None and (not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= MAX_HOPS):
        raise TraceError(f"hops must be an integer in [0, {MAX_HOPS}], got {hops!r}")
    if hops not in (None, 0) and method != "flashtrace":
        raise TraceError(
            f"hops={hops} applies to method='flashtrace' only ({method!r} makes one pass); "
            "drop hops or use method='flashtrace'"
        )
    hops = 1 if hops is None else hops
    if threshold is not None and not (0 <= threshold < 1):
        raise TraceError(f"threshold must be in [0, 1), got {threshold!r}")
    if completeness_tol is not None and not (isinstance(completeness_tol, (int, float)) and completeness_tol > 0):
        raise TraceError(f"completeness_tol must be a number > 0, got {completeness_tol!r}")
    info = model_info(model)  # refuses unsupported structures before any forward pass
    tol = float(completeness_tol) if completeness_tol is not None else default_tolerance(model)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    generated, stopped_on_eos = target is None and target_ids is None, None
    if generated:
        g = generate_ids(
            model, prompt, max_new_tokens=max_new_tokens, chat_template=chat_template, messages=messages, system=system
        )
        if not g.text.strip():
            raise TraceError("the model generated no text for this prompt; pass target= explicitly")
        target_ids, stopped_on_eos = g.ids, g.stopped_on_eos
        timings["generate"] = time.perf_counter() - t_start
    seq = build_sequence(
        model.tokenizer, prompt, target, output=output, reasoning=reasoning, chat_template=chat_template,
        target_ids=target_ids, messages=messages, system=system,
    )
    if info.n_ctx is not None and seq.n > int(info.n_ctx):
        raise SpanError(
            f"the sequence has {seq.n} tokens but the model's context is {info.n_ctx}; "
            "shorten the prompt or the target"
        )
    row_start = seq.prompt_len
    n_rows = seq.n - row_start
    bar = Progress(enabled=progress, total=info.n_layers, desc="capture")
    t0 = time.perf_counter()
    states = capture(model, seq.ids, row_start, info, progress=bar.step)
    bar.close()
    timings["capture"] = time.perf_counter() - t0
    row_pos = torch.arange(row_start, seq.n, device=states[0].a.device)

    t0 = time.perf_counter()
    row_scores = None
    if method == "ifr-tokenwise":
        first, last = explained_span(seq.output, seq.reasoning, explain)
        rows = torch.arange(first - row_start, last - row_start, device=row_pos.device)
        bar = Progress(enabled=progress, total=info.n_layers, desc="tokenwise")
        tw = tokenwise_shares(states, info, row_pos, rows, threshold, progress=bar.step, tol=tol)
        bar.close()
        scores = tw.mean.scores.cpu()
        hop_records = [_record(1.0, float(scores.sum()), 0.0, scores, tw.mean)]
        row_scores = tw.row_scores.cpu()
        output_mass = unresolved = 0.0
    else:
        k = hops if method == "flashtrace" else 0
        bar = Progress(enabled=progress, total=info.n_layers * (k + 1), desc="attribution")

        def span_fn(w: torch.Tensor):
            return span_shares(states, info, row_pos, w.to(row_pos.device), threshold, progress=bar.step, tol=tol)

        rec = recurse(span_fn, seq.n, row_start, seq.output, seq.reasoning, k, explain=explain,
                      pending_tol=PENDING_TOL)
        bar.close()
        hop_records = [
            _record(h.weight, h.norm, h.thinking_ratio, h.contribution, h.shares) for h in rec.hops
        ]
        if method == "ifr-span":
            scores = rec.hops[0].shares.scores.cpu()
            hop_records[0].scores = scores
            output_mass = unresolved = 0.0
        else:
            scores = rec.final
            output_mass, unresolved = rec.output_mass, rec.unresolved
    timings["attribution"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    from . import __version__

    return Trace(
        model=_model_name(model),
        method=method,
        params={"hops": hops if method == "flashtrace" else 0, "hops_run": len(hop_records) - 1, "threshold": threshold,
                "chat_template": chat_template, "rows": n_rows,
                "explain": explain, "completeness_tol": tol, "family": info.family.kind,
                "generated": generated, "stopped_on_eos": stopped_on_eos},
        ids=seq.ids.tolist(),
        tokens=seq.tokens,
        roles=seq.roles,
        output=seq.output,
        reasoning=seq.reasoning,
        scores=scores,
        hops=hop_records,
        output_mass=output_mass,
        unresolved=unresolved,
        row_scores=row_scores,
        timings=timings,
        version=__version__,
    )


def _record(weight, norm, ratio, scores, shares) -> HopRecord:
    return HopRecord(
        weight=float(weight),
        norm=float(norm),
        thinking_ratio=float(ratio),
        scores=scores.cpu().float(),
        heads=shares.heads.cpu().float(),
        residual=shares.residual.cpu().float(),
        bias=shares.bias.cpu().float(),
        mlp=shares.mlp.cpu().float(),
        gap=shares.gap.cpu().float() if shares.gap is not None else None,
    )


#: The completeness guard's default tolerance per model dtype (relative L1 gap per layer).
#: float32: decompositions close to ~1e-6; half precision rounds every captured activation
#: (and ``b - a`` loses bits to the residual's size), measured in analyses/bench_speed.py.
TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
#: Measured on SmolLM2-135M, needle example, hops=2: max gap 8.7e-7 (float32), 6.0e-3 (bfloat16),
#: 7.9e-4 (float16); a missing post-norm fold gives 0.66-7 (issue 10).


def default_tolerance(model: Any) -> float:
    """The guard's tolerance for the dtype the model runs in (see :data:`TOLERANCES`)."""
    try:
        dtype = next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
        dtype = torch.float32
    return TOLERANCES.get(dtype, 1e-4)
