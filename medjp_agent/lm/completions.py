"""`Generation`, what one request produced, and its OpenAI-shaped response (what DSPy and HTTP clients read)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Generation:
    """The ``n`` completions of one prompt, with its token accounting.

    ``generation_s`` is this request's share of its batch's ``generate`` time (0 when served from the cache), so
    the shares of a run add up to the time the model really spent generating.
    """

    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    generation_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "texts": list(self.texts), "finish_reasons": list(self.finish_reasons)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Generation":
        return cls(**{**d, "texts": tuple(d["texts"]), "finish_reasons": tuple(d["finish_reasons"])})

    def usage(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens, "generation_s": self.generation_s}


def openai_response(generation: Generation, model: str, kind: Literal["chat", "text"] = "chat") -> dict[str, Any]:
    """A ``chat.completion`` (``choices[i].message.content``) or ``text_completion`` (``choices[i].text``) body.

    Plain JSON-ready dicts: DSPy reads them like SDK objects, and the test server sends them as they are.
    """
    choices = []
    for i, (text, reason) in enumerate(zip(generation.texts, generation.finish_reasons)):
        body = {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}
        choices.append({"index": i, "finish_reason": reason, "logprobs": None, **body})
    return {"object": "chat.completion" if kind == "chat" else "text_completion", "model": model,
            "choices": choices, "usage": generation.usage()}
