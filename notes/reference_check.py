"""Independent re-derivation (from the maths in notes/reference_flashtrace.md, written
from scratch on plain HF hooks) checked against the reference package numbers.
It exists only to prove the notes describe the reference exactly.
Run: .venv/bin/python notes/reference_check.py"""

import os
import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch  # noqa: E402

from reference_adapter import reference_scores, smollm2_tokenizer, tiny_llama  # noqa: E402

REF_EPS = 1e-6  # the reference's RMSNorm linearisation always uses 1e-6 (see notes)


def capture(model, ids):
    a, b = {}, {}
    hs = []
    for l, layer in enumerate(model.model.layers):
        hs.append(layer.input_layernorm.register_forward_hook(
            lambda m, i, o, l=l: a.__setitem__(l, i[0][0].float())))
        hs.append(layer.post_attention_layernorm.register_forward_pre_hook(
            lambda m, i, l=l: b.__setitem__(l, i[0][0].float())))
    try:
        with torch.no_grad():
            out = model(input_ids=ids.view(1, -1), output_attentions=True, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    L = len(model.model.layers)
    A = [out.attentions[l][0].float() for l in range(L)]
    return [a[l] for l in range(L)], [b[l] for l in range(L)], A


def head_writes(model, l, a_l, eps=REF_EPS):
    """u[h, s, :] = W_O[h] (W_V[kv(h)] norm(a[s]))  ->  [H, T, D]"""
    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // H
    att = model.model.layers[l].self_attn
    w_ln = model.model.layers[l].input_layernorm.weight.float()
    n = a_l * torch.rsqrt(a_l.pow(2).mean(-1, keepdim=True) + eps) * w_ln
    V = n @ att.v_proj.weight.float().T
    Wo = att.o_proj.weight.float()
    us = []
    for h in range(H):
        kv = h // (H // Hkv)
        us.append(V[:, kv * hd:(kv + 1) * hd] @ Wo[:, h * hd:(h + 1) * hd].T)
    return torch.stack(us)


def prox(z, y):
    return torch.clamp(y.abs().sum(-1) - (y - z).abs().sum(-1), min=0.0)


def span_vec(model, cap, S0, S1, w=None, theta=0.0):
    """Per-layer-normalised span aggregate; tokenwise row when S0 == S1."""
    a, b, A = cap
    T = a[0].shape[0]
    idx = torch.arange(S0, S1 + 1)
    w = torch.ones(len(idx)) if w is None else w / (w.sum() + 1e-12)
    total = torch.zeros(T)
    for l in range(len(a)):
        u = head_writes(model, l, a[l])                         # [H, T, D]
        ybar = (w[:, None] * b[l][idx]).sum(0)
        abar = (w[:, None] * a[l][idx]).sum(0)
        causal = (torch.arange(T)[None, :] <= idx[:, None]).float()       # [|S|, T]
        Abar = (A[l][:, idx, :] * causal[None] * w[None, :, None]).sum(1)  # [H, T]
        Abar[:, S1 + 1:] = 0
        P = prox(Abar[..., None] * u, ybar)                   # [H, T]
        if theta > 0:
            P = P * (P >= theta)
        R = prox(abar, ybar)
        total += P.sum(0) / (P.sum() + R + 1e-12)
    return total


def is_stop(tok):
    t = str(tok).strip()
    return t == "" or t in (",", ".")


def flashtrace_vec(model, cap, ref, O, Rspan, hops, eos_id):
    p, g = ref["prompt_len"], ref["gen_len"]
    T = p + g
    gen_tokens = ref["generation_tokens"]
    end = g - 1
    if int(ref["input_ids"][-1]) == eos_id or is_stop(gen_tokens[end]):
        end -= 1
    if Rspan is not None:
        G0, G1 = min(O[0], Rspan[0]), max(O[1], Rspan[1])
    else:
        G0, G1 = 0, end
    G0, G1 = p + G0, p + G1
    keep = torch.ones(T)
    for j, pos in enumerate(ref["user_prompt_indices"]):
        keep[pos] = 0.0 if is_stop(ref["prompt_tokens"][j]) else 1.0
    for j, tok in enumerate(gen_tokens):
        keep[p + j] = 0.0 if is_stop(tok) else 1.0
    obs = torch.zeros(T)
    obs[:G0] = 1.0
    obs = obs * keep
    wk = keep[G0:G1 + 1]
    v = span_vec(model, cap, G0, G1, None if wk.min() > 0 else wk) * keep
    F = v * obs
    ratio = v[G0:G1 + 1].sum() / v.sum()
    w = v[G0:G1 + 1] / v[G0:G1 + 1].sum()
    ratios = [float(ratio)]
    for _ in range(hops):
        v = span_vec(model, cap, G0, G1, w) * keep
        F = F + ratio * v * obs
        w = v[G0:G1 + 1] / v[G0:G1 + 1].sum()
        ratio = ratio * v[G0:G1 + 1].sum() / v.sum()
        ratios.append(float(ratio))
    return F, ratios


def main():
    tok = smollm2_tokenizer()
    prompt = "Alice has 3 apples, Bob has 5."
    target = "Together 8 apples. Answer: 8"
    worst = {}

    def upd(k, x):
        worst[k] = max(worst.get(k, 0.0), float(x))

    for eps_cfg in (1e-6, 1e-5):
        model = tiny_llama(len(tok), seed=1, n_layers=3, rms_norm_eps=eps_cfg)
        for chat in (False, True):
            r0 = reference_scores(model, tok, prompt, target, (0, 0), "ifr-span", use_chat_template=chat)
            cap = capture(model, r0["input_ids"])
            p, g = r0["prompt_len"], r0["gen_len"]
            for span in [(0, 0), (1, 4), (0, g - 1), (3, 8)]:
                r = reference_scores(model, tok, prompt, target, span, "ifr-span", use_chat_template=chat)
                mine = span_vec(model, cap, p + span[0], p + span[1])
                upd(f"eps{eps_cfg} ifr-span", (mine - r["full_row"]).abs().max())
                m = reference_scores(model, tok, prompt, target, span, "ifr-matrix", use_chat_template=chat)
                rows = torch.stack([span_vec(model, cap, t, t) for t in range(p + span[0], p + span[1] + 1)])
                upd(f"eps{eps_cfg} ifr-matrix", (rows - m["matrix_rows"]).abs().max())
                upd(f"eps{eps_cfg} ifr-matrix scores", (rows.mean(0)[r0["user_prompt_indices"]] - m["scores"]).abs().max())
            for theta in (1e-3, 5e-3, 0.02):
                r = reference_scores(model, tok, prompt, target, (1, 4), "ifr-span", use_chat_template=chat,
                                     renorm_threshold=theta)
                upd(f"eps{eps_cfg} ifr-span theta", (span_vec(model, cap, p + 1, p + 4, theta=theta) - r["full_row"]).abs().max())
            for O, R, K in [((5, 8), (0, 4), 0), ((5, 8), (0, 4), 1), ((5, 8), (0, 4), 3), ((6, 8), None, 2)]:
                f = reference_scores(model, tok, prompt, target, O, "flashtrace", reasoning_span=R, hops=K,
                                     use_chat_template=chat)
                F, ratios = flashtrace_vec(model, cap, f, O, R, K, tok.eos_token_id)
                upd(f"eps{eps_cfg} flashtrace", (F - f["full_row"]).abs().max())
                upd(f"eps{eps_cfg} flashtrace ratios", max(abs(x - y) for x, y in zip(ratios, f["thinking_ratios"])))
        # what if we used the config eps instead of 1e-6 in the value path?
        r = reference_scores(model, tok, prompt, target, (1, 4), "ifr-span")
        cap = capture(model, r["input_ids"])
        saved = head_writes.__defaults__
        head_writes.__defaults__ = (eps_cfg,)
        try:
            mine_cfg_eps = span_vec(model, cap, r["prompt_len"] + 1, r["prompt_len"] + 4)
        finally:
            head_writes.__defaults__ = saved
        upd(f"eps{eps_cfg} ifr-span using config eps in value path", (mine_cfg_eps - r["full_row"]).abs().max())
    for k, v in worst.items():
        print(f"{k:55s} max abs diff = {v:.3e}")


if __name__ == "__main__":
    main()
