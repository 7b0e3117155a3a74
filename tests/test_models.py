"""ftlens.models: the default model offline, its cache, tiny models, and load errors."""

from __future__ import annotations

import socket

import pytest
import torch

from ftlens import models
from ftlens.errors import FtlensError, ModelLoadError

ARCHS = ["llama", "qwen2", "qwen3"]


def _block_network(mp: pytest.MonkeyPatch) -> None:
    """Any DNS lookup or socket connect raises; the hub client is put in offline mode.

    ``HF_HUB_OFFLINE`` is read once when huggingface_hub is imported, so the
    module constant is patched as well as the environment variable.
    """
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def no_network(monkeypatch):
    _block_network(monkeypatch)


@pytest.fixture(scope="module")
def smol():
    """The default model, loaded once per module with the network blocked."""
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        yield models.load_model(device="cpu")


# --------------------------------------------------------------------------- default model


def test_default_model_is_smollm2_135m_with_gqa(smol):
    cfg = smol.cfg
    assert cfg.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads) == (30, 9, 3)
    assert (cfg.d_model, cfg.d_head, cfg.d_vocab) == (576, 64, 49152)
    assert cfg.dtype == torch.float32 and str(cfg.device) == "cpu"
    assert next(smol.original_model.parameters()).dtype == torch.float32


def test_default_model_answers_paris_offline(smol, no_network):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = smol.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    assert ids[0, 0].item() == smol.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (ids == ids[0, 0]).sum() == 3  # system, user, assistant: no doubled BOS
    out = smol.generate(ids, max_new_tokens=12, do_sample=False, verbose=False)
    answer = smol.tokenizer.decode(out[0, ids.shape[1] :])
    assert "Paris" in answer, answer


