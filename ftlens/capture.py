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

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from .attention import AttentionSpec
from .errors import TraceError
from .bridge import act_name, device_of, hf_config, temporary_hooks
from .families import BlockFamily, attention_scale, describe, post_norm_gain, qk_hooks, rotate_qk, sliding_window
from .lean_forward import fast_attention


@dataclass
class LayerState:
    """Per-layer state kept for attribution (all float32, on the layer's device).

    ``row_scale`` is the frozen per-token scale ``s_t`` of a post-attention norm
    (``None`` for other families): each edge of row ``t`` is multiplied by it.
    """

    a: Float[Tensor, "row d"] | None = None
    b: Float[Tensor, "row d"] | None = None
    c: Float[Tensor, "row d"] | None = None
    q: Float[Tensor, "head row dh"] | None = None
    k: Float[Tensor, "kv pos dh"] | None = None
    v: Float[Tensor, "kv pos dh"] | None = None
    o: Float[Tensor, "row d"] | None = None
    row_scale: Float[Tensor, " row"] | None = None
    cos: Tensor | None = None
    sin: Tensor | None = None


@dataclass
class ModelInfo:
    """Shapes, block family and per-layer parameters of a bridge, read once per trace.

    ``w_o``/``b_o`` are the *effective* output weights: for a post-norm family the
    norm's gain ``g`` is folded in (``W_O[h] * g``, ``b_O * g``), see
    :mod:`ftlens.families`.  ``norm_eps[l]`` is the post-norm's ``eps`` (or ``None``).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int | None
    specs: list[AttentionSpec]
    w_o: list[Float[Tensor, "head dh d"]] = field(repr=False)
    b_o: list[Float[Tensor, " d"] | None] = field(repr=False)
    family: BlockFamily | None = None
    norm_eps: list[float | None] = field(default_factory=list, repr=False)
    q_hook: str = "hook_rot_q"
    k_hook: str = "hook_rot_k"


def model_info(model: Any) -> ModelInfo:
    """Read the block family, shapes, ``W_O``/``b_O`` and the softmax details of every layer.

    Raises :class:`TraceError` for an unsupported structure, before any forward pass.
    """
    family = describe(model)
    cfg = model.cfg
    hf_cfg = hf_config(model)
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    d_head, d_model = int(cfg.d_head), int(cfg.d_model)
    specs, w_o, b_o, eps = [], [], [], []
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        hf_attn = getattr(attn, "original_component", None)
        specs.append(
            AttentionSpec(
                scale=attention_scale(family, attn, layer, d_head),
                group=n_heads // n_kv,
                softcap=getattr(hf_attn, "attn_logit_softcapping", None),
                window=sliding_window(hf_attn, hf_cfg, layer),
            )
        )
        weight = attn.W_O.detach().float()
        bias = getattr(attn, "b_O", None)
        bias = None if bias is None or not torch.any(bias != 0) else bias.detach().float()
        if family.post_norm is not None:
            gain, e = post_norm_gain(getattr(block, family.post_norm), d_model)
            gain = gain.to(weight.device)
            weight = weight * gain
            bias = None if bias is None else bias * gain
            eps.append(e)
        else:
            eps.append(None)
        w_o.append(weight)
        b_o.append(bias)
    q_hook, k_hook = qk_hooks(family)
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_model=d_model,
        n_ctx=getattr(cfg, "n_ctx", None),
        specs=specs,
        w_o=w_o,
        b_o=b_o,
        family=family,
        norm_eps=eps,
        q_hook=q_hook,
        k_hook=k_hook,
    )


class _StopForward(Exception):
    """Raised by the last hook: the rest of the forward (final norm, unembedding) is not needed."""


def capture(
    model: Any,
    tokens: Int[Tensor, " pos"],
    row_start: int,
    info: ModelInfo,
    *,
    progress: Callable[[int], None] | None = None,
    fast_attn: bool = True,
    extra_hooks: Sequence[tuple[str, Callable]] = (),
) -> list[LayerState]:
    """Run one forward pass and keep each layer's :class:`LayerState`.

    Rows tracked are positions ``row_start .. T-1``.  What is read depends on the block
    family (:mod:`ftlens.families`): ``a`` at ``blocks.{l}.hook_in``, ``c`` at
    ``blocks.{l}.hook_out``, ``b`` at the family's mid hook or as ``a + attn.hook_out``
    (parallel blocks), queries/keys at the family's hooks (rotated afterwards where
    the bridge fires them before the rotary), values at ``attn.v.hook_out``; for a
    post-norm family the attention output ``o`` and its frozen norm scale
    ``s_t = rsqrt(mean(o_t^2) + eps)``.  Raises :class:`TraceError` naming the layer if
    a residual stream becomes non-finite.  ``fast_attn``: run supported attention
    layers through :func:`ftlens.lean_forward.fast_attention` (fused SDPA, no ``[H, T, T]``
    pattern; same hooks, same values up to rounding).  ``extra_hooks``: read-only ``(name, fn)``
    hooks that run in the same pass, before ftlens' own on a shared hook point (the pass stops
    after the last block's output; nothing later fires).
    """
    fam = info.family if info.family is not None else describe(model)
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
            states[layer].q = _own(_heads_first(x[0].detach(), info.n_heads)[:, rows])

        return fn

    def keep_kv(layer: int, attr: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            setattr(states[layer], attr, _heads_first(x[0].detach(), info.n_kv_heads).float())

        return fn

    def keep_all(layer: int, attr: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            setattr(states[layer], attr, x.detach().float())

        return fn

    hooks: list[tuple[str, Callable]] = list(extra_hooks)
    for layer in range(info.n_layers):
        hooks += [
            (act_name(layer, "hook_in"), keep_resid(layer, "a")),
            (act_name(layer, "hook_out"), keep_resid(layer, "c")),
            (act_name(layer, f"attn.{info.q_hook}"), keep_q(layer)),
            (act_name(layer, f"attn.{info.k_hook}"), keep_kv(layer, "k")),
            (act_name(layer, "attn.v.hook_out"), keep_kv(layer, "v")),
        ]
        if fam.mid_hook is not None:
            hooks.append((act_name(layer, fam.mid_hook), keep_resid(layer, "b")))
        if fam.needs_attn_out:
            hooks.append((act_name(layer, "attn.hook_out"), keep_resid(layer, "o")))
        if fam.qk == "bridge-rotary":
            hooks += [(act_name(layer, "attn.hook_cos"), keep_all(layer, "cos")), (act_name(layer, "attn.hook_sin"), keep_all(layer, "sin"))]
    with fast_attention(model, enabled=fast_attn), temporary_hooks(model, hooks), torch.no_grad():
        try:
            model(tokens[None].to(device_of(model)), return_type=None)
        except _StopForward:
            pass
    needed = ("a", "c", "q", "k", "v") + (("o",) if fam.needs_attn_out else ()) + (("b",) if fam.mid_hook else ())
    for layer, st in enumerate(states):
        missing = [f for f in needed if getattr(st, f) is None]
        if missing:
            raise TraceError(
                f"layer {layer}: the hooks for {', '.join(missing)} did not fire on this "
                f"{fam.model_type} model; ftlens cannot attribute it as booted"
            )
        _finish_layer(st, fam, info, model.blocks[layer].attn, layer, row_start)
    return states


def _finish_layer(st: LayerState, fam: BlockFamily, info: ModelInfo, attn: Any, layer: int, row_start: int) -> None:
    """Family-specific completion of a layer's state once the forward has run.

    Parallel blocks: ``b = a + o`` (the virtual mid residual).  Post-norm blocks:
    ``s_t = rsqrt(mean(o_t^2) + eps)``.  Rotary applied where the bridge fires q/k before it.
    """
    if fam.mid_hook is None:
        st.b = st.a + st.o
    if fam.post_norm is not None:
        st.row_scale = torch.rsqrt(st.o.pow(2).mean(-1) + info.norm_eps[layer])
    if fam.qk in ("bridge-rotary", "gptj"):
        row_pos = torch.arange(row_start, row_start + st.q.shape[1], device=st.q.device)
        st.q, st.k = rotate_qk(fam, attn, st.q, st.k, row_pos, st.cos, st.sin)
        st.q, st.k = st.q.float().contiguous(), st.k.float().contiguous()
    if fam.post_norm is None:
        st.o = None  # not needed after b is formed
    st.cos = st.sin = None


def _heads_first(x: Tensor, n_heads: int) -> Tensor:
    """``[pos, head, dh]`` (or flat ``[pos, head * dh]``) -> ``[head, pos, dh]``.

    Every hook ftlens reads q/k/v from is position-first (checked against
    ``hook_pattern`` by the family tests)."""
    if x.ndim == 2:
        return rearrange(x, "pos (head dh) -> head pos dh", head=n_heads)
    return rearrange(x, "pos head dh -> head pos dh")


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
