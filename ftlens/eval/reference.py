"""The reference package ``flashtrace`` (PyPI) as one more method in the baselines' form: a
``[pos]`` score tensor aligned with an ftlens :class:`~ftlens.spans.Sequence`.

It is called with its chat template OFF on the already-formatted prompt text, so its positions
equal ours, on a plain Hugging Face copy of the model in eager attention (:func:`plain_hf`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import device_of, hf_model
from ..errors import TraceError
from ..spans import Sequence


def reference_flashtrace(
    model: Any, seq: Sequence, formatted: str, *, hops: int = 1
) -> Float[Tensor, " pos"]:
    """The PyPI ``flashtrace`` reference, aligned to ``seq`` (chat template off on ``formatted``).

    Raises :class:`TraceError` when the package is missing or its ids differ from ``seq``.
    """
    try:
        from flashtrace import FlashTrace
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TraceError("the reference package `flashtrace` is not installed") from exc
    hf = plain_hf(model)
    tok = model.tokenizer
    p = seq.prompt_len
    target = seq.target_text
    ref_ids = tok(formatted, add_special_tokens=False)["input_ids"] + tok(target, add_special_tokens=False)["input_ids"]
    if ref_ids != seq.ids.tolist():
        raise TraceError("reference: its tokenisation differs from the ftlens sequence; not aligned")
    o = (seq.output[0] - p, seq.output[1] - 1 - p)
    r = (seq.reasoning[0] - p, seq.reasoning[1] - 1 - p) if seq.reasoning else None
    before = getattr(hf.config, "_attn_implementation", None)
    if before != "eager":
        hf.set_attn_implementation("eager")
    try:
        tr = FlashTrace(hf, tok, use_chat_template=False).trace(
            prompt=formatted, target=target, output_span=o, reasoning_span=r, hops=hops,
            method="flashtrace",
        )
    finally:
        if before not in (None, "eager"):
            hf.set_attn_implementation(before)
    s = torch.zeros(seq.n)
    s[:p] = torch.as_tensor(tr.scores, dtype=torch.float32)[:p]
    return s


def plain_hf(model: Any) -> Any:
    """An unwrapped HF copy of the bridge's model in eager attention (cached on the model).

    TransformerBridge replaces the HF submodules in place and its attention wrappers return no
    ``attentions``, which the reference reads; so the reference runs on a plain copy with the
    same weights (state-dict keys with the bridge's ``_original_component`` stripped).
    """
    cached = getattr(model, "_ftlens_plain_hf", None)
    if cached is not None:
        return cached
    hf = hf_model(model)
    cfg = copy.deepcopy(hf.config)
    cfg._attn_implementation = "eager"
    plain = type(hf)(cfg)
    state = {k.replace("._original_component", "").replace("_original_component.", ""): v
             for k, v in hf.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if [m for m in missing if "rotary" not in m]:
        raise TraceError(f"reference: cannot rebuild a plain HF model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    plain = plain.to(device=device_of(model), dtype=next(hf.parameters()).dtype).eval()
    if hasattr(plain, "set_attn_implementation"):
        plain.set_attn_implementation("eager")
    model._ftlens_plain_hf = plain
    return plain
