"""A slow, obviously-correct IFR/FlashTrace reference written from the method (docs/method.md).

It uses the model's own attention patterns and values from ``run_with_cache``
(no recomputation, no chunking) and explicit Python loops over layers, heads,
target tokens and sources.  Only for tiny models in tests.
"""

from __future__ import annotations

import torch


def l1(x: torch.Tensor) -> float:
    return float(x.abs().sum())


def prox(z: torch.Tensor, y: torch.Tensor) -> float:
    """max(0, |y|_1 - |y - z|_1)"""
    return max(0.0, l1(y) - l1(y - z))


def cache_tensors(model, ids: torch.Tensor) -> dict:
    """Everything per layer, straight from the model's hooks, float64 for the reference."""
    _, cache = model.run_with_cache(ids[None])
    n_layers = model.cfg.n_layers
    out = {"a": [], "b": [], "c": [], "A": [], "v": [], "W_O": [], "b_O": []}
    for l in range(n_layers):
        out["a"].append(cache[f"blocks.{l}.hook_resid_pre"][0].double())
        out["b"].append(cache[f"blocks.{l}.hook_resid_mid"][0].double())
        out["c"].append(cache[f"blocks.{l}.hook_resid_post"][0].double())
        out["A"].append(cache[f"blocks.{l}.attn.hook_pattern"][0].double())  # head t s
        out["v"].append(cache[f"blocks.{l}.attn.hook_v"][0].double())  # s kv dh
        attn = model.blocks[l].attn
        out["W_O"].append(attn.W_O.detach().double())  # head dh d
        b_o = getattr(attn, "b_O", None)
        out["b_O"].append(None if b_o is None else b_o.detach().double())
    return out


def layer_parts(T: dict, l: int, weights: dict[int, float]):
    """Raw proximities P[h][s], R, Bt for the virtual target sum_t w_t row_t at layer l."""
    W_O, A, v = T["W_O"][l], T["A"][l], T["v"][l]
    H = W_O.shape[0]
    group = H // v.shape[1]
    y = sum(w * T["b"][l][t] for t, w in weights.items())
    x = sum(w * T["a"][l][t] for t, w in weights.items())
    n = A.shape[-1]
    P = torch.zeros(H, n, dtype=torch.float64)
    for h in range(H):
        for s in range(n):
            abar = sum(w * float(A[h, t, s]) for t, w in weights.items() if s <= t)
            u = v[s, h // group] @ W_O[h]
            P[h, s] = prox(abar * u, y)
    R = prox(x, y)
    wsum = sum(weights.values())
    Bt = 0.0 if T["b_O"][l] is None else prox(wsum * T["b_O"][l], y)
    return P, R, Bt


def shares(T: dict, weights: dict[int, float]):
    """e[l, h, s] and per-layer residual/bias shares (no threshold)."""
    L = len(T["a"])
    E, Rs, Bs = [], [], []
    for l in range(L):
        P, R, Bt = layer_parts(T, l, weights)
        Z = float(P.sum()) + R + Bt
        E.append(P / Z)
        Rs.append(R / Z)
        Bs.append(Bt / Z)
    return torch.stack(E), torch.tensor(Rs, dtype=torch.float64), torch.tensor(Bs, dtype=torch.float64)


def token_scores(T: dict, weights: dict[int, float]) -> torch.Tensor:
    """r(s) = sum_l sum_h e[l, h, s]"""
    return shares(T, weights)[0].sum(dim=(0, 1))


def flashtrace(T: dict, output: tuple[int, int], reasoning: tuple[int, int] | None, hops: int,
               explain: str = "output", skip: frozenset[int] = frozenset(), handoff: str = "reasoning"):
    """Spec section 4, written out with explicit mass bookkeeping.

    ``explain="target"``: hop 0 explains every token from the reasoning start to the output end.
    ``skip``: target positions that are never rows (``stop_rows="skip"``): hop 0 spreads its
    weight over the other explained tokens (all of them if none is left), and each pass's token
    scores on skipped target positions are set to 0 before normalising.
    ``handoff="target"``: every target token's mass is handed to the next hop, the answer's own
    included (none is reported as output mass)."""
    n = T["a"][0].shape[0]
    r0 = reasoning[0] if reasoning else output[0]
    end = output[0] if handoff == "reasoning" else output[1]
    inputs = [s < r0 for s in range(n)]
    pending = [r0 <= s < end for s in range(n)]
    dropped = [s >= r0 and s in skip for s in range(n)]

    def scores(weights):
        v = token_scores(T, weights).clone()
        for s in range(n):
            if dropped[s]:
                v[s] = 0.0
        return v

    o = range(output[0] if explain == "output" else r0, output[1])
    rows = [t for t in o if t not in skip] or list(o)
    v = scores({t: 1.0 / len(rows) for t in rows})
    p = v / v.sum()
    out_mass = float(p[output[0] : output[1]].sum()) if handoff == "reasoning" else 0.0
    F = torch.tensor([float(p[s]) if inputs[s] else 0.0 for s in range(n)], dtype=torch.float64)
    mu = {s: float(p[s]) for s in range(n) if pending[s]}
    ratios = [sum(mu.values())]
    contributions = [F.clone()]
    for _ in range(hops):
        mass = sum(mu.values())
        v = scores({t: m / mass for t, m in mu.items() if m > 0})
        p = v / v.sum()
        c = torch.tensor([mass * float(p[s]) if inputs[s] else 0.0 for s in range(n)], dtype=torch.float64)
        F = F + c
        contributions.append(c)
        mu = {s: mass * float(p[s]) for s in range(n) if pending[s]}
        ratios.append(sum(mu.values()))
    return F, contributions, ratios, out_mass
