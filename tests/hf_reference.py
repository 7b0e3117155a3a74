"""A slow, obviously-correct IFR / FlashTrace reference for every supported block family,
written from the Hugging Face modules' own outputs (method §1-§4, §7, §8, §10).

Independent of ftlens' engine, capture and of the TransformerBridge: it builds its OWN plain
HF instance (``ftlens.models.tiny_hf_model(arch, seed=...)`` again, same weights as the
bridged one; the bridge replaces submodules of the instance it wraps, so that one is never
used here), casts it to float64, runs one forward pass with eager attention and reads, per
decoder layer, with forward hooks / pre-hooks on HF submodules:

    a[t]      the decoder layer's input
    o[t]      the attention module's output (o_proj / c_proj / dense applied; before any
              post-attention norm)
    A[h,t,s]  the attention module's returned (eager, post-softmax) weights
    v[s,j]    the value vectors: v_proj's output, or split out of the fused projection's output
              exactly as the HF module's forward splits it (GPT-2 ``c_attn``, GPT-NeoX
              ``query_key_value`` per-head interleaved, Phi-3 ``qkv_proj``)
    W_O, b_O  the output projection's weight / bias, W_O[h]: [d_head, d_model]
    b[t]      the residual after the attention add, read from the input of the module that
              follows it (sequential, post-norm), or a[t] + o[t] (parallel blocks)
    c[t]      the decoder layer's output
    M_t       post-norm families: the post-attention norm's frozen per-token linear map,
              diag(N(o_t) / o_t), from that norm module's own input and output

Per-unit-attention head write ``u[h,s] = v[kv(h), s] @ W_O[h]`` with ``kv(h) = h // (H / H_kv)``.
For the virtual target ``sum_t w_t row_t`` of layer l:

    sequential / parallel:  edge[h,s] = sum_t w_t A[h,t,s] u[h,s],        bias = (sum w) b_O
    post-attention norm:    edge[h,s] = sum_t w_t M_t (A[h,t,s] u[h,s]),  bias = sum_t w_t M_t b_O
    P[h,s] = prox(edge | ybar),  R = prox(abar | ybar),  Bt = prox(bias | ybar),
    Z = sum P + R + Bt,  e = P / Z,  r(s) = sum_l sum_h e[l,h,s]

Only for tiny models in tests (explicit loops over layers and target rows).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch

from . import bruteforce as bf

SEQUENTIAL, POST_NORM, PARALLEL = "sequential", "post_norm", "parallel"


def l1(x: torch.Tensor) -> torch.Tensor:
    return x.abs().sum(-1)


def prox(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max(0, |y|_1 - |y - z|_1) over the last dim (z may carry leading dims)."""
    return torch.clamp(l1(y) - l1(y - z), min=0.0)


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """Where each quantity lives in one HF architecture."""

    kind: str  # SEQUENTIAL | POST_NORM | PARALLEL
    layers: str  # dotted path of the decoder layers' ModuleList
    attn: str  # attention submodule of a decoder layer
    v_module: str  # submodule of attn whose output carries the values
    o_proj: str  # output projection submodule of attn
    b_module: str | None = None  # submodule of the layer whose INPUT is b (sequential / post-norm)
    post_norm: str | None = None  # post-attention norm of the layer (post-norm families)
    fused: str | None = None  # how v is split out of v_module's output: None | gpt2 | neox | phi3
    conv1d: bool = False  # GPT-2 Conv1D: weight is [in, out] (x @ W + b), not nn.Linear's [out, in]


