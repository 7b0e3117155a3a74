"""The proximity and per-layer share formulas on hand-made numbers (method §2, §7)."""

from __future__ import annotations

import torch

from ftlens.ifr import head_proximities, head_writes, normalised_shares, mlp_share, proximity


def test_proximity_is_clipped_l1_gain():
    y = torch.tensor([1.0, -2.0])
    # |y|_1 = 3; |y - z|_1 = 0.5 + 1 = 1.5  ->  1.5
    assert float(proximity(torch.tensor([0.5, -1.0]), y)) == 1.5
    # |y - z|_1 = 0.5 + 3 = 3.5 > 3  ->  clipped to 0
    assert float(proximity(torch.tensor([0.5, 1.0]), y)) == 0.0
    # the whole is fully close to itself
    assert float(proximity(y, y)) == 3.0


def test_proximity_is_positively_homogeneous():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(16, generator=g), torch.randn(16, generator=g)
    assert torch.allclose(proximity(3.0 * z, 3.0 * y), 3.0 * proximity(z, y), atol=1e-5)


def test_head_writes_route_query_heads_to_their_kv_group():
    v = torch.randn(2, 5, 3)  # kv src dh
    w_o = torch.randn(4, 3, 7)  # head dh d  (group size 2)
    u = head_writes(v, w_o)
    for h in range(4):
        torch.testing.assert_close(u[h], v[h // 2] @ w_o[h])


def test_layer_shares_with_bias_match_the_formula_by_hand():
    g = torch.Generator().manual_seed(1)
    n_heads, n_kv, n_src, dh, d = 4, 2, 5, 3, 6
    v = torch.randn(n_kv, n_src, dh, generator=g)
    w_o = torch.randn(n_heads, dh, d, generator=g)
    attn = torch.softmax(torch.randn(1, n_heads, n_src, generator=g), dim=-1)
    x = torch.randn(1, d, generator=g)
    beta = torch.randn(1, d, generator=g)
    u = head_writes(v, w_o)
    y = x + torch.einsum("rhs,hsd->rd", attn, u) + beta  # completeness by construction
    sh = normalised_shares(y, x, beta, attn, v, w_o)
    P = torch.tensor([[float(proximity(attn[0, h, s] * u[h, s], y[0])) for s in range(n_src)]
                      for h in range(n_heads)])
    R, Bt = float(proximity(x[0], y[0])), float(proximity(beta[0], y[0]))
    Z = float(P.sum()) + R + Bt
    torch.testing.assert_close(sh.heads[0], P / Z, atol=1e-6, rtol=1e-5)
    assert abs(float(sh.residual[0]) - R / Z) < 1e-6
    assert abs(float(sh.bias[0]) - Bt / Z) < 1e-6
    assert abs(float(sh.heads.sum() + sh.residual.sum() + sh.bias.sum()) - 1.0) < 1e-6


def test_head_proximities_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(2)
    v, w_o = torch.randn(2, 40, 3, generator=g), torch.randn(4, 3, 8, generator=g)
    attn = torch.softmax(torch.randn(3, 4, 40, generator=g), dim=-1)
    y = torch.randn(3, 8, generator=g)
    whole = head_proximities(y, attn, v, w_o, max_elems=1 << 30)
    tiny_chunks = head_proximities(y, attn, v, w_o, max_elems=1)
    torch.testing.assert_close(whole, tiny_chunks)


def test_mlp_share_is_prox_of_mlp_write_over_both_parts():
    b = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 2.0]])  # m = c - b = [0, 2]
    pm, pb = float(proximity(c - b, c)[0]), float(proximity(b, c)[0])
    assert (pm, pb) == (2.0, 1.0)
    assert abs(float(mlp_share(b, c)[0]) - 2.0 / 3.0) < 1e-7
