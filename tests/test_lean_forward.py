"""The lean capture-time attention forward equals the bridge's stock eager forward."""

from __future__ import annotations

import pytest
import torch

from ftlens.bridge import temporary_hooks
from ftlens.lean_forward import fast_attention, supports_fast_attention

N_POS = 40


def _record(model, ids):
    """Values of every hook point except the pattern/score hooks, and the logits."""
    seen: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        seen[hook.name] = x.detach().clone()

    names = [n for n in model.hook_dict if "hook_pattern" not in n and "hook_attn_scores" not in n]
    with temporary_hooks(model, [(n, keep) for n in names]), torch.no_grad():
        logits = model(ids)
    return seen, logits


def _ids(n=N_POS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4000, (1, n), generator=gen)


def test_lean_forward_matches_stock_on_every_hook(tiny):
    ids = _ids()
    stock, logits0 = _record(tiny, ids)
    with fast_attention(tiny) as n_swapped:
        lean, logits1 = _record(tiny, ids)
    assert n_swapped == len(tiny.blocks)
    assert set(stock) == set(lean)  # every hook the stock forward fires still fires
    for name, value in stock.items():
        torch.testing.assert_close(lean[name], value, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(logits1, logits0, atol=1e-5, rtol=1e-5)


def test_lean_forward_is_used_and_makes_no_pattern(tiny):
    """Inside the block the pattern hook never fires (no [H, T, T] tensor is built)."""
    fired = []
    name = "blocks.0.attn.hook_rot_q"
    with fast_attention(tiny), temporary_hooks(tiny, [(name, lambda x, hook: fired.append(x.shape))]):
        calls = []
        pattern = tiny.blocks[0].attn.hook_pattern
        handle = pattern.register_forward_hook(lambda *a: calls.append(1))
        try:
            # a hook on hook_pattern makes that layer fall back to the stock forward
            with torch.no_grad():
                tiny(_ids(8), return_type=None)
        finally:
            handle.remove()
        assert calls, "with a pattern hook registered the stock forward must run"
        with torch.no_grad():
            tiny(_ids(8), return_type=None)
        assert len(calls) == 1, "without a pattern hook the lean forward must run"
    assert len(fired) == 2


def test_forwards_restored_after_exit_and_after_error(tiny):
    attn = tiny.blocks[0].attn
    stock = type(attn).forward
    assert supports_fast_attention(attn)
    with pytest.raises(RuntimeError, match="boom"):
        with fast_attention(tiny):
            assert "forward" in attn.__dict__
            raise RuntimeError("boom")
    assert all("forward" not in b.attn.__dict__ for b in tiny.blocks)
    assert attn.forward.__func__ is stock
    # an error raised inside the forward itself (by a hook) also restores everything
    def bad(x, hook):
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"):
        with fast_attention(tiny), temporary_hooks(tiny, [("blocks.1.attn.hook_rot_k", bad)]):
            with torch.no_grad():
                tiny(_ids(8), return_type=None)
    assert all("forward" not in b.attn.__dict__ for b in tiny.blocks)
    assert not any(getattr(b.attn.original_component, "forward", None).__qualname__.startswith("fast")
                   for b in tiny.blocks)


def test_disabled_swaps_nothing(tiny_llama):
    with fast_attention(tiny_llama, enabled=False) as n:
        assert n == 0
        assert all("forward" not in b.attn.__dict__ for b in tiny_llama.blocks)


def test_capture_states_equal_with_and_without_fast_attention(tiny):
    from ftlens.capture import capture, model_info

    ids = _ids(30)[0]
    info = model_info(tiny)
    fast = capture(tiny, ids, 20, info, fast_attn=True)
    slow = capture(tiny, ids, 20, info, fast_attn=False)
    for st_f, st_s in zip(fast, slow):
        for field in ("a", "b", "c", "q", "k", "v"):
            torch.testing.assert_close(getattr(st_f, field), getattr(st_s, field), atol=1e-5, rtol=1e-5)
        # row states own their memory: the full [pos, d] activation is not kept alive
        for field in ("a", "b", "c", "q"):
            x = getattr(st_f, field)
            assert x.untyped_storage().nbytes() == x.numel() * x.element_size()
