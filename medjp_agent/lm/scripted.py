"""`ScriptedLM`: a DSPy LM that answers with a Python function. For tests, benchmarks and dry runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import dspy

Reply = Callable[[str, dict[str, Any]], str]


def prompt_text(messages: list[dict[str, Any]] | None, prompt: str | None = None) -> str:
    """The whole conversation as one text, the way a scripted reply function wants to read it."""
    if prompt is not None:
        return prompt
    return "\n".join(str(m.get("content", "")) for m in messages or [])


class ScriptedLM(dspy.BaseLM):
    """Calls ``reply(prompt_text, kwargs)`` for each requested completion and records every call.

    ``reply`` may also be a fixed string. ``n`` completions per call are supported (one ``reply`` each, with
    ``kwargs["sample"]`` set to the sample index), so self-consistency logic can be tested.
    """

    def __init__(self, reply: Reply | str, model: str = "scripted"):
        super().__init__(model=model, model_type="chat", temperature=0.0, max_tokens=512)
        self.reply: Reply = (lambda _p, _k: reply) if isinstance(reply, str) else reply
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        text = prompt_text(messages, prompt)
        n = int(kwargs.get("n") or 1)
        replies = [self.reply(text, {**kwargs, "sample": i}) for i in range(n)]
        with self._lock:
            self.calls.append({"messages": messages, "prompt": text, "kwargs": kwargs, "replies": replies})
        choices = [SimpleNamespace(message=SimpleNamespace(content=r, tool_calls=None), finish_reason="stop",
                                   logprobs=None, index=i) for i, r in enumerate(replies)]
        usage = {"prompt_tokens": len(text), "completion_tokens": sum(len(r) for r in replies),
                 "total_tokens": len(text) + sum(len(r) for r in replies)}
        return SimpleNamespace(choices=choices, usage=usage, model=self.model)

    def describe(self) -> dict[str, str]:
        return {"model": self.model, "adapter": "", "backend": "scripted"}
