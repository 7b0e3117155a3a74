"""Trace options in one place: one frozen value, :class:`TraceOptions`, checked once when it is made.

Every way into a trace builds one: :func:`ftlens.trace` from its keywords, the ``ftlens``
command from its flags (:meth:`TraceOptions.from_args`, before any model loads), batch and study
runs from theirs; they all accept and refuse exactly the same values.  What an option is, is
written once, in its field's metadata (:func:`option`):

- ``cli``: the flag of ``ftlens trace / batch / study run`` (argparse keywords, ``type`` by
  name; ``choices`` come from the constants below; :func:`ftlens.cli.args.add_trace_flags`
  adds them), or none;
- ``request``: whether it is part of what a batch/study result was made from (the staleness
  check of ``--resume``): ``"always"``, ``"non-default"`` (options added after results were
  first stored: a result made before the option existed was made with its default), or
  ``"generated"`` (only for a generated target);
- ``params``: whether ``Trace.params`` records it (``"always"`` or ``"generated"``).

Adding an option is one field here and the code where it takes effect (plus the keyword of
:func:`ftlens.trace`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import TraceError

#: Attribution methods (method §7, §8, §10).
METHODS = ("flashtrace", "ifr-span", "ifr-tokenwise")
#: What hop 0 explains: the answer span, or reasoning + answer (method §10).
EXPLAIN = ("output", "target")
#: What span passes do with the target's stop-token rows (``,`` ``.`` blank): trace them, or skip them.
STOP_ROWS = ("keep", "skip")
#: Which mass a hop re-traces: the reasoning tokens' (the paper's recursion), or every target token's.
HANDOFF = ("reasoning", "target")
#: Where a generated target stops: auto (line for raw-text prompts, eos for chat ones), line, eos.
STOP_AT = ("auto", "line", "eos")
#: The options the capture reads (:func:`ftlens.pipeline.prepare`): how the target is generated
#: and the guard's tolerance; :func:`ftlens.pipeline.attribute` on that capture cannot change them.
CAPTURE_OPTIONS = ("chat_template", "max_new_tokens", "stop_at", "completeness_tol")
#: Largest ``hops`` accepted; recursion stops earlier once the pending mass is <= PENDING_TOL.
MAX_HOPS = 1000
#: Pending (reasoning) mass below which further hops change no score by more than this.
PENDING_TOL = 1e-6


def option(default: Any, *, cli: dict[str, Any] | None = None, request: str | None = "always",
           params: str | None = "always") -> Any:
    """A :class:`TraceOptions` field and what it is to the CLI, to requests and to ``params``."""
    return field(default=default, metadata={"cli": cli, "request": request, "params": params})


@dataclass(frozen=True)
class TraceOptions:
    """How to trace: the attribution method and its settings, and how a missing target is generated.

    ``method``: ``flashtrace`` (span pass + recursion), ``ifr-span`` or ``ifr-tokenwise``;
    ``hops``: recursion hops (``None``: 1 for flashtrace; other methods refuse any but 0);
    ``explain``: what hop 0 explains (``output`` or ``target``); ``stop_rows``: ``keep`` or
    ``skip`` the target's stop-token rows; ``handoff``: which mass a hop re-traces (``reasoning``
    or ``target``); ``threshold``: zero normalised per-layer shares below
    it; ``completeness_tol``: the completeness guard's tolerance (``None``: the model dtype's);
    ``chat_template``: use the tokenizer's chat template (``None``: when it has one);
    ``max_new_tokens`` and ``stop_at``: how a missing target is generated.
    """

    method: str = option("flashtrace", params=None, cli={
        "flag": "--method", "help": "flashtrace (default), ifr-span or ifr-tokenwise"})
    hops: int | None = option(None, cli={
        "flag": "--hops", "type": "int", "help": "recursion hops through the reasoning span (flashtrace only; default 1)"})
    explain: str = option("output", cli={
        "flag": "--explain", "choices": EXPLAIN,
        "help": "what hop 0 explains: output = the answer span (default), target = reasoning + answer"})
    stop_rows: str = option("keep", request="non-default", cli={
        "flag": "--stop-rows", "choices": STOP_ROWS,
        "help": "the target's ',' '.' and blank rows: keep = trace them (default), skip = do not trace them"})
    handoff: str = option("reasoning", request="non-default", cli={
        "flag": "--handoff", "choices": HANDOFF,
        "help": "which mass a hop re-traces: reasoning = the reasoning tokens' (default), target = every target "
                "token's, the answer's own included (the reference package's recursion)"})
    threshold: float | None = option(None, cli={
        "flag": "--threshold", "type": "float", "help": "zero normalised per-layer shares below this, in [0, 1)"})
    max_new_tokens: int = option(128, request="generated", params="generated", cli={
        "flag": "--max-new-tokens", "type": "positive_int",
        "help": "tokens to generate when there is no target (default 128)"})
    stop_at: str = option("auto", request="generated", params="generated", cli={
        "flag": "--stop-at", "choices": STOP_AT,
        "help": "where a generated target stops: auto = at its first line break when the prompt is raw text "
                "(--no-chat-template or no template), at EOS with the chat template (default); line; eos"})
    chat_template: bool | None = option(None, cli={
        "flag": "--no-chat-template", "action": "store_true", "dest": "no_chat_template",
        "help": "feed the prompt as raw text, without the chat template"})
    completeness_tol: float | int | None = option(None, request=None, params=None)

    def __post_init__(self) -> None:
        check(self)

    # ------------------------------------------------------------------ derived
    @property
    def n_hops(self) -> int:
        """The hops to run: ``hops``, or 1 for flashtrace when ``None``; 0 for the other methods."""
        if self.method != "flashtrace":
            return 0
        return 1 if self.hops is None else self.hops

    def replace(self, **changes: Any) -> "TraceOptions":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """Every option as the keywords of :func:`ftlens.trace`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def _value(self, name: str) -> Any:
        return self.n_hops if name == "hops" else getattr(self, name)

    def request(self, generated: bool = False) -> dict[str, Any]:
        """The options a stored result was made with (its staleness check compares them); the
        generation options only for a ``generated`` target."""
        out = {}
        for f in dataclasses.fields(self):
            kind = f.metadata["request"]
            if kind == "always" or (kind == "non-default" and getattr(self, f.name) != f.default) or (
                    kind == "generated" and generated):
                out[f.name] = self._value(f.name)
        return out

    def params(self, generated: bool = False) -> dict[str, Any]:
        """The options ``Trace.params`` records (generation options only for a ``generated`` target)."""
        return {f.name: self._value(f.name) for f in dataclasses.fields(self)
                if f.metadata["params"] == "always" or (f.metadata["params"] == "generated" and generated)}

    # ------------------------------------------------------------------ the command line
    @classmethod
    def from_args(cls, args: Any, **fixed: Any) -> "TraceOptions":
        """The options of parsed ``ftlens`` flags (:func:`ftlens.cli.args.add_trace_flags`); ``fixed``
        sets the others."""
        values = dict(fixed)
        for f in dataclasses.fields(cls):
            spec = f.metadata["cli"]
            if spec is None or not hasattr(args, spec.get("dest", f.name)):
                continue
            v = getattr(args, spec.get("dest", f.name))
            values[f.name] = (False if v else None) if spec.get("action") == "store_true" else v
        return cls(**values)


