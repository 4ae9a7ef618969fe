"""Turning DSPy messages into the exact text and tokens a local model sees.

A single user message named :data:`RAW_PROMPT` is a raw completion prompt, used verbatim and tokenized with
the tokenizer's own special tokens (BOS), as a completion server would. Any other message list goes through the
tokenizer's chat template with the generation prompt appended; that text already holds its special tokens, so
none are added again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import RAW_PROMPT


@dataclass(frozen=True)
class RenderedPrompt:
    """The prompt text, and whether it is a raw completion prompt (else chat-template text)."""

    text: str
    raw: bool


def is_raw(messages: list[dict[str, Any]]) -> bool:
    return len(messages) == 1 and messages[0].get("name") == RAW_PROMPT


def raw_messages(text: str) -> list[dict[str, Any]]:
    """A raw completion prompt as the one message the backends recognise (:data:`RAW_PROMPT`)."""
    return [{"role": "user", "content": text, "name": RAW_PROMPT}]


def is_ensemble(prompt: Any) -> bool:
    """Whether a recorded prompt is an ensemble's: a list of prompts (texts or message lists), not one message list."""
    return isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], dict)


def prompt_sent(messages: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The prompt as a reader wants it: a raw completion prompt's text, or the chat messages."""
    return str(messages[0]["content"]) if is_raw(messages) else messages


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]] | None, prompt: str | None = None) -> RenderedPrompt:
    """The text a model is given for a DSPy call (a bare ``prompt`` is one user turn, as in ``dspy.LM``)."""
    messages = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
    if is_raw(messages):
        return RenderedPrompt(str(messages[0]["content"]), raw=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has no chat template; use a raw-completion "
            "prompt format (chat=False) with this model")
    chat = [{"role": m["role"], "content": str(m["content"])} for m in messages]
    return RenderedPrompt(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), raw=False)


def prompt_ids(tokenizer: Any, rendered: RenderedPrompt) -> list[int]:
    return list(tokenizer(rendered.text, add_special_tokens=rendered.raw)["input_ids"])
