"""Baseline attribution methods, in the same form as a trace's scores: a ``[pos]`` tensor over
every position of the formatted prompt + target (``Sequence.ids``).  Evaluate them on the
user-prompt positions, exactly like ``Trace.prompt_scores``.

Every method explains the *answer* (output span ``O``) given the whole teacher-forced sequence:

- ``random``: i.i.d. uniform scores (seeded), the sanity floor.
- ``attention``: last layer's attention, mean over heads, mean over the rows of ``O``.
- ``rollout``: attention rollout (Abnar & Zuidema 2020): per layer ``Â = (mean_h A + I) / 2``,
  ``R = Â_L ... Â_1``; scores = mean over the rows of ``O`` of ``R``.
- ``grad_input``: ``sum_d x[s, d] * d f / d x[s, d]`` with ``x`` the input embeddings and
  ``f = sum_{t in O} log p(x_t | x_<t)`` (signed).
- ``integrated_gradients``: ``sum_d (x - x') * mean_{j} grad f(x' + (j - 1/2)/m (x - x'))``
  (midpoint Riemann sum, ``m = steps``), interpolating the *user-prompt* embeddings only
  (template and target stay fixed); baseline ``x'`` = zeros (``baseline="zero"``) or the EOS
  token's embedding at every interpolated position (``baseline="eos"``).
- ``occlusion``: ``f(x) - f(x with token s replaced by fill)`` for every user-prompt token,
  batched; refuses prompts longer than ``max_prompt`` tokens.
- ``ifr-tokenwise``, ``ifr-span``, ``flashtrace`` (``hops``): ftlens' own traces.
- ``reference``: the PyPI ``flashtrace`` package, in :mod:`ftlens.eval.reference`.

Hooks are registered with :func:`ftlens.bridge.temporary_hooks` (removed on exit, also on error).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import act_name, device_of, hf_model, temporary_hooks
from ..errors import TraceError
from ..options import TraceOptions
from ..pipeline import options_from, trace
from ..spans import Sequence
from .scoring import target_logprobs

BASELINES = ("random", "attention", "rollout", "grad_input", "integrated_gradients", "occlusion")


def random_scores(seq: Sequence, seed: int = 0) -> Float[Tensor, " pos"]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(seq.n, generator=g)


def _patterns(model: Any, seq: Sequence, layers: list[int], fn: Callable[[int, Tensor], None]) -> None:
    """Run one forward pass and call ``fn(layer, pattern[head, q, k])`` for each layer."""

    def hook(layer: int) -> Callable:
        def f(x: Tensor, hook: Any) -> None:
            fn(layer, x[0].detach().float())

        return f

    hooks = [(act_name(layer, "attn.hook_pattern"), hook(layer)) for layer in layers]
    with temporary_hooks(model, hooks), torch.no_grad():
        hf_model(model)(input_ids=seq.ids[None].to(device_of(model)))


def last_layer_attention(model: Any, seq: Sequence) -> Float[Tensor, " pos"]:
    """Mean over heads and over the answer rows of the last layer's attention pattern."""
    out: dict[str, Tensor] = {}
    a, b = seq.output
    last = int(model.cfg.n_layers) - 1

    def keep(layer: int, pat: Tensor) -> None:
        out["s"] = pat[:, a:b].mean(dim=(0, 1)).cpu()

    _patterns(model, seq, [last], keep)
    return out["s"]


def rollout(model: Any, seq: Sequence) -> Float[Tensor, " pos"]:
    """Attention rollout: ``R = prod_l (mean_h A_l + I) / 2``, mean over the answer rows."""
    n = seq.n
    state = {"R": torch.eye(n)}

    def step(layer: int, pat: Tensor) -> None:
        a_hat = 0.5 * pat.mean(0).cpu() + 0.5 * torch.eye(n)
        a_hat = a_hat / a_hat.sum(-1, keepdim=True)
        state["R"] = a_hat @ state["R"]

    _patterns(model, seq, list(range(int(model.cfg.n_layers))), step)
    a, b = seq.output
    return state["R"][a:b].mean(0)


def _answer_logprob(hf: Any, embeds: Tensor, ids: Tensor, output: tuple[int, int]) -> Tensor:
    """``sum_{t in O} log p(ids_t | <t)`` per batch row, from input embeddings."""
    a, b = output
    logits = hf(inputs_embeds=embeds).logits[:, a - 1 : b - 1].float()
    lp = torch.log_softmax(logits, -1)
    return lp.gather(-1, ids[None, a:b, None].expand(embeds.shape[0], -1, -1)).squeeze(-1).sum(-1)


def grad_input(model: Any, seq: Sequence) -> Float[Tensor, " pos"]:
    """Gradient x input on the input embeddings, summed over ``d_model`` (signed)."""
    hf = hf_model(model)
    ids = seq.ids.to(device_of(model))
    emb = hf.get_input_embeddings()(ids[None]).detach().float().requires_grad_(True)
    with torch.enable_grad():
        f = _answer_logprob(hf, emb, ids, seq.output).sum()
        (g,) = torch.autograd.grad(f, emb)
    return (g * emb).sum(-1)[0].detach().cpu()


