"""`APILM`: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, a gateway) as a DSPy LM.

Chat messages go to ``/v1/chat/completions`` through ``dspy.LM`` (LiteLLM), with DSPy's response cache. A raw
completion prompt (one message named :data:`RAW_PROMPT`) goes to ``/v1/completions`` verbatim: ``dspy.LM``'s
text mode would append "BEGIN RESPONSE:" to it, so :class:`TextCompletionLM` calls LiteLLM itself, caching in the
same DSPy cache. Transient failures (timeouts, 5xx, connection errors, malformed replies) are retried with
exponential backoff; a server that stays down raises :class:`ServerUnavailable` naming the URL, which
``medjp eval`` reports after saving the finished questions.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import dspy
from dspy.clients.cache import request_cache
from dspy.clients.engines.litellm_errors import litellm_errors
from dspy.clients.errors import error_boundary
from dspy.utils.exceptions import (
    LMAuthError, LMBillingError, LMConfigurationError, LMError, LMInvalidRequestError, LMUnexpectedError,
    LMUnsupportedFeatureError,
)

from .options import LMOptions
from .prompts import is_raw

# A self-hosted server has no price list; fetching LiteLLM's from the internet stalls an offline node ~10 s.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: Failures a retry cannot fix: the request or the credentials are wrong, or the client code failed.
_PERMANENT = (LMAuthError, LMBillingError, LMInvalidRequestError, LMConfigurationError, LMUnsupportedFeatureError,
              LMUnexpectedError)
T = TypeVar("T")


class ServerUnavailable(RuntimeError):
    """The server kept failing after every retry."""


def _text_completion(request: dict[str, Any], client: dict[str, Any]) -> Any:
    import litellm

    body = {k: v for k, v in request.items() if k != "rollout_id"}  # a cache-key field, not a request field
    model = body.pop("model")
    return litellm.text_completion(model=f"text-completion-openai/{model}", **body, **client)


# Keyed by the request alone: the same prompt to the same served model is the same answer on any server URL.
_cached_text_completion = request_cache(cache_arg_name="request")(_text_completion)


class TextCompletionLM(dspy.BaseLM):
    """``/v1/completions`` with the prompt sent verbatim; responses are cached in DSPy's cache.

    Args:
        model: The served model name.
        client: LiteLLM connection settings (``api_base``, ``api_key``, ``timeout``); not part of cache keys.
    """

    def __init__(self, model: str, client: dict[str, Any], **kwargs: Any):
        super().__init__(model=model, model_type="text", **kwargs)
        self.client = client

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        text = str(messages[-1]["content"]) if messages else prompt or ""
        merged = {k: v for k, v in {**self.kwargs, **kwargs}.items() if v is not None}
        send = _cached_text_completion if merged.pop("cache", self.cache) else _text_completion
        request = {"model": self.model, "prompt": text, **merged}
        # DSPy's own mapping of LiteLLM errors, so both routes raise the same LMError classes.
        with error_boundary(self.model, unexpected=True), litellm_errors(model=self.model):
            return send(request=request, client=self.client)

    async def aforward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        return await asyncio.to_thread(self.forward, prompt, messages, **kwargs)


class APILM(dspy.BaseLM):
    """A model served by an OpenAI-compatible server.

    Args:
        model: The served model name (with vLLM ``--lora-modules NAME=PATH``, an adapter's NAME).
        api_base: The server's base URL, e.g. ``http://gpu-node:8000/v1``.
        api_key: Bearer token; servers without auth accept any.
        num_retries: Retries of a failed request before giving up (delays ``backoff_s``, ×2 each time).
        backoff_s: First retry delay in seconds.
        timeout_s: Seconds to wait for one reply (a long CoT answer on a busy server takes a while).
        cache: Use DSPy's response cache (``DSPY_CACHEDIR``).
        **kwargs: Default request parameters (temperature, max_tokens, top_p, ...).

    Example:
        >>> lm = APILM("swallow-medical", "http://gpu-node:8000/v1", max_tokens=512)
        >>> with dspy.context(lm=lm):
        ...     MedicalQA()(question="...", choices=[...])
    """

    def __init__(self, model: str, api_base: str, api_key: str | None = None, *, num_retries: int = 4,
                 backoff_s: float = 1.0, timeout_s: float = 600.0, cache: bool = True, **kwargs: Any):
        super().__init__(model=model, model_type="chat", cache=cache, num_retries=num_retries, **kwargs)
        self.api_base = api_base
        self.backoff_s = backoff_s
        # Servers without authentication accept any key; LiteLLM's OpenAI client insists on one. The OpenAI SDK's
        # own retries are off, so that every failed attempt passes through one retry policy (this class's).
        client = {"api_base": api_base, "api_key": api_key or "EMPTY", "timeout": timeout_s, "max_retries": 0}
        # LiteLLM, not DSPy's native engine: it sends n as one request (the native engine sends n requests).
        self.chat = dspy.LM(f"openai/{model}", engine="litellm", cache=cache, num_retries=0, **client)
        self.text = TextCompletionLM(model, client, cache=cache)

    @classmethod
    def from_options(cls, opts: LMOptions) -> "APILM":
        if not opts.model:
            raise ValueError("--api-base needs --model: the name the server serves the model (or adapter) under")
        if opts.adapters or opts.load_in_4bit or opts.load_in_8bit:
            raise ValueError("--adapter and --load-in-4bit/8bit configure a local model; with --api-base the server "
                             "loads the model (serve adapters with vLLM --lora-modules and pass --model NAME)")
        return cls(opts.model, opts.api_base or "", opts.api_key, cache=opts.cache, temperature=opts.temperature,
                   max_tokens=opts.max_new_tokens, top_p=opts.top_p)

    def describe(self) -> dict[str, str]:
        return {"model": self.model, "adapter": "", "backend": f"api {self.api_base}"}

    # BaseLM's public entry points are replaced, not forward(): the chat route must go through dspy.LM's own
    # __call__ to keep DSPy's cache, history and usage tracking.
    def __call__(self, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        lm, merged = self._route(messages, kwargs)
        return self._retrying(lambda: lm(prompt, messages=messages, **merged))

    async def acall(self, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        lm, merged = self._route(messages, kwargs)
        return await self._aretrying(lambda: lm.acall(prompt, messages=messages, **merged))

    def _route(self, messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> tuple[dspy.BaseLM, dict]:
        lm = self.text if messages and is_raw(messages) else self.chat
        return lm, {**self.kwargs, **kwargs}

    def _retrying(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except LMError as e:
                self._give_up_on(e, attempt)
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1

    async def _aretrying(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except LMError as e:
                self._give_up_on(e, attempt)
            await asyncio.sleep(self.backoff_s * 2**attempt)
            attempt += 1

    def _give_up_on(self, error: LMError, attempt: int) -> None:
        """Re-raise what retrying cannot fix; after the last retry, raise :class:`ServerUnavailable`."""
        if isinstance(error, _PERMANENT):
            raise error
        if attempt >= self.num_retries:
            raise ServerUnavailable(
                f"the server at {self.api_base} failed {attempt + 1} times in a row "
                f"(last: {type(error).__name__}: {error})") from error