def check(o: TraceOptions) -> None:
    """Refuse bad options with a one-line :class:`TraceError` (what :class:`TraceOptions` runs)."""
    if o.method not in METHODS:
        raise TraceError(f"unknown method {o.method!r}; choose one of {', '.join(METHODS)}")
    if o.explain not in EXPLAIN:
        raise TraceError(f"explain must be 'output' (the answer span) or 'target' (reasoning + answer), got {o.explain!r}")
    if o.stop_rows not in STOP_ROWS:
        raise TraceError(f"stop_rows must be 'keep' or 'skip' (the target's ',' '.' and blank rows), got {o.stop_rows!r}")
    if o.handoff not in HANDOFF:
        raise TraceError(f"handoff must be 'reasoning' or 'target' (which mass a hop re-traces), got {o.handoff!r}")
    if o.handoff != "reasoning" and o.method != "flashtrace":
        raise TraceError(f"handoff={o.handoff!r} applies to method 'flashtrace' only ({o.method!r} makes one pass "
                         "and hands nothing on); drop handoff or use method 'flashtrace'")
    if o.stop_at not in STOP_AT:
        raise TraceError(f"stop_at must be 'auto', 'line' or 'eos' (where a generated target stops), got {o.stop_at!r}")
    hops = o.hops
    if hops is not None and (not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= MAX_HOPS):
        raise TraceError(f"hops must be an integer in [0, {MAX_HOPS}], got {hops!r}; hops=0 means no recursion")
    if hops not in (None, 0) and o.method != "flashtrace":
        raise TraceError(
            f"hops={hops} applies to method 'flashtrace' only ({o.method!r} makes one pass); "
            "drop hops or use method 'flashtrace'"
        )
    if o.threshold is not None and not (isinstance(o.threshold, (int, float)) and 0 <= o.threshold < 1):
        raise TraceError(f"threshold must be in [0, 1), got {o.threshold!r}; e.g. 0.001")
    tol = o.completeness_tol
    if tol is not None and not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
        raise TraceError(f"completeness_tol must be a number > 0, got {tol!r}")
    m = o.max_new_tokens
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise TraceError(f"max_new_tokens must be an integer >= 1, got {m!r}")
