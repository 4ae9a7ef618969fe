"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests, answering from a local HFLM, with failure injection.

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions`` (what vLLM serves) from a stdlib
``ThreadingHTTPServer`` in a background thread. Failures are injected on demand:

- :meth:`OpenAIServer.inject` queues faults for the next requests: ``"timeout"`` (answers only after
  ``hang_s``), ``"500"`` (an internal error) or ``"malformed"`` (a 200 whose body is not JSON);
- :meth:`OpenAIServer.outage_after` admits ``n`` more requests, then answers 503 to everything until
  :meth:`OpenAIServer.recover`;
- :meth:`OpenAIServer.stop` closes the socket (connection refused), :meth:`OpenAIServer.start` reopens the port.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medjp_agent.lm.completions import openai_response
from medjp_agent.lm.options import RAW_PROMPT

_PARAMS = ("max_tokens", "temperature", "top_p", "n", "stop")


class OpenAIServer:
    """Serves ``lm`` (an :class:`HFLM`) as model ``name``; use as a context manager or call start/stop.

    ``requests`` lists every answered request as ``(path, JSON body)``.
    """

    def __init__(self, lm: Any, name: str, hang_s: float = 2.0):
        self.lm = lm
        self.name = name
        self.hang_s = hang_s
        self.port = 0
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._faults: deque[str] = deque()
        self._outage_after: int | None = None
        self._admitted = 0
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "OpenAIServer":
        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- failure injection -------------------------------------------------------------------------------------------
    def inject(self, *faults: str) -> None:
        with self._lock:
            self._faults.extend(faults)

    def outage_after(self, n: int) -> None:
        with self._lock:
            self._outage_after = self._admitted + n

    def recover(self) -> None:
        with self._lock:
            self._outage_after = None

    def _next_fault(self) -> str | None:
        """The fault for a request that just arrived, or None to answer it (counted as admitted)."""
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._outage_after is not None and self._admitted >= self._outage_after:
                return "503"
            self._admitted += 1
            return None

    # -- answering ---------------------------------------------------------------------------------------------------
    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        params = {k: body[k] for k in _PARAMS if body.get(k) is not None}
        if body.get("max_completion_tokens") is not None:  # newer OpenAI clients send this name
            params["max_tokens"] = body["max_completion_tokens"]
        if path.endswith("/chat/completions"):
            messages, kind = body["messages"], "chat"
        else:
            prompt = body["prompt"][0] if isinstance(body["prompt"], list) else body["prompt"]
            messages, kind = [{"role": "user", "content": prompt, "name": RAW_PROMPT}], "text"
        generation = self.lm.complete(messages=messages, **params)
        with self._lock:
            self.requests.append((path, body))
            number = len(self.requests)
        return {**openai_response(generation, self.name, kind), "id": f"cmpl-{number}", "created": int(time.time())}


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not self.path.endswith(("/chat/completions", "/completions")):
                return self._send(404, b'{"error": {"message": "not found"}}')
            fault = server._next_fault()
            if fault == "timeout":
                time.sleep(server.hang_s)
            elif fault in ("500", "503"):
                return self._send(int(fault), b'{"error": {"message": "injected failure", "type": "server_error"}}')
            elif fault == "malformed":
                return self._send(200, b'{"id": "cmpl-x", "choices": [{"text": ')
            self._send(200, json.dumps(server.answer(self.path, body), ensure_ascii=False).encode())

        def _send(self, status: int, payload: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (an injected timeout)

    return Handler
