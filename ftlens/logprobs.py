"""Per-token log-probabilities of target tokens for a batch of sequences (the ablation and deletion
passes: :mod:`ftlens.study.causal`, :mod:`ftlens.eval.scoring`).

``lp[b, t] = log p(x_t | x_<t)`` for ``t = start..T-1``, read from the Hugging Face model under the
bridge; only the target rows go through the unembedding.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .bridge import device_of, hf_model

__all__ = ["target_logprobs"]


def target_logprobs(
    model: Any,
    batch: Int[Tensor, "batch pos"],
    start: int,
    *,
    chunk: int = 8,
) -> Float[Tensor, "batch tok"]:
    """Per-token ``log p(x_t | x_<t)`` for ``t = start..T-1`` of every row of ``batch``.

    Only the target rows go through the unembedding (the prompt rows' logits are not needed).
    """
    hf = hf_model(model)
    body = getattr(hf, "model", None)
    head = getattr(hf, "lm_head", None)
    device = device_of(hf)
    outs = []
    with torch.no_grad():
        for i in range(0, batch.shape[0], chunk):
            x = batch[i : i + chunk].to(device)
            if body is not None and head is not None:
                h = body(input_ids=x).last_hidden_state[:, start - 1 : -1]
                logits = head(h).float()
            else:
                logits = hf(input_ids=x).logits[:, start - 1 : -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            outs.append(lp.gather(-1, x[:, start:, None]).squeeze(-1).cpu())
    return torch.cat(outs, 0)
