"""``ftlens.trace``: from text to a :class:`~ftlens.result.Trace`.

    text -> spans (tokenise in context, roles) -> capture (one forward pass)      = prepare
         -> aggregate (per-layer shares) -> recursion (hops) -> Trace             = attribute

:func:`trace` builds one :class:`~ftlens.options.TraceOptions` from its keywords and runs
:func:`prepare` then :func:`attribute`; :func:`attribute` can run again on the same
:class:`Captured` state with other options (no new forward pass).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ._version import __version__
from .aggregate import default_tolerance, span_shares, tokenwise_shares
from .capture import LayerState, ModelInfo, capture, model_info
from .errors import SpanError, TraceError
from .generation import generate_ids
from .options import CAPTURE_OPTIONS, PENDING_TOL, TraceOptions
from .progress import Progress
from .recursion import explained_span, recurse, traced_rows
from .records import HopRecord, Shares
from .result import Trace
from .spans import Sequence, SpanSpec, build_sequence
from .tokens import stop_tokens

__all__ = ["trace", "prepare", "attribute", "Captured", "model_name"]

#: The order of ``Trace.params`` in files (that of traces written before options became one
#: value; options added since follow).
PARAMS_ORDER = ("hops", "hops_run", "threshold", "chat_template", "rows", "explain", "stop_rows", "completeness_tol",
                "family", "generated", "stopped_on_eos", "chat_formatted", "stop_at", "stopped_on")


@dataclass
class Captured:
    """One forward pass's state, ready for any number of span passes (no new forward pass).

    ``seq``: the tokenised sequence with roles and spans; ``info``: the model's block family
    and per-layer parameters; ``states``: per-layer :class:`~ftlens.capture.LayerState` of the
    target rows; ``row_pos``: their positions; ``tol``: the completeness guard's tolerance;
    ``model``: the model's name; ``tokenizer``: its tokenizer; ``generated``, ``stopped_on_eos``,
    ``stopped_on``: how a generated target ended; ``options``: the options it was prepared with
    (:func:`attribute`'s defaults); ``prepare_s``: its seconds.
    """

    seq: Sequence
    info: ModelInfo
    states: list[LayerState]
    row_pos: Tensor
    tol: float
    timings: dict[str, float]
    t_start: float
    generated: bool
    stopped_on_eos: bool | None
    stopped_on: str | None = None
    model: str = "unknown"
    tokenizer: Any = field(default=None, repr=False)
    options: TraceOptions = field(default_factory=TraceOptions)
    prepare_s: float = 0.0

    @functools.cached_property
    def stop(self) -> Tensor:
        """The sequence's stop tokens (``,`` ``.`` blank; :func:`ftlens.tokens.stop_tokens`)."""
        return stop_tokens(self.tokenizer, self.seq.ids.tolist())

    def skip(self, options: TraceOptions) -> Tensor | None:
        """The positions ``options`` never traces as rows: :attr:`stop` with ``stop_rows="skip"``."""
        return self.stop if options.stop_rows == "skip" else None


def options_from(options: TraceOptions | None, values: dict[str, Any]) -> TraceOptions:
    """``options`` with ``values`` replaced (or new options of ``values``), checked."""
    if options is None:
        return TraceOptions(**values)
    return options.replace(**values) if values else options


def prepare(
    model: Any,
    prompt: str | None = None,
    target: str | None = None,
    *,
    options: TraceOptions | None = None,
    target_ids: list[int] | None = None,
    messages: Any = None,
    system: str | None = None,
    output: SpanSpec = "auto",
    reasoning: SpanSpec = "auto",
    progress: bool = False,
    collect: Callable[[Sequence], list[tuple[str, Callable]]] | None = None,
    **option_values: Any,
) -> Captured:
    """Tokenise (generating first when ``target`` and ``target_ids`` are ``None``) and run the
    one capture pass; unsupported model structures are refused before any forward pass.
    ``options`` (or option keywords, e.g. ``chat_template=False``): the generation options and
    the guard's tolerance are read here.  ``collect(seq)``: read-only hooks for that same pass,
    made once the sequence is known (e.g. :class:`ftlens.dla.DLACollector`'s, so DLA needs
    no forward pass of its own)."""
    opts = options_from(options, option_values)
    info = model_info(model)
    tol = float(opts.completeness_tol) if opts.completeness_tol is not None else default_tolerance(model)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    generated, stopped_on_eos, stopped_on = target is None and target_ids is None, None, None
    if generated:
        g = generate_ids(
            model, prompt, max_new_tokens=opts.max_new_tokens, chat_template=opts.chat_template, messages=messages,
            system=system, stop_at=opts.stop_at,
        )
        if not g.text.strip():
            raise TraceError("the model generated no text for this prompt; pass target= explicitly")
        target_ids, stopped_on_eos, stopped_on = g.ids, g.stopped_on_eos, g.stopped_on
        timings["generate"] = time.perf_counter() - t_start
    seq = build_sequence(
        model.tokenizer, prompt, target, output=output, reasoning=reasoning, chat_template=opts.chat_template,
        target_ids=target_ids, messages=messages, system=system, generated=generated,
    )
    if info.n_ctx is not None and seq.n > int(info.n_ctx):
        raise SpanError(
            f"the sequence has {seq.n} tokens but the model's context is {info.n_ctx}; "
            "shorten the prompt or the target"
        )
    bar = Progress(enabled=progress, total=info.n_layers, desc="capture")
    t0 = time.perf_counter()
    extra = collect(seq) if collect is not None else ()
    states = capture(model, seq.ids, seq.prompt_len, info, progress=bar.step, extra_hooks=extra)
    bar.close()
    timings["capture"] = time.perf_counter() - t0
    row_pos = torch.arange(seq.prompt_len, seq.n, device=states[0].a.device)
    return Captured(seq, info, states, row_pos, tol, timings, t_start, generated, stopped_on_eos, stopped_on,
                    model_name(model), model.tokenizer, opts, time.perf_counter() - t_start)


def model_name(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or getattr(model, "ftlens_name", None) or "unknown")


def trace(
    model: Any,
    prompt: str | None = None,
    target: str | None = None,
    *,
    target_ids: list[int] | None = None,
    messages: Any = None,  # list of {"role", "content"} dicts; checked at run time (SpanError)
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
    stop_rows: str = "keep",
    collect: Callable[[Sequence], list[tuple[str, Callable]]] | None = None,
    stop_at: str = "auto",
    handoff: str = "reasoning",
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
    ``stop_rows``: ``"keep"`` (default) traces every target row; ``"skip"`` never traces the rows
    of the target's stop tokens ``,`` ``.`` and blank ones (:func:`ftlens.tokens.stop_tokens`):
    they stay sources, and flashtrace neither explains nor relays through them
    (:mod:`ftlens.recursion`).
    ``collect``: see :func:`prepare` (read-only hooks for the capture pass).
    ``stop_at``: where a generated target stops (:mod:`ftlens.generation`): ``"auto"``
    (default: at the first line break after text when the prompt is raw text, at EOS when the
    chat template formats it), ``"line"`` or ``"eos"``; ``params["stopped_on"]`` says why it
    stopped (``"eos"``, ``"line"`` or ``"length"``).  Without ``<think>`` tags a generated
    target is all output (no reasoning span is guessed).
    ``handoff``: which mass flashtrace's hops re-trace, ``"reasoning"`` (default, the paper's
    recursion) or ``"target"`` (every target token's, the answer's own included, as the reference
    package does; the output mass is then 0; :mod:`ftlens.recursion`).
    """
    given = locals()
    opts = TraceOptions(**{name: given[name] for name in TraceOptions.__dataclass_fields__})
    cap = prepare(model, prompt, target, options=opts, target_ids=target_ids, messages=messages, system=system,
                  output=output, reasoning=reasoning, progress=progress, collect=collect)
    return attribute(cap, opts, progress=progress)


def attribute(cap: Captured, options: TraceOptions | None = None, *, progress: bool = False,
              **option_values: Any) -> Trace:
    """The trace of ``cap``'s sequence with ``options`` (default: the options ``cap`` was prepared
    with; option keywords replace some of them): the span passes and the recursion on the captured
    state, no forward pass.  The capture's own options (:data:`~ftlens.options.CAPTURE_OPTIONS`:
    generation and the guard's tolerance) were used by :func:`prepare` and cannot change here."""
    opts = options_from(cap.options if options is None else options, option_values)
    changed = [k for k in CAPTURE_OPTIONS if getattr(opts, k) != getattr(cap.options, k)]
    if changed:
        raise TraceError(f"{', '.join(changed)} cannot change after the capture (it was prepared with "
                         + ", ".join(f"{k}={getattr(cap.options, k)!r}" for k in changed)
                         + "); pass them to prepare() instead")
    seq, info, states, row_pos, tol = cap.seq, cap.info, cap.states, cap.row_pos, cap.tol
    row_start, n_rows = seq.prompt_len, seq.n - seq.prompt_len
    timings = dict(cap.timings)
    t0 = time.perf_counter()
    row_scores = None
    skip = cap.skip(opts)
    if opts.method == "ifr-tokenwise":
        rows = traced_rows(*explained_span(seq.output, seq.reasoning, opts.explain), skip)
        row_idx = torch.tensor(rows, device=row_pos.device) - row_start
        bar = Progress(enabled=progress, total=info.n_layers, desc="tokenwise")
        tw = tokenwise_shares(states, info, row_pos, row_idx, opts.threshold, progress=bar.step, tol=tol)
        bar.close()
        scores = tw.mean.raw_scores.cpu()
        hop_records = [HopRecord(weight=1.0, norm=float(scores.sum()), thinking_ratio=0.0, scores=scores,
                                 **_cpu_shares(tw.mean))]
        row_scores = tw.row_scores.cpu()
        output_mass = unresolved = 0.0
    else:
        bar = Progress(enabled=progress, total=info.n_layers * (opts.n_hops + 1), desc="attribution")

        def span_fn(w: torch.Tensor):
            return span_shares(states, info, row_pos, w.to(row_pos.device), opts.threshold, progress=bar.step,
                               tol=tol)

        rec = recurse(span_fn, seq.n, row_start, seq.output, seq.reasoning, opts.n_hops, explain=opts.explain,
                      pending_tol=PENDING_TOL, skip=skip, handoff=opts.handoff)
        bar.close()
        hop_records = rec.hops
        if opts.method == "ifr-span":
            scores = hop_records[0].raw_scores  # r(s) of the one span pass
            hop_records[0].scores = scores
            output_mass = unresolved = 0.0
        else:
            scores = rec.final
            output_mass, unresolved = rec.output_mass, rec.unresolved
    timings["attribution"] = time.perf_counter() - t0
    timings["total"] = cap.prepare_s + timings["attribution"]
    generated = cap.generated
    params = {**opts.params(generated), "hops_run": len(hop_records) - 1, "rows": n_rows, "completeness_tol": tol,
              "family": info.family.kind, "generated": generated, "stopped_on_eos": cap.stopped_on_eos,
              "chat_formatted": seq.chat_formatted, **({"stopped_on": cap.stopped_on} if generated else {})}
    params = {**{k: params[k] for k in PARAMS_ORDER if k in params}, **params}
    return Trace(
        model=cap.model,
        method=opts.method,
        params=params,
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


def _cpu_shares(sh: Shares) -> dict[str, Any]:
    """A :class:`Shares`' tensors as float32 on the CPU (keyword arguments of a record)."""
    return {
        "heads": sh.heads.cpu().float(),
        "residual": sh.residual.cpu().float(),
        "bias": sh.bias.cpu().float(),
        "mlp": sh.mlp.cpu().float(),
        "gap": sh.gap.cpu().float() if sh.gap is not None else None,
    }
