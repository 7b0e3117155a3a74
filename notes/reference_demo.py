"""Demo: run the reference `flashtrace` through tests/reference_adapter.py on a tiny
random Llama with the SmolLM2 tokenizer.  Run: .venv/bin/python notes/reference_demo.py"""

import os
import sys
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import torch  # noqa: E402

from reference_adapter import reference_scores, smollm2_tokenizer, tiny_llama  # noqa: E402

torch.set_printoptions(precision=5, linewidth=120, sci_mode=False)

tok = smollm2_tokenizer()
model = tiny_llama(len(tok), seed=0)

PROMPT = "Alice has 3 apples, Bob has 5."
TARGET = "Together 8 apples. Answer: 8"


def show(chat: bool) -> None:
    print(f"\n===== use_chat_template={chat} =====")
    r = reference_scores(model, tok, PROMPT, TARGET, (0, 2), "ifr-span", use_chat_template=chat)
    print("formatted_prompt:", repr(r["formatted_prompt"]))
    print("prompt_len:", r["prompt_len"], "gen_len:", r["gen_len"],
          "user_prompt_indices:", r["user_prompt_indices"][0], "..", r["user_prompt_indices"][-1])
    print("input_ids:", r["input_ids"].tolist())
    print("prompt_tokens:", r["prompt_tokens"])
    print("generation_tokens:", r["generation_tokens"])
    print("target_ids_match (ids(target+eos) == ids(target)+[eos]):", r["target_ids_match"])
    print("ifr-span  O=(0,2) scores:", r["scores"])
    print("ifr-span  full_row:", r["full_row"])
    m = reference_scores(model, tok, PROMPT, TARGET, (0, 2), "ifr-matrix", use_chat_template=chat)
    print("ifr-matrix O=(0,2) scores:", m["scores"])
    gl = r["gen_len"]
    # reasoning = first 5 target tokens, output = the rest up to the token before EOS
    f = reference_scores(model, tok, PROMPT, TARGET, (5, gl - 2), "flashtrace",
                         reasoning_span=(0, 4), hops=1, use_chat_template=chat)
    print(f"flashtrace O=(5,{gl-2}) R=(0,4) hops=1 scores:", f["scores"])
    print("   thinking_ratios:", [round(x, 5) for x in f["thinking_ratios"]],
          "hop_span_abs:", f["hop_span_abs"])

    # Q3: single-token span == token-wise row?
    worst = 0.0
    for t in range(gl):
        a = reference_scores(model, tok, PROMPT, TARGET, (t, t), "ifr-span", use_chat_template=chat)
        b = reference_scores(model, tok, PROMPT, TARGET, (t, t), "ifr-matrix", use_chat_template=chat)
        worst = max(worst, (a["full_row"] - b["full_row"]).abs().max().item(),
                    (a["scores"] - b["scores"]).abs().max().item())
    print(f"max |ifr-span(t,t) - ifr-matrix row t| over all {gl} generation positions:", worst)


show(False)
show(True)