def test_chat_template_survives_the_cache(smol):
    template = smol.tokenizer.chat_template
    assert template and "<|im_start|>" in template
    text = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_second_load_reads_the_cache_not_the_gguf(smol, no_network, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("load_model() converted the GGUF again instead of using the cache")

    monkeypatch.setattr(models.bundled, "_convert_gguf", no_conversion)  # where it is called
    again = models.load_model(device="cpu")
    cached = models.cache_dir() / "models" / models.MODEL_SLUG
    assert again.original_model.name_or_path == str(cached)
    assert (cached / "model.safetensors").is_file() and (cached / models.MARKER).is_file()
    tokens = smol.to_tokens("The capital of France is")
    assert torch.equal(again(tokens), smol(tokens))


# --------------------------------------------------------------------------- atomic cache


def test_interrupted_cache_write_leaves_no_directory(tmp_path):
    target = tmp_path / "models" / "m"

    def crash(tmp):
        (tmp / "half-written.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models.atomic_dir(target, crash, {"v": 1})
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_cache_write_replaces_a_stale_directory(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")  # no marker: stale/half cache

    models.atomic_dir(target, lambda tmp: (tmp / "new.bin").write_bytes(b"new"), {"v": 1})
    assert sorted(p.name for p in target.iterdir()) == [models.MARKER, "new.bin"]
    assert models.is_valid_cache(target, {"v": 1})
    assert not models.is_valid_cache(target, {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_cache_dir_follows_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLENS_CACHE_DIR", str(tmp_path))
    assert models.cache_dir() == tmp_path


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_logits_equal_hf_logits(arch, no_network):
    model = models.tiny_model(arch, seed=3)
    reference = models.tiny_hf_model(arch, seed=3)  # independent copy, same seed
    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog.")
    with torch.no_grad():
        expected = reference(tokens).logits
        got = model(tokens)
    assert got.shape == (1, tokens.shape[1], 49152)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_has_gqa_and_the_arch_specific_parts(arch):
    model = models.tiny_model(arch)
    hf = model.original_model
    assert hf.config.architectures == [models.ARCHITECTURES[arch]]
    assert hf.config.vocab_size == len(model.tokenizer) == model.cfg.d_vocab
    assert (model.cfg.n_heads, model.cfg.n_key_value_heads, model.cfg.d_head) == (4, 2, 16)
    attn = hf.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (arch == "qwen2")
    assert hasattr(attn, "q_norm") == (arch == "qwen3")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_tiny_model_is_deterministic_per_seed():
    def weights(seed):
        return models.tiny_hf_model("llama", seed=seed).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[q], c[q])


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.tiny_hf_model("qwen3", seed=7)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- hooks ftlens relies on


def test_bridge_hooks_carry_the_residual_stream_and_per_kv_head_values():
    model = models.tiny_model("qwen2")
    tokens = model.to_tokens("one two three four five")
    _, cache = model.run_with_cache(tokens)
    n, h, kv, d = tokens.shape[1], 4, 2, 16
    for layer in range(model.cfg.n_layers):
        p = f"blocks.{layer}."
        resid_pre, resid_mid, resid_post = (
            cache[p + f"hook_resid_{s}"][0] for s in ("pre", "mid", "post")
        )
        torch.testing.assert_close(resid_mid, resid_pre + cache[p + "hook_attn_out"][0])
        torch.testing.assert_close(resid_post, resid_mid + cache[p + "hook_mlp_out"][0])
        pattern, v, z = (cache[p + f"attn.hook_{s}"][0] for s in ("pattern", "v", "z"))
        assert pattern.shape == (h, n, n) and v.shape == (n, kv, d) and z.shape == (n, h, d)
        z_expected = torch.einsum("hqk,khd->qhd", pattern, v.repeat_interleave(h // kv, dim=1))
        torch.testing.assert_close(z, z_expected)
        w_o = model.blocks[layer].attn.W_O
        assert w_o.shape == (h, d, model.cfg.d_model)
        assert model.blocks[layer].attn.b_O is None  # qwen2: q/k/v biases, no o_proj bias
        attn_out = torch.einsum("qhd,hdm->qm", z, w_o)
        torch.testing.assert_close(attn_out, cache[p + "hook_attn_out"][0], atol=1e-5, rtol=1e-5)


def test_hooks_context_manager_removes_its_hooks():
    model = models.tiny_model("llama")
    tokens = model.to_tokens("hello world")
    seen = []
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_mid", lambda x, hook: seen.append(x.shape))]):
        model(tokens)
    model(tokens)
    assert seen == [torch.Size([1, tokens.shape[1], 64])]


# --------------------------------------------------------------------------- names, options, errors


def test_local_directory_loads_through_the_bridge(tmp_path, no_network):
    reference = models.tiny_hf_model("qwen3", seed=5)
    reference.save_pretrained(tmp_path)
    models.default_tokenizer().save_pretrained(tmp_path)
    model = models.load_model(str(tmp_path), device="cpu", dtype="bfloat16")
    assert model.cfg.dtype == torch.bfloat16
    assert next(model.original_model.parameters()).dtype == torch.bfloat16
    tokens = model.to_tokens("a local checkpoint")
    with torch.no_grad():
        expected = reference.to(torch.bfloat16)(tokens).logits
    torch.testing.assert_close(model(tokens), expected, atol=0.05, rtol=0.05)


def test_cached_hub_model_loads_with_the_hub_unreachable(tmp_path, monkeypatch):
    """Online mode, no route to the hub, model in the HF cache: loads at once, no retries."""
    import huggingface_hub.constants

    repo = tmp_path / "models--ftlens-test--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    reference = models.tiny_hf_model("llama", seed=1)
    reference.save_pretrained(snapshot)
    models.default_tokenizer().save_pretrained(snapshot)
    _block_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    model = models.load_model("ftlens-test/tiny", device="cpu")
    assert model.cfg.model_name == "ftlens-test/tiny"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # forced offline only inside
    tokens = model.to_tokens("from the cache")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, atol=1e-4, rtol=0)


def test_unknown_model_offline_raises_a_helpful_error(no_network):
    with pytest.raises(ModelLoadError) as err:
        models.load_model("no-such-org/no-such-model-ftlens")
    message = str(err.value)
    assert "no-such-org/no-such-model-ftlens" in message and "HF_HUB_OFFLINE" in message
    assert "local directory" in message and "load_model() with no name" in message
    assert isinstance(err.value, FtlensError) and isinstance(err.value, ValueError)


def test_unknown_model_with_unreachable_hub_fails_fast(monkeypatch):
    import huggingface_hub.constants

    _block_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # "online", no route
    with pytest.raises(ModelLoadError, match="unreachable"):
        models.load_model("no-such-org/no-such-model-ftlens")


def test_missing_local_path_raises(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        models.load_model(str(tmp_path / "nowhere" / "model"))


@pytest.mark.parametrize(
    "given, expected",
    [(None, torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16),
     ("torch.float16", torch.float16), (torch.bfloat16, torch.bfloat16)],
)  # fmt: skip
def test_resolve_dtype(given, expected):
    assert models.resolve_dtype(given) == expected


def test_resolve_device_and_bad_options():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="dtype"):
        models.resolve_dtype("float8")
    with pytest.raises(ValueError, match="device"):
        models.resolve_device("tpu:0")