_LLAMA = Family(SEQUENTIAL, "model.layers", "self_attn", "v_proj", "o_proj", b_module="post_attention_layernorm")
_GEMMA2 = Family(
    POST_NORM, "model.layers", "self_attn", "v_proj", "o_proj",
    b_module="pre_feedforward_layernorm", post_norm="post_attention_layernorm",
)  # fmt: skip

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": _LLAMA,
    "qwen3_moe": _LLAMA,
    "gemma": _LLAMA,
    "phi3": Family(
        SEQUENTIAL, "model.layers", "self_attn", "qkv_proj", "o_proj",
        b_module="post_attention_layernorm", fused="phi3",
    ),  # fmt: skip
    "gpt2": Family(
        SEQUENTIAL, "transformer.h", "attn", "c_attn", "c_proj", b_module="ln_2", fused="gpt2", conv1d=True
    ),
    "neox_seq": Family(
        SEQUENTIAL, "gpt_neox.layers", "attention", "query_key_value", "dense",
        b_module="post_attention_layernorm", fused="neox",
    ),  # fmt: skip
    "gemma2": _GEMMA2,
    "gemma3": _GEMMA2,
    "olmo2": Family(
        POST_NORM, "model.layers", "self_attn", "v_proj", "o_proj",
        b_module="mlp", post_norm="post_attention_layernorm",
    ),  # fmt: skip
    "neox": Family(PARALLEL, "gpt_neox.layers", "attention", "query_key_value", "dense", fused="neox"),
    "gptj": Family(PARALLEL, "transformer.h", "attn", "v_proj", "out_proj"),
    "phi": Family(PARALLEL, "model.layers", "self_attn", "v_proj", "dense"),
}
ARCHS = tuple(FAMILIES)


