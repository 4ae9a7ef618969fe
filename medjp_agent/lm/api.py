"""`APILM`: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, a gateway) as a DSPy LM.

Chat messages go to ``/chat/completions``; a raw completion prompt (one message named :data:`RAW_PROMPT`) goes to
``/completions`` verbatim, with no "BEGIN RESPONSE:" appended. Requests travel over one persistent
:class:`ServerClient` per backend, from threads (``forward``) or from an asyncio loop (``aforward``, which DSPy's
``acall`` runs), so hundreds of requests can be in flight without a thread each.

A reply is accepted only if it holds every requested completion with text. Anything else is retried with
exponential backoff and never cached: timeouts, dropped or refused connections, 5xx and 429, a malformed body, and
an empty or ``null`` completion or ``choices: []``. A server that keeps failing raises :class:`ServerUnavailable`
(the run stops, finished questions saved); one that keeps answering with empty completions raises :class:`NotRun`
for that question, which is then recorded as not run, never as a wrong answer. So does a prompt the server refuses
as longer than its model's context. Fewer completions than ``n``, each with text, mean a server that ignores ``n``:
:class:`RequestRejected`, not retried.

Accepted replies are cached in DSPy's cache (``dspy.cache``, ``DSPY_CACHEDIR``), keyed by endpoint and request
body: the same prompt to the same served model is the same answer on any server URL. Each reply's ``usage`` holds
the server's token counts and the completions' finish reasons (:mod:`.finish`), also when served from the cache.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import dspy

from ..redact import redact_text, remember
from .errors import NotRun, RequestRejected, ServerUnavailable
from .finish import KEY as FINISH_REASONS
from .finish import TRUNCATED, finish_counts
from .http import ServerClient, Transient
from .options import LMOptions
from .prompts import is_raw

#: Call settings that are not request fields: DSPy's cache switch, and its rollout id (a cache-key field only).
_NOT_SENT = frozenset({"cache", "rollout_id"})
#: The longest wait a server's Retry-After may impose on one retry.
_MAX_RETRY_AFTER_S = 60.0

__all__ = ["APILM", "NotRun", "ServerUnavailable"]


class EmptyReply(Transient):
    """A well-formed reply without the completion text asked for: a server fault, not the model's answer."""


