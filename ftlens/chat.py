"""Chat input: the prompt formatted as the model sees it.

``prompt=`` (one user turn), optionally with ``system=``, or
``messages=[{"role": "system"|"user"|"assistant", "content": ...}, ...]`` ending with a
user turn (the target is the reply to it).  The content of every message is role
``prompt``; what the chat template adds (markers, a default system prompt) is
``template`` (:func:`ftlens.spans.build_sequence` marks them).  ``messages=`` and
``system=`` need a chat template; without one (or with ``chat_template=False``) the
prompt is used as it is, with the tokenizer's BOS.
"""

from __future__ import annotations

from typing import Any

from .errors import SpanError

__all__ = ["MESSAGE_ROLES", "chat_messages", "format_prompt", "user_contents"]

#: Message roles accepted by ``messages=``.
MESSAGE_ROLES = ("system", "user", "assistant")


def chat_messages(
    prompt: str | None, messages: Any = None, system: str | None = None
) -> list[dict[str, str]] | None:
    """The chat turns to format (``None``: a plain ``prompt`` without ``system``), checked.

    ``prompt`` alone is one user turn; ``system=`` adds a system turn before it;
    ``messages`` are used as given (each ``{"role": "system"|"user"|"assistant",
    "content": str}``, the last one the user's).
    """
    if messages is not None:
        if prompt is not None:
            raise SpanError(
                "pass either prompt= or messages=, not both (put the prompt in the last user message)"
            )
        if system is not None:
            raise SpanError(
                "pass the system prompt either as system= (with prompt=) or as the first of messages= "
                "({'role': 'system', 'content': ...}), not both"
            )
        if not isinstance(messages, (list, tuple)) or not messages:
            raise SpanError(
                "messages= must be a non-empty list of {'role': 'system'|'user'|'assistant', 'content': str}"
            )
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
                raise SpanError(
                    f"messages[{i}] needs a role of 'system', 'user' or 'assistant', got "
                    f"{(m.get('role') if isinstance(m, dict) else m)!r}"
                )
            if not isinstance(m.get("content"), str):
                raise SpanError(f"messages[{i}] ({m['role']}) needs a 'content' string")
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "user":
            raise SpanError(
                "the last message must be the user's (the target is the assistant's reply to it); "
                "pass the assistant's reply as target="
            )
        if not any(m["content"].strip() for m in out):
            raise SpanError("every message is empty; pass the question or instruction text to attribute to")
        return out
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpanError("the prompt is empty; pass the question or instruction text to attribute to")
    if system is None:
        return None
    if not isinstance(system, str) or not system.strip():
        raise SpanError("the system prompt is empty; pass its text, or leave system= out")
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def format_prompt(
    tokenizer: Any,
    prompt: str | None,
    chat_template: bool | None,
    *,
    messages: Any = None,
    system: str | None = None,
) -> tuple[str, bool]:
    """The prompt text as the model sees it, and whether special tokens are added by encoding."""
    turns = chat_messages(prompt, messages, system)
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if turns is not None and system is not None and messages is None:
        given = "system="
    else:
        given = "messages="
    if turns is not None and not has_template:
        raise SpanError(
            f"{given} needs a chat template and this tokenizer has no chat template; pass the text as "
            "the model sees it as prompt= instead"
        )
    if turns is not None and chat_template is not None and not chat_template:
        raise SpanError(f"{given} is formatted with the chat template; drop chat_template=False")
    use = has_template if chat_template is None else bool(chat_template)
    if use and not has_template:
        raise SpanError("this tokenizer has no chat template; pass chat_template=False")
    if use:
        turns = turns or [{"role": "user", "content": prompt}]
        try:
            text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja raises its own errors, e.g. "system role not supported"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpanError(
                f"the chat template refused these messages ({first[:120]}); change the roles or "
                "pass a plain prompt="
            ) from None
        return text, False
    return prompt, True


def user_contents(prompt: str | None, messages: Any, system: str | None) -> list[str]:
    turns = chat_messages(prompt, messages, system)
    return [prompt] if turns is None else [m["content"] for m in turns]