def integrated_gradients(
    model: Any, seq: Sequence, *, steps: int = 16, baseline: str = "zero", batch: int = 4
) -> Float[Tensor, " pos"]:
    """Integrated gradients over the user-prompt embeddings (see module doc)."""
    if baseline not in ("zero", "eos"):
        raise ValueError("baseline must be 'zero' or 'eos'")
    hf = hf_model(model)
    ids = seq.ids.to(device_of(model))
    emb_layer = hf.get_input_embeddings()
    x = emb_layer(ids[None]).detach().float()
    mask = torch.zeros(seq.n, 1, device=x.device)
    mask[seq.user_prompt[0] : seq.user_prompt[1]] = 1.0
    if baseline == "zero":
        x0 = torch.zeros_like(x)
    else:
        eos = model.tokenizer.eos_token_id
        x0 = emb_layer(torch.full_like(ids, int(eos))[None]).detach().float()
    x0 = x * (1 - mask) + x0 * mask
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    total = torch.zeros_like(x)
    for i in range(0, steps, batch):
        al = alphas[i : i + batch].to(x.device)[:, None, None]
        e = (x0 + al * (x - x0)).requires_grad_(True)
        with torch.enable_grad():
            f = _answer_logprob(hf, e, ids, seq.output).sum()
            (g,) = torch.autograd.grad(f, e)
        total += g.sum(0, keepdim=True).detach()
    return ((x - x0) * total / steps).sum(-1)[0].cpu()


def occlusion(
    model: Any, seq: Sequence, *, fill: int, max_prompt: int = 1024, batch: int = 8
) -> Float[Tensor, " pos"]:
    """Leave-one-token-out: drop of the answer log-prob when one prompt token becomes ``fill``."""
    a0, a1 = seq.user_prompt
    if a1 - a0 > max_prompt:
        raise TraceError(f"occlusion: the prompt has {a1 - a0} tokens > max_prompt={max_prompt}")
    o0, o1 = seq.output
    start = seq.prompt_len

    def f(batch_ids: Tensor) -> Tensor:
        lp = target_logprobs(model, batch_ids, start, chunk=batch)
        return lp[:, o0 - start : o1 - start].sum(-1)

    base = f(seq.ids[None])[0]
    out = torch.zeros(seq.n)
    pos = list(range(a0, a1))
    for i in range(0, len(pos), batch):
        chunk = pos[i : i + batch]
        x = seq.ids[None].repeat(len(chunk), 1)
        for j, p in enumerate(chunk):
            x[j, p] = fill
        out[chunk] = base - f(x)
    return out


def ftlens_scores(
    model: Any, prompt: str, target: str, seq: Sequence, *, hops_max: int = 3, tokenwise: bool = True,
    options: TraceOptions | None = None, **option_values: Any,
) -> dict[str, tuple[Tensor, float, Any]]:
    """ftlens methods from two traces: ``ifr-tokenwise`` and one ``flashtrace`` trace with
    ``hops_max`` hops, from which ``flashtrace-h{k}`` (``F`` after ``k`` hops,
    :meth:`~ftlens.result.Trace.scores_after`) and ``ifr-span`` (hop 0's raw scores ``r(s)``) are read.

    ``options`` (or option keywords: ``chat_template``, ``explain``, ``stop_rows``, ...) are
    passed to both traces (the method and hops are set here).  Returns ``name -> (scores[pos],
    seconds, trace)``; seconds for hop ``k`` are the capture time plus ``(k + 1) / (hops_max + 1)``
    of the attribution time (one span pass per hop).  With ``explain="target"`` (hop 0 over
    reasoning + answer) the names carry a ``-target`` suffix after the family:
    ``ifr-tokenwise-target``, ``ifr-span-target``, ``flashtrace-target-h{k}`` (``stop_rows`` does
    not change the names).
    """
    opts = options_from(options, option_values)
    out: dict[str, tuple[Tensor, float, Any]] = {}
    sfx = "" if opts.explain == "output" else f"-{opts.explain}"
    if tokenwise:
        t0 = time.perf_counter()
        tw = trace(model, prompt, target, **opts.replace(method="ifr-tokenwise", hops=None).kwargs())
        _check_ids(tw, seq)
        out[f"ifr-tokenwise{sfx}"] = (tw.scores, time.perf_counter() - t0, tw)
    tr = trace(model, prompt, target, **opts.replace(method="flashtrace", hops=hops_max).kwargs())
    _check_ids(tr, seq)
    cap, att = tr.timings.get("capture", 0.0), tr.timings.get("attribution", 0.0)
    h0 = tr.hops[0]
    raw0 = h0.scores * h0.norm  # hop 0 contribution = r(s) / sum r on inputs
    out[f"ifr-span{sfx}"] = (raw0, cap + att / (hops_max + 1), tr)
    for k in range(len(tr.hops)):
        out[f"flashtrace{sfx}-h{k}"] = (tr.scores_after(k), cap + att * (k + 1) / (hops_max + 1), tr)
    return out


def _check_ids(tr: Any, seq: Sequence) -> None:
    if list(tr.ids) != seq.ids.tolist():
        raise TraceError("the trace's token ids differ from the evaluation sequence")


def run_baseline(name: str, model: Any, seq: Sequence, *, fill: int, seed: int = 0, ig_steps: int = 16,
                 ig_baseline: str = "zero", occlusion_max: int = 1024) -> Float[Tensor, " pos"]:
    """Dispatch one of :data:`BASELINES` by name."""
    if name == "random":
        return random_scores(seq, seed)
    if name == "attention":
        return last_layer_attention(model, seq)
    if name == "rollout":
        return rollout(model, seq)
    if name == "grad_input":
        return grad_input(model, seq)
    if name == "integrated_gradients":
        return integrated_gradients(model, seq, steps=ig_steps, baseline=ig_baseline)
    if name == "occlusion":
        return occlusion(model, seq, fill=fill, max_prompt=occlusion_max)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