@dataclass(frozen=True)
class _Call:
    """One request: where it goes, what it sends, and its cache entry (None: not cached)."""

    path: str
    body: dict[str, Any]
    raw: bool
    n: int
    cache_key: dict[str, Any] | None


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
        self.api_base = redact_text(api_base)  # only shown (describe, messages); the client below connects
        remember(api_key)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        # Shared by every copy of this LM (BaseLM.copy is shallow): one pool per backend.
        self.http = ServerClient(api_base, api_key, timeout_s)

    @classmethod
    def from_options(cls, opts: LMOptions) -> "APILM":
        if not opts.model:
            raise ValueError("--api-base needs --model: the name the server serves the model (or adapter) under")
        if opts.adapters or opts.load_in_4bit or opts.load_in_8bit:
            raise ValueError("--adapter and --load-in-4bit/8bit configure a local model; with --api-base the server "
                             "loads the model (serve adapters with vLLM --lora-modules and pass --model NAME)")
        return cls(opts.model, opts.api_base or "", opts.api_key, num_retries=opts.retries, timeout_s=opts.timeout,
                   cache=opts.cache, **opts.request())

    def describe(self) -> dict[str, str]:
        return {"model": self.model, "adapter": "", "backend": f"api {self.api_base}"}

    def close(self) -> None:
        self.http.close()

    # -- DSPy's LM interface: an OpenAI-shaped reply with usage --------------------------------------------------------
    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        call = self._call(prompt, messages, kwargs)
        for attempt in itertools.count():
            try:
                return _cached(call) or self._accept(call, self.http.post(call.path, call.body))
            except (Transient, RequestRejected) as failure:
                time.sleep(self._retry_delay_or_raise(failure, attempt))

    async def aforward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        call = self._call(prompt, messages, kwargs)
        for attempt in itertools.count():
            try:
                return _cached(call) or self._accept(call, await self.http.apost(call.path, call.body))
            except (Transient, RequestRejected) as failure:
                await asyncio.sleep(self._retry_delay_or_raise(failure, attempt))

    # -- one request ---------------------------------------------------------------------------------------------------
    def _call(self, prompt: str | None, messages: list[dict[str, Any]] | None, kwargs: dict[str, Any]) -> _Call:
        merged = {**self.kwargs, **kwargs}
        params = {k: v for k, v in merged.items() if v is not None and k not in _NOT_SENT}
        raw = bool(messages) and is_raw(messages)  # type: ignore[arg-type]
        if raw:
            path, body = "/completions", {"model": self.model, "prompt": str(messages[0]["content"]), **params}
        else:
            chat = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
            path, body = "/chat/completions", {"model": self.model, "messages": chat, **params}
        use_cache = merged.get("cache", self.cache)
        key = {"_fn_identifier": __name__, "path": path, "body": body, "rollout_id": merged.get("rollout_id")}
        return _Call(path, body, raw, int(params.get("n") or 1), key if use_cache else None)

    def _accept(self, call: _Call, reply: Any) -> dict[str, Any]:
        """The reply as DSPy reads it, once it holds every completion asked for (then it is cached)."""
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise Transient(f"malformed reply (no list of choices): {str(reply)[:300]}")
        answered = sum(_answered(c, call.raw) for c in choices)
        if not choices or answered < len(choices):
            raise EmptyReply(f"{answered} of the {call.n} completions asked for have text")
        if len(choices) < call.n:  # every one has text: the server ignores n, and would on every retry
            raise RequestRejected(f"the server at {self.http.base_url} returned {len(choices)} completions where "
                                  f"n={call.n} were asked: it ignores n, which sampling needs (vLLM supports it)")
        usage = {**(reply.get("usage") or {}), FINISH_REASONS: finish_counts(c.get("finish_reason") for c in choices)}
        accepted = {"model": reply.get("model") or self.model, "choices": choices, "usage": usage}
        if call.cache_key is not None:
            dspy.cache.put(call.cache_key, accepted)
        return accepted

    def _explain_not_found(self, refused: RequestRejected) -> None:
        """For a 404, raise what it means, asking the server which models it serves: a ``--model`` it does not serve
        (naming those it does), or an ``--api-base`` without the API's path (``/models`` is not found either)."""
        if refused.status != 404:
            return
        where = self.http.base_url
        try:
            listed = self.http.get("/models")
            served = [str(m.get("id")) for m in listed["data"] if isinstance(m, dict)]
        except (Transient, RequestRejected, KeyError, TypeError):
            raise RequestRejected(f"{refused}; GET {where}/models is not found either: is --api-base the API's URL "
                                  "(an OpenAI-compatible server's usually ends in /v1)?", 404) from None
        if self.model not in served:
            raise RequestRejected(f"the server at {where} serves no model named {self.model!r}; it serves "
                                  f"{', '.join(served) or 'none'}: pass one as --model", 404) from None

    def _retry_delay_or_raise(self, failure: Transient | RequestRejected, attempt: int) -> float:
        """Seconds to wait before retry ``attempt + 1``; after the last retry, raise why the request failed. A
        refused request is raised at once (a 404 explained first: a blocking lookup, once, as the run stops)."""
        if isinstance(failure, RequestRejected):
            self._explain_not_found(failure)
            raise failure
        if attempt >= self.num_retries:
            where = self.http.base_url  # no credentials in messages
            if isinstance(failure, EmptyReply):
                raise NotRun(f"the server at {where} returned no completion text {attempt + 1} times in a row "
                             f"({failure.reason})") from failure
            raise ServerUnavailable(f"the server at {where} failed {attempt + 1} times in a row "
                                    f"(last: {failure.reason})") from failure
        delay = self.backoff_s * 2**attempt
        if failure.retry_after is not None:
            delay = max(delay, min(failure.retry_after, _MAX_RETRY_AFTER_S))
        return delay


def _answered(choice: dict[str, Any], raw: bool) -> bool:
    """Whether a choice holds the model's answer: text, or none because the token limit cut it off (a reasoning
    model that spent every token thinking: the model's own outcome, scored and flagged truncated, not a fault)."""
    holder = choice if raw else choice.get("message")
    key = "text" if raw else "content"
    if not isinstance(holder, dict):
        return False
    text = holder.get(key)
    if isinstance(text, str) and text:
        return True
    if choice.get("finish_reason") == TRUNCATED and text in (None, ""):
        holder[key] = ""  # read as an empty answer, never as the text "None"
        return True
    return False


def _cached(call: _Call) -> dict[str, Any] | None:
    return None if call.cache_key is None else dspy.cache.get(call.cache_key)
