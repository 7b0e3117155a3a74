"""Streaming capture of what attribution needs, on TransformerBridge hook points.

One forward pass with hooks that keep, per layer ``l``:

- ``a[l]``, ``b[l]``, ``c[l]``: the residual stream at the *tracked rows* only
  (the target positions), block input / after the attention add / block output,
  ``[row, d_model]``;
- ``q[l]``: the queries of the tracked rows as they enter the softmax
  (after RoPE and QK-norm), ``[head, row, d_head]``;
- ``k[l]``, ``v[l]``: keys and values of every position, per KV head,
  ``[kv, pos, d_head]``.

Everything is ``O(T * d)`` per layer; nothing ``[H, T, T]`` is kept (attention rows
are recomputed later in chunks by :mod:`ftlens.attention`).  Hook points used
(real TransformerBridge names, checked by a test since aliases changed in
TransformerLens 4): ``blocks.{l}.hook_in`` (= ``hook_resid_pre``),
``blocks.{l}.ln2.hook_in`` (= ``hook_resid_mid``), ``blocks.{l}.hook_out``
(= ``hook_resid_post``), ``blocks.{l}.attn.hook_rot_q/hook_rot_k`` and
``blocks.{l}.attn.v.hook_out`` (= ``attn.hook_v``).

Hooks are always removed when the capture ends, also when it raises.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from .attention import AttentionSpec
from .errors import TraceError
from .fastattn import fast_attention


@dataclass
class LayerState:
    """Per-layer state kept for attribution (all float32, on the model's device)."""

    a: Float[Tensor, "row d"] | None = None
    b: Float[Tensor, "row d"] | None = None
    c: Float[Tensor, "row d"] | None = None
    q: Float[Tensor, "head row dh"] | None = None
    k: Float[Tensor, "kv pos dh"] | None = None
    v: Float[Tensor, "kv pos dh"] | None = None


@dataclass
class ModelInfo:
    """Shapes and per-layer parameters of a bridge, read once per trace."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int | None
    specs: list[AttentionSpec]
    w_o: list[Float[Tensor, "head dh d"]] = field(repr=False)
    b_o: list[Float[Tensor, " d"] | None] = field(repr=False)
    q_hook: str = "hook_rot_q"
    k_hook: str = "hook_rot_k"


def model_info(model: Any) -> ModelInfo:
    """Read shapes, ``W_O``/``b_O`` and the softmax details of every layer."""
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    specs, w_o, b_o = [], [], []
    q_hook, k_hook = "hook_rot_q", "hook_rot_k"
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        hf_attn = getattr(attn, "original_component", None)
        if getattr(hf_attn, "sinks", None) is not None:
            raise TraceError(
                f"layer {layer}: attention sinks (GPT-OSS style) are not supported by ftlens yet"
            )
        if bool(getattr(cfg, "qk_norm_after_rope", False)):
            q_hook, k_hook = "hook_q_normed", "hook_k_normed"
        if not hasattr(attn, q_hook):
            raise TraceError(
                f"layer {layer}: attention {type(attn).__name__} has no {q_hook} hook; ftlens supports "
                "rotary decoder models (Llama, Qwen2, Qwen3, Mistral, SmolLM, ...)"
            )
        scale = getattr(hf_attn, "scaling", None) or float(cfg.d_head) ** -0.5
        specs.append(
            AttentionSpec(
                scale=float(scale),
                group=n_heads // n_kv,
                softcap=getattr(hf_attn, "attn_logit_softcapping", None),
                window=getattr(hf_attn, "sliding_window", None),
            )
        )
        w_o.append(attn.W_O.detach())
        bias = getattr(attn, "b_O", None)
        b_o.append(None if bias is None or not torch.any(bias != 0) else bias.detach())
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        n_ctx=getattr(cfg, "n_ctx", None),
        specs=specs,
        w_o=w_o,
        b_o=b_o,
        q_hook=q_hook,
        k_hook=k_hook,
    )


class _StopForward(Exception):
    """Raised by the last hook: the rest of the forward (final norm, unembedding) is not needed."""


@contextlib.contextmanager
def temporary_hooks(model: Any, hooks: list[tuple[str, Callable]]) -> Iterator[None]:
    """Register ``(hook_name, fn)`` pairs on the bridge and remove exactly those on exit."""
    added = []
    try:
        for name, fn in hooks:
            point = model.hook_dict[name]
            handle = point.add_hook(fn)
            added.append((point, handle))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


def capture(
    model: Any,
    tokens: Int[Tensor, " pos"],
    row_start: int,
    info: ModelInfo,
    *,
    progress: Callable[[int], None] | None = None,
    fast_attn: bool = True,
) -> list[LayerState]:
    """Run one forward pass and keep each layer's :class:`LayerState`.

    Rows tracked are positions ``row_start .. T-1``.  Raises :class:`TraceError`
    naming the layer if a residual stream becomes non-finite.  ``fast_attn``: run
    supported attention layers through :func:`ftlens.fastattn.fast_attention`
    (fused SDPA, no ``[H, T, T]`` pattern; same hooks, same values up to rounding).
    """
    states = [LayerState() for _ in range(info.n_layers)]
    rows = slice(row_start, None)

    def keep_resid(layer: int, attr: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            x = _own(x[0, rows].detach())
            if not _all_finite(x):
                raise TraceError(
                    f"non-finite activations at layer {layer} ({hook.name}); try dtype=float32 "
                    "or a shorter input"
                )
            setattr(states[layer], attr, x)
            if attr == "c":
                if progress is not None:
                    progress(layer)
                if layer == info.n_layers - 1:
                    raise _StopForward

        return fn

    def keep_q(layer: int) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            states[layer].q = _own(rearrange(x[0, rows].detach(), "row head dh -> head row dh"))

        return fn

    def keep_kv(layer: int, attr: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            setattr(states[layer], attr, rearrange(x[0].detach().float(), "pos kv dh -> kv pos dh"))

        return fn

    hooks: list[tuple[str, Callable]] = []
    for layer in range(info.n_layers):
        pre = f"blocks.{layer}"
        hooks += [
            (f"{pre}.hook_in", keep_resid(layer, "a")),
            (f"{pre}.ln2.hook_in", keep_resid(layer, "b")),
            (f"{pre}.hook_out", keep_resid(layer, "c")),
            (f"{pre}.attn.{info.q_hook}", keep_q(layer)),
            (f"{pre}.attn.{info.k_hook}", keep_kv(layer, "k")),
            (f"{pre}.attn.v.hook_out", keep_kv(layer, "v")),
        ]
    with fast_attention(model, enabled=fast_attn), temporary_hooks(model, hooks), torch.no_grad():
        try:
            model(tokens[None].to(_device_of(model)), return_type=None)
        except _StopForward:
            pass
    for layer, st in enumerate(states):
        if any(getattr(st, f) is None for f in ("a", "b", "c", "q", "k", "v")):
            raise TraceError(f"layer {layer}: a hook did not fire; is this a supported decoder model?")
    return states


def _own(x: Tensor) -> Tensor:
    """A float32 contiguous copy that does not keep the hook's full ``[pos, ...]`` tensor alive."""
    if x.dtype != torch.float32:
        return x.float().contiguous()
    return x.contiguous() if not x.is_contiguous() else x.clone()


def _all_finite(x: Tensor) -> bool:
    """``isfinite(x).all()``; a NaN or inf anywhere makes the (float32) sum non-finite."""
    if bool(torch.isfinite(x.sum())):
        return True
    return bool(torch.isfinite(x).all())  # a finite sum can overflow only for huge finite values


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device
