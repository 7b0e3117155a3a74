"""Causal validation of a head ranking: ablate head sets and measure the target's log-prob.

A head ``(l, h)`` is ablated at every position by replacing its output ``z`` (the input of
``W_O``: bridge hook ``blocks.{l}.attn.o.hook_in`` = ``attn.hook_z``) with zeros
(zero-ablation) or with its mean ``z`` over the positions of the same sequence
(mean-ablation).  The effect is ``drop = log p(span | clean) - log p(span | ablated)``, summed
over the span's tokens (positive: the ablation hurts).  Hooks are always removed
(:func:`ftlens.bridge.temporary_hooks`).  ``analyses/head_study.py`` uses the same functions.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..bridge import act_name, device_of, hf_model, temporary_hooks
from ..logprobs import target_logprobs

__all__ = ["clean_pass", "ablated_logprobs", "ablate_example", "random_heads"]

Head = tuple[int, int]


def clean_pass(model: Any, ids: Int[Tensor, " pos"], output: tuple[int, int],
               evidence_pos: Sequence[int] = ()) -> tuple[Float[Tensor, "layer head dh"], Float[Tensor, "layer head"]]:
    """One clean forward: each head's mean ``z`` over positions, and the attention mass of the
    output rows on ``evidence_pos`` (mean over rows of the post-softmax attention summed over
    the evidence; zeros with no evidence)."""
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    zmean: list[Any] = [None] * L
    mass = torch.zeros(L, H)
    a, b = output
    ev = list(evidence_pos)

    def zhook(layer):
        def f(x, hook):
            zmean[layer] = x[0].detach().float().mean(0)  # [head, dh]

        return f

    def phook(layer):
        def f(x, hook):
            mass[layer] = x[0, :, a:b][..., ev].detach().float().sum(-1).mean(-1).cpu()

        return f

    hooks = [(act_name(l, "attn.o.hook_in"), zhook(l)) for l in range(L)]
    if ev:
        hooks += [(act_name(l, "attn.hook_pattern"), phook(l)) for l in range(L)]
    with temporary_hooks(model, hooks), torch.no_grad():
        hf_model(model)(input_ids=ids[None].to(device_of(model)))
    return torch.stack(zmean), mass


def ablated_logprobs(model: Any, ids: Int[Tensor, " pos"], start: int, output: tuple[int, int],
                     masks: Sequence[Bool[Tensor, "layer head"]], means: Sequence[Tensor | None],
                     chunk: int = 6) -> Float[Tensor, " row"]:
    """Summed ``log p`` of the ``output`` span's tokens for each row's ablation.

    ``masks[r][l, h]`` True = ablate head ``(l, h)``; ``means[r]`` is ``None`` (zero-ablation)
    or the ``[layer, head, dh]`` replacement ``z`` (mean-ablation).  An all-False mask is the
    clean run.  Rows run ``chunk`` at a time in one batch.
    """
    L = int(model.cfg.n_layers)
    ref = next((m for m in means if m is not None), None)
    cur: dict[str, Tensor] = {}

    def hook(layer):
        def f(x, hook):
            m = cur["mask"][:, layer][:, None, :, None].to(x.dtype)  # [b, 1, H, 1]
            repl = cur["repl"][:, layer][:, None].to(x.dtype)  # [b, 1, H, dh]
            return x * (1 - m) + repl * m

        return f

    res = []
    a, b = output
    with temporary_hooks(model, [(act_name(l, "attn.o.hook_in"), hook(l)) for l in range(L)]):
        for i in range(0, len(masks), chunk):
            mk = torch.stack(list(masks[i: i + chunk])).float()
            shape = ref.shape if ref is not None else (L, mk.shape[-1], 1)
            repl = torch.stack([m if m is not None else torch.zeros(shape) for m in means[i: i + chunk]])
            cur["mask"], cur["repl"] = mk.to(device_of(model)), repl.to(device_of(model))
            lp = target_logprobs(model, ids[None].repeat(mk.shape[0], 1), start, chunk=chunk)
            res.append(lp[:, a - start: b - start].sum(-1))
    return torch.cat(res)


def random_heads(n_layers: int, n_heads: int, k: int, seed: Any) -> list[Head]:
    """``k`` distinct heads drawn uniformly with ``random.Random(seed)``."""
    allh = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    return random.Random(str(seed)).sample(allh, min(k, len(allh)))


def ablate_example(model: Any, ids: Sequence[int], output: tuple[int, int], head_sets: dict[str, list[Head]],
                   *, ks: Sequence[int] = (5,), draws: int = 5, seed: Any = 0, key: str = "",
                   modes: Sequence[str] = ("zero", "mean"), chunk: int = 6) -> list[dict[str, Any]]:
    """Per-example ablation rows for every named head ranking and ``draws`` random sets.

    ``head_sets[name]`` is a ranking (best first); its first ``k`` heads are ablated for each
    ``k`` in ``ks``.  Random set ``d`` is :func:`random_heads` with seed ``f"{seed}:{key}:{d}"``
    (its first ``k``).  Rows: ``set, draw, mode, k, heads, clean_logprob, ablated_logprob, drop``
    (``draw`` is -1 for named sets).
    """
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    zmean, _ = clean_pass(model, ids_t, output)
    kmax = max(ks)
    sets: list[tuple[str, int, list[Head]]] = [(n, -1, list(v)) for n, v in head_sets.items()]
    sets += [("random", d, random_heads(L, H, kmax, f"{seed}:{key}:{d}")) for d in range(draws)]
    masks: list[Tensor] = [torch.zeros(L, H, dtype=torch.bool)]
    means: list[Tensor | None] = [None]
    labels = []
    for name, d, ranking in sets:
        for k in ks:
            m = torch.zeros(L, H, dtype=torch.bool)
            for l, h in ranking[:k]:
                m[l, h] = True
            for mode in modes:
                masks.append(m)
                means.append(zmean if mode == "mean" else None)
                labels.append((name, d, mode, k, ranking[:k]))
    lp = ablated_logprobs(model, ids_t, output[0], output, masks, means, chunk=chunk).tolist()
    clean = float(lp[0])
    return [{"set": name, "draw": d, "mode": mode, "k": k, "heads": ";".join(f"L{l}H{h}" for l, h in heads),
             "clean_logprob": clean, "ablated_logprob": float(v), "drop": clean - float(v)}
            for (name, d, mode, k, heads), v in zip(labels, lp[1:])]
