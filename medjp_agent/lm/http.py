"""`ServerClient`: one persistent HTTP connection pool to one OpenAI-compatible server, for threads and asyncio.

Built once per API backend, it keeps connections alive between requests: a request costs a round trip and a JSON
encode/decode, not a new client, socket and SSL context (LiteLLM built all three per call and loaded the CA bundle
each time, ~20 ms). Requests go straight to httpx's transports: ``httpx.Client``'s cookie jar, auth and redirect
layers cost more client CPU than the rest of a request (measured ~0.15 ms of ~0.45 ms) and a server API needs
none of them. Only an ``https`` server gets a verifying SSL context, created once and shared by the thread and
asyncio pools. A failure is classified here, once, for both paths: :class:`Transient` (worth a retry),
:class:`NotRun` (a prompt too long for the served model: only this question) or :class:`RequestRejected` (the
request itself is wrong).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import ssl
import threading
import urllib.request
import weakref
from typing import Any

import httpx
import orjson

from ..redact import redact_text
from .errors import NotRun, RequestRejected

#: Statuses a retry can fix: request timeout, conflict, too early, rate limited; every 5xx is retried too.
_RETRY_STATUS = frozenset({408, 409, 425, 429})
#: Most characters of a server's error body quoted in a message.
_QUOTE = 300
#: Connection pools per server (per event loop). For every request it assigns, httpcore's pool scans all its
#: connections once per idle one (quadratic in its size): with 256 requests in flight on one pool that was 75 % of
#: the client's CPU, on 32 pools still half. Spread over 128 pools, each holds a couple of connections.
SHARDS = 128
#: A refusal that names the model's context (vLLM, SGLang, llama.cpp, OpenAI wordings): this prompt is too long for
#: the served model, as the local backend's "prompt too long". Only this question cannot be asked.
_TOO_LONG = re.compile(r"context (length|size|window)|maximum model length|context_length_exceeded", re.IGNORECASE)


class Transient(Exception):
    """A failure a retry may fix. ``retry_after``: seconds the server asked to wait (HTTP 429/503), if any."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ServerClient:
    """Sends JSON requests (POST, and GET for lookups) to ``base_url`` over pooled keep-alive connections.

    The pools have no size cap of their own: together they grow to the number of requests in flight, which the
    caller bounds (``--threads``), and keep every connection alive, so no request of a steady run opens a socket.
    A proxy named by ``HTTP(S)_PROXY``/``ALL_PROXY`` is used unless ``NO_PROXY`` exempts the server, as with
    ``httpx.Client``.

    Args:
        base_url: The server's base URL, e.g. ``http://gpu-node:8000/v1``.
        api_key: Sent as a bearer token; servers without auth accept any. Credentials in the URL
            (``http://user:password@host/v1``) are sent as HTTP basic auth instead.
        timeout_s: Seconds to wait for connecting, for the reply, or between reply chunks.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float):
        self._args = (base_url, api_key, timeout_s)
        url = httpx.URL(base_url)
        if url.userinfo:  # user:password in the URL is HTTP basic auth, as httpx.Client sends it
            credentials = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
            authorization, url = f"Basic {credentials}", url.copy_with(userinfo=b"")
        else:
            authorization = f"Bearer {api_key or 'EMPTY'}"
        #: The server's URL without credentials: what messages may quote.
        self.base_url = str(url).rstrip("/")
        self.headers = {"Authorization": authorization, "Content-Type": "application/json"}
        self.extensions = {"timeout": httpx.Timeout(timeout_s).as_dict()}
        self._urls: dict[str, httpx.URL] = {}
        self._lock = threading.Lock()
        self._pid = 0
        self._ssl: ssl.SSLContext | None = None
        self._turn = itertools.count()
        self._thread = threading.local()
        self._sync: list[httpx.HTTPTransport | None] = [None] * SHARDS
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[httpx.AsyncHTTPTransport | None]] = (
            weakref.WeakKeyDictionary())

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled for a worker process, or deep-copied with a program: the same server, pools of its own.
        return ServerClient, self._args

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """The JSON reply to ``body`` at ``path`` (from a thread)."""
        return self._send(self._request(path, body))

    def get(self, path: str) -> Any:
        """The JSON reply to a GET of ``path`` (from a thread): for lookups such as ``/models``."""
        return self._send(self._request(path))

    def _send(self, request: httpx.Request) -> Any:
        try:
            response = self._thread_transport().handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.TransportError as e:  # timeouts, refused or dropped connections, protocol errors
            raise Transient(f"{type(e).__name__}: {e}") from e
        return _parse(request, response)

    async def apost(self, path: str, body: dict[str, Any]) -> Any:
        """The JSON reply to ``body`` at ``path`` (from a coroutine; the running loop's own pool)."""
        request = self._request(path, body)
        try:
            response = await self._loop_transport().handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TransportError as e:
            raise Transient(f"{type(e).__name__}: {e}") from e
        return _parse(request, response)

    def _request(self, path: str, body: dict[str, Any] | None = None) -> httpx.Request:
        """A POST of ``body`` to ``path``; a GET without one."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        if body is None:
            return httpx.Request("GET", url, headers=self.headers, extensions=self.extensions)
        return httpx.Request("POST", url, content=orjson.dumps(body), headers=self.headers,
                             extensions=self.extensions)

    # -- the pools ---------------------------------------------------------------------------------------------------
    def _thread_transport(self) -> httpx.HTTPTransport:
        # Each thread keeps to one pool, so a thread's consecutive requests reuse one kept-alive connection.
        shard = getattr(self._thread, "shard", None)
        if shard is None:
            shard = self._thread.shard = next(self._turn) % SHARDS
        transport = self._sync[shard]
        if transport is None or self._pid != os.getpid():
            with self._lock:
                self._forget_after_fork()
                transport = self._sync[shard] = self._sync[shard] or httpx.HTTPTransport(**self._settings())
        return transport

    def _loop_transport(self) -> httpx.AsyncHTTPTransport:
        # An asyncio pool belongs to the loop that opened its connections: each loop has its own. A task keeps to
        # one pool (a task's hash is stable), so its consecutive requests reuse one kept-alive connection.
        loop = asyncio.get_running_loop()
        shard = hash(asyncio.current_task()) % SHARDS
        with self._lock:
            self._forget_after_fork()
            pools = self._async.setdefault(loop, [None] * SHARDS)
            transport = pools[shard] = pools[shard] or httpx.AsyncHTTPTransport(**self._settings())
        return transport

    def _forget_after_fork(self) -> None:
        """A forked child must not write to its parent's sockets: it opens its own (called under the lock)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._sync = [None] * SHARDS
            self._async = weakref.WeakKeyDictionary()

    def _settings(self) -> dict[str, Any]:
        # Idle connections are dropped after 4 s: before uvicorn's (vLLM's) 5 s keep-alive timeout closes them
        # under a request being sent.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=4.0)
        return {"verify": self._ssl_context(), "limits": limits, "proxy": environment_proxy(self.base_url)}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self.base_url.startswith("https:"):
                self._ssl = httpx.create_ssl_context()  # loads the CA bundle: once per backend
            else:
                # Plain http never starts TLS (redirects are not followed), so no CA bundle is loaded; this empty
                # context only satisfies httpx, and it would fail any handshake rather than skip a check.
                self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return self._ssl

    def close(self) -> None:
        """Close the thread pool's connections (an asyncio pool is dropped with its loop)."""
        with self._lock:
            for transport in self._sync if self._pid == os.getpid() else ():
                if transport is not None:
                    transport.close()
            self._sync = [None] * SHARDS


def environment_proxy(base_url: str) -> str | None:
    """The proxy URL the environment names for ``base_url``, or None (none set, or ``NO_PROXY`` exempts it)."""
    proxies = urllib.request.getproxies_environment()
    url = httpx.URL(base_url)
    if not proxies or urllib.request.proxy_bypass_environment(url.host, proxies):
        return None
    return proxies.get(url.scheme) or proxies.get("all")


def _parse(request: httpx.Request, response: httpx.Response) -> Any:
    status = response.status_code
    if status in _RETRY_STATUS or status >= 500:
        raise Transient(f"HTTP {status}: {_quote(response)}", _retry_after(response))
    if status >= 400:
        said = _quote(response)
        if status in (400, 413, 422) and _TOO_LONG.search(response.text):
            raise NotRun(f"prompt too long for the served model (HTTP {status}: {said})")
        raise RequestRejected(f"{redact_text(str(request.url))} refused the request (HTTP {status}): {said}", status)
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as e:
        raise Transient(f"malformed reply (not JSON: {e}): {response.text[:_QUOTE]!r}") from e


def _quote(response: httpx.Response) -> str:
    """The start of a reply's body on one line: a proxy's HTML error page spans many, and messages are one line."""
    return " ".join(response.text[:_QUOTE].split())


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None  # absent, or an HTTP date (rare from inference servers): the backoff applies