def _get(module: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _split_values(fam: Family, out: torch.Tensor, cfg) -> torch.Tensor:
    """v[s, kv_head, d_head] from the value module's output [1, pos, *], as HF's forward splits it."""
    out = out[0]
    n = out.shape[0]
    H = cfg.num_attention_heads
    H_kv = getattr(cfg, "num_key_value_heads", None) or H
    D = cfg.hidden_size
    dh = getattr(cfg, "head_dim", None) or D // H
    if fam.fused is None:  # plain v_proj
        return out.reshape(n, H_kv, dh)
    if fam.fused == "gpt2":  # c_attn(x).split(D, dim=2) -> q, k, v; v.view(..., -1, dh)
        return out[:, 2 * D : 3 * D].reshape(n, H, dh)
    if fam.fused == "neox":  # view(..., -1, 3 * dh).chunk(3, dim=-1): per-head [q | k | v]
        return out.reshape(n, H, 3 * dh)[..., 2 * dh : 3 * dh]
    if fam.fused == "phi3":  # qkv[..., H*dh + H_kv*dh :]
        return out[:, H * dh + H_kv * dh :].reshape(n, H_kv, dh)
    raise ValueError(fam.fused)


def _out_projection(fam: Family, proj: torch.nn.Module, H: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W_O[h] as [d_head, d_model] so that head h writes x_h @ W_O[h]; and b_O."""
    w = proj.weight.detach()
    w_in_out = w if fam.conv1d else w.T  # [H * dh, D]
    W_O = w_in_out.reshape(H, w_in_out.shape[0] // H, w_in_out.shape[1])
    b = getattr(proj, "bias", None)
    return W_O, None if b is None else b.detach()


# --------------------------------------------------------------------------- capture


@dataclass
class Layer:
    a: torch.Tensor  # [pos, D]
    b: torch.Tensor  # [pos, D]
    c: torch.Tensor  # [pos, D]
    o: torch.Tensor  # [pos, D]
    A: torch.Tensor  # [H, pos, pos]
    u: torch.Tensor  # [H, pos, D]   u[h, s] = v[kv(h), s] @ W_O[h]
    b_O: torch.Tensor | None  # [D]
    M: torch.Tensor | None  # [pos, D]  post-norm: N(o_t) / o_t


def capture_layers(hf_model: torch.nn.Module, arch: str, ids: torch.Tensor) -> list[Layer]:
    """One float64 forward pass of ``hf_model`` (plain HF, eager) with hooks on its submodules."""
    fam = FAMILIES[arch]
    cfg = hf_model.config
    H = cfg.num_attention_heads
    H_kv = getattr(cfg, "num_key_value_heads", None) or H
    group = H // H_kv
    layers = _get(hf_model, fam.layers)
    got: list[dict] = [{} for _ in layers]
    handles = []

    def keep(i: int, key: str, fn: Callable):
        def hook(*args):
            got[i][key] = fn(*args)

        return hook

    def layer_input(module, args, kwargs):
        return (args[0] if args else kwargs["hidden_states"]).detach().clone()

    for i, layer in enumerate(layers):
        attn = _get(layer, fam.attn)
        handles.append(layer.register_forward_pre_hook(keep(i, "a", layer_input), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep(i, "c", lambda m, i_, out: _first(out).detach().clone())))
        handles.append(attn.register_forward_hook(keep(i, "attn", lambda m, i_, out: (out[0].detach().clone(), out[1]))))
        handles.append(_get(attn, fam.v_module).register_forward_hook(keep(i, "v", lambda m, i_, out: out.detach().clone())))
        if fam.b_module is not None:
            handles.append(
                _get(layer, fam.b_module).register_forward_pre_hook(keep(i, "b", layer_input), with_kwargs=True)
            )
        if fam.post_norm is not None:
            handles.append(
                _get(layer, fam.post_norm).register_forward_hook(
                    keep(i, "norm", lambda m, i_, out: (i_[0].detach().clone(), out.detach().clone()))
                )
            )
    try:
        with torch.no_grad():
            out = hf_model(ids[None], output_attentions=True, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()

    result = []
    for i, layer in enumerate(layers):
        g = got[i]
        o, A = g["attn"]
        assert A is not None, "eager attention must return its weights"
        if getattr(out, "attentions", None) is not None:
            assert torch.equal(out.attentions[i], A)
        a, c, o, A = g["a"][0], g["c"][0], o[0], A[0].detach()
        v = _split_values(fam, g["v"], cfg)  # s kv dh
        W_O, b_O = _out_projection(fam, _get(_get(layer, fam.attn), fam.o_proj), H)
        u = torch.stack([v[:, h // group] @ W_O[h] for h in range(H)])  # h s D
        M = None
        if fam.kind == PARALLEL:
            b = a + o  # the virtual mid residual
        else:
            b = g["b"][0]
        if fam.kind == POST_NORM:
            norm_in, norm_out = g["norm"]
            assert torch.equal(norm_in[0], o), "the post-attention norm reads the attention output"
            M = norm_out[0] / norm_in[0]  # diag of the norm's frozen per-token linear map
        result.append(Layer(a=a, b=b, c=c, o=o, A=A, u=u, b_O=b_O, M=M))
    return result


# --------------------------------------------------------------------------- shares


@dataclass
class LayerParts:
    P: torch.Tensor  # [H, pos] raw proximities
    R: float
    Bt: float
    gap: float  # |ybar - abar - sum edges - bias|_1 / |ybar - abar|_1
    mlp: float  # prox(m|c) / (prox(m|c) + prox(b|c)) on the span sums


def layer_parts(layer: Layer, kind: str, weights: dict[int, float]) -> LayerParts:
    """Raw proximities of layer parts for the virtual target ``sum_t w_t row_t`` (explicit sum over t)."""
    H, n, D = layer.u.shape
    ybar = sum(w * layer.b[t] for t, w in weights.items())
    abar = sum(w * layer.a[t] for t, w in weights.items())
    cbar = sum(w * layer.c[t] for t, w in weights.items())
    edge = torch.zeros(H, n, D, dtype=torch.float64)
    bias = torch.zeros(D, dtype=torch.float64)
    for t, w in weights.items():
        plain = layer.A[:, t, :, None] * layer.u  # [H, s, D]: z[h, t <- s] before any post-norm
        if kind == POST_NORM:
            edge += w * (layer.M[t] * plain)
            if layer.b_O is not None:
                bias += w * (layer.M[t] * layer.b_O)
        else:
            edge += w * plain
            if layer.b_O is not None:
                bias += w * layer.b_O
    P = prox(edge, ybar)
    R = float(prox(abar, ybar))
    Bt = float(prox(bias, ybar)) if layer.b_O is not None else 0.0
    delta = ybar - abar
    gap = float(l1(delta - edge.sum(dim=(0, 1)) - bias) / l1(delta))
    mbar = cbar - ybar
    pm, pb = float(prox(mbar, cbar)), float(prox(ybar, cbar))
    mlp = pm / (pm + pb) if pm + pb > 0 else 0.0
    return LayerParts(P=P, R=R, Bt=Bt, gap=gap, mlp=mlp)


@dataclass
class Shares:
    heads: torch.Tensor  # e [L, H, pos]
    residual: torch.Tensor  # [L]
    bias: torch.Tensor  # [L]
    mlp: torch.Tensor  # [L]
    gap: torch.Tensor  # [L] completeness gap of this reference's own decomposition

    @property
    def scores(self) -> torch.Tensor:
        """r(s) = sum_l sum_h e[l, h, s]"""
        return self.heads.sum(dim=(0, 1))


class HFReference:
    """The reference for one tiny model and one token sequence.

    ``HFReference(arch, ids, seed=0, n_layers=2, ...)`` builds a fresh plain HF model with
    ``ftlens.models.tiny_hf_model`` (same kwargs as the ``tiny_model`` under test).
    """

    def __init__(self, arch: str, ids, *, hf_model: torch.nn.Module | None = None, **tiny_kwargs):
        from ftlens.models import tiny_hf_model

        if arch not in FAMILIES:
            raise KeyError(f"no reference family for {arch!r}")
        self.arch = arch
        self.kind = FAMILIES[arch].kind
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        model = hf_model if hf_model is not None else tiny_hf_model(arch, **tiny_kwargs)
        assert model.config._attn_implementation == "eager"
        if getattr(model.config, "_experts_implementation", None) not in (None, "eager"):
            model.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
        model = model.double().eval()
        self.layers = capture_layers(model, arch, self.ids)
        self.n = int(self.ids.shape[0])

    def __getitem__(self, key: str):  # lets bruteforce.flashtrace read T["a"][0].shape[0]
        if key == "a":
            return [layer.a for layer in self.layers]
        raise KeyError(key)

    def shares(self, weights: dict[int, float]) -> Shares:
        E, R, B, M, G = [], [], [], [], []
        for layer in self.layers:
            parts = layer_parts(layer, self.kind, weights)
            Z = float(parts.P.sum()) + parts.R + parts.Bt
            E.append(parts.P / Z)
            R.append(parts.R / Z)
            B.append(parts.Bt / Z)
            M.append(parts.mlp)
            G.append(parts.gap)
        f64 = dict(dtype=torch.float64)
        return Shares(torch.stack(E), torch.tensor(R, **f64), torch.tensor(B, **f64),
                      torch.tensor(M, **f64), torch.tensor(G, **f64))  # fmt: skip

    def token_scores(self, weights: dict[int, float]) -> torch.Tensor:
        return self.shares(weights).scores

    def span(self, a: int, b: int) -> Shares:
        """ifr-span over rows [a, b), uniform weights."""
        return self.shares({t: 1.0 for t in range(a, b)})

    def tokenwise(self, a: int, b: int) -> torch.Tensor:
        """Row scores [row, pos] of ifr-tokenwise over rows [a, b); the method's scores are their mean."""
        return torch.stack([self.token_scores({t: 1.0}) for t in range(a, b)])

    def flashtrace(self, output: tuple[int, int], reasoning: tuple[int, int] | None, hops: int):
        """Spec section 4 through ``tests.bruteforce.flashtrace``'s recursion (its code, rebound to
        this reference's token scores). Returns F, per-hop contributions, thinking ratios, output
        mass, and per-hop share tensors e_k [L, H, pos] (hop k's span weights are recorded)."""
        calls: list[dict[int, float]] = []

        def token_scores(T, weights):
            calls.append(dict(weights))
            return T.token_scores(weights)

        recursion = types.FunctionType(
            bf.flashtrace.__code__, {**bf.flashtrace.__globals__, "token_scores": token_scores},
            bf.flashtrace.__name__, bf.flashtrace.__defaults__, bf.flashtrace.__closure__,
        )  # fmt: skip
        F, contributions, ratios, out_mass = recursion(self, output, reasoning, hops)
        hop_heads = [self.shares(w).heads for w in calls]
        return F, contributions, ratios, out_mass, hop_heads
