"""`ScriptedLM`: a DSPy LM that answers with a Python function. For tests, benchmarks and dry runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

    It answers on DSPy's sync path (``forward``, from threads) and async path (``aforward``, from an event loop).
    ``latency_s`` makes every call take that long, like a server (a sleep, or an ``asyncio.sleep`` that leaves the
    loop free); ``peak_in_flight`` is the most calls it held at once.
    """

    def __init__(self, reply: Reply | str, model: str = "scripted", latency_s: float = 0.0):
        super().__init__(model=model, model_type="chat", temperature=0.0, max_tokens=512)
        self.reply: Reply = (lambda _p, _k: reply) if isinstance(reply, str) else reply
        self.latency_s = latency_s
        self.calls: list[dict[str, Any]] = []
        self.peak_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        with self._held():
            if self.latency_s:
                time.sleep(self.latency_s)
            return self._answer(prompt, messages, kwargs)

    async def aforward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
                       **kwargs: Any):
        with self._held():
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            return self._answer(prompt, messages, kwargs)

    @contextmanager
    def _held(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, prompt: str | None, messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> Any:
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
