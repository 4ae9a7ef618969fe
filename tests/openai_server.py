"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks, with failure injection.

It serves ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models`` (what vLLM serves; the
models listed are ``served``, by default its own name, and None answers 404) over HTTP/1.1 keep-alive
from a stdlib ``ThreadingHTTPServer`` in a background thread, answering from ``lm.complete(messages=..., **params)``
(an :class:`HFLM`, or :class:`FixedReply` for an instant stub). Failures are injected on demand:

- :meth:`OpenAIServer.inject` queues faults for the next requests: ``"timeout"`` (answers only after
  ``hang_s``), ``"500"`` (an internal error), ``"429"`` (rate limited), ``"400"`` (a refused request),
  ``"malformed"`` (a 200 whose body is not JSON), ``"empty"`` / ``"null"`` (a 200 whose completion text is
  ``""`` / ``null``), ``"no_choices"`` (``choices: []``), ``"drop"`` (the connection closes with no reply),
  ``"truncated"`` (each completion cut to half its text, ``finish_reason: "length"``); :meth:`OpenAIServer.reply`
  queues a reply of its own (status, body, content type), as a real server or a proxy in front of it words one;
- :meth:`OpenAIServer.outage_after` admits ``n`` more requests, then answers 503 to everything until
  :meth:`OpenAIServer.recover`;
- :meth:`OpenAIServer.stop` closes the socket and every open connection (connection refused),
  :meth:`OpenAIServer.start` reopens the port.

Run as a script it serves a fixed reply instantly and prints its URL (the API benchmark's stub):
``python tests/openai_server.py --reply "答え：a"``.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medjp_agent.lm.completions import Generation, openai_response
from medjp_agent.lm.prompts import raw_messages

_PARAMS = ("max_tokens", "temperature", "top_p", "n", "stop")
#: Faults answered with a well-formed 200 whose completions are missing: what they do to the response body.
_EMPTY_FAULTS = {"empty": "", "null": None, "no_choices": "drop"}


class FixedReply:
    """An instant "model": every completion is ``text``, ended for ``finish_reason``; ``ignores_n``: one completion
    whatever ``n`` asks, as some servers do."""

    def __init__(self, text: str, finish_reason: str = "stop", ignores_n: bool = False):
        self.text = text
        self.finish_reason = finish_reason
        self.ignores_n = ignores_n

    def complete(self, messages: list[dict[str, Any]], n: int = 1, **_params: Any) -> Generation:
        n = 1 if self.ignores_n else n
        return Generation(texts=(self.text,) * n, finish_reasons=(self.finish_reason,) * n,
                          prompt_tokens=sum(len(str(m["content"])) for m in messages), completion_tokens=n)


class OpenAIServer:
    """Serves ``lm`` as model ``name``; use as a context manager or call start/stop.

    ``requests`` lists every answered request as ``(path, JSON body)``; ``peers`` the client address of each
    request received (a keep-alive client reuses one) and ``authorizations`` its ``Authorization`` header;
    ``peak_in_flight`` the most requests it held at once (a test may reset it).
    """

    def __init__(self, lm: Any, name: str, hang_s: float = 2.0):
        self.lm = lm
        self.name = name
        self.hang_s = hang_s
        self.port = 0
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.peers: list[tuple[str, int]] = []
        self.authorizations: list[str] = []
        self.peak_in_flight = 0
        self.served: list[str] | None = [name]
        self._in_flight = 0
        self._faults: deque[str | tuple[int, str, str]] = deque()
        self._outage_after: int | None = None
        self._admitted = 0
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "OpenAIServer":
        self._http = _Listener(("127.0.0.1", self.port), _handler(self))
        self.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        with self._lock:
            for conn in self._connections:  # keep-alive connections would otherwise outlive the server
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- failure injection -------------------------------------------------------------------------------------------
    def inject(self, *faults: str) -> None:
        with self._lock:
            self._faults.extend(faults)

    def reply(self, status: int, body: str, content_type: str = "application/json") -> None:
        """Queue ``(status, body, content type)`` as the reply to a request, after the faults already queued."""
        with self._lock:
            self._faults.append((status, body, content_type))

    def outage_after(self, n: int) -> None:
        with self._lock:
            self._outage_after = self._admitted + n

    def recover(self) -> None:
        with self._lock:
            self._outage_after = None

    def _next_fault(self, peer: tuple[str, int], authorization: str) -> str | tuple[int, str, str] | None:
        """The fault for a request that just arrived, or None to answer it (counted as admitted)."""
        with self._lock:
            self.peers.append(peer)
            self.authorizations.append(authorization)
            if self._faults:
                return self._faults.popleft()
            if self._outage_after is not None and self._admitted >= self._outage_after:
                return "503"
            self._admitted += 1
            return None

    def _count(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    # -- answering ---------------------------------------------------------------------------------------------------
    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        params = {k: body[k] for k in _PARAMS if body.get(k) is not None}
        if body.get("max_completion_tokens") is not None:  # newer OpenAI clients send this name
            params["max_tokens"] = body["max_completion_tokens"]
        if path.endswith("/chat/completions"):
            messages, kind = body["messages"], "chat"
        else:
            prompt = body["prompt"][0] if isinstance(body["prompt"], list) else body["prompt"]
            messages, kind = raw_messages(prompt), "text"
        generation = self.lm.complete(messages=messages, **params)
        with self._lock:
            self.requests.append((path, body))
            number = len(self.requests)
        return {**openai_response(generation, self.name, kind), "id": f"cmpl-{number}", "created": int(time.time())}


class _Listener(ThreadingHTTPServer):
    # socketserver's backlog of 5 overflows when dozens of clients connect at once (an async burst), and the
    # kernel then resets connections a real server (uvicorn: 2048) would have queued.
    request_queue_size = 1024
    daemon_threads = True


def emptied(reply: dict[str, Any], fault: str) -> dict[str, Any]:
    """``reply`` with its completions made empty, ``null`` or removed, as the fault asks."""
    text = _EMPTY_FAULTS[fault]
    if text == "drop":
        return {**reply, "choices": []}
    key = "message" if reply["object"] == "chat.completion" else "text"
    return {**reply, "choices": [{**c, key: {**c[key], "content": text} if key == "message" else text}
                                 for c in reply["choices"]]}


def truncated(reply: dict[str, Any]) -> dict[str, Any]:
    """``reply`` as if cut off at ``max_tokens``: each completion's first half, ended for ``length``."""
    def cut(choice: dict[str, Any]) -> dict[str, Any]:
        key = "message" if "message" in choice else "text"
        text = (choice[key]["content"] if key == "message" else choice[key]) or ""
        half = text[: len(text) // 2]
        cut_text = {**choice[key], "content": half} if key == "message" else half
        return {**choice, key: cut_text, "finish_reason": "length"}

    return {**reply, "choices": [cut(c) for c in reply["choices"]]}


class _Handler(BaseHTTPRequestHandler):
    """One connection of an :class:`OpenAIServer` (``owner``; :func:`_handler` makes a subclass per server)."""

    owner: OpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM serves
    wbufsize = 1 << 16  # headers and body leave in one write: no Nagle/delayed-ACK stall on keep-alive

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection, True)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            pass  # the client gave up (an injected timeout) or stop() closed the connection

    def finish(self) -> None:
        self.owner._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.owner._count(+1)
        try:
            self._post()
        finally:
            self.owner._count(-1)

    def _post(self) -> None:
        server = self.owner
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self.path.endswith(("/chat/completions", "/completions")):
            return self._send(404, b'{"error": {"message": "not found"}}')
        fault = server._next_fault(self.client_address, self.headers.get("Authorization", ""))
        if isinstance(fault, tuple):
            status, text, content_type = fault
            return self._send(status, text.encode(), content_type)
        if fault == "timeout":
            time.sleep(server.hang_s)
        elif fault in ("400", "429", "500", "503"):
            return self._send(int(fault), b'{"error": {"message": "injected failure", "type": "server_error"}}')
        elif fault == "malformed":
            return self._send(200, b'{"id": "cmpl-x", "choices": [{"text": ')
        elif fault == "drop":
            self.close_connection = True
            return None
        reply = server.answer(self.path, body)
        if fault in _EMPTY_FAULTS:
            reply = emptied(reply, fault)
        elif fault == "truncated":
            reply = truncated(reply)
        self._send(200, json.dumps(reply, ensure_ascii=False).encode())

    def do_GET(self) -> None:  # noqa: N802
        served = self.owner.served
        if not self.path.endswith("/models") or served is None:
            return self._send(404, b'{"detail": "Not Found"}')
        listed = {"object": "list", "data": [{"id": name, "object": "model"} for name in served]}
        self._send(200, json.dumps(listed).encode())

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True  # the client gave up (an injected timeout) or the server stopped


def _handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"owner": server})


def main() -> None:
    """Serve a fixed reply until killed; print the URL on the first line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reply", required=True, help="The text of every completion.")
    parser.add_argument("--name", default="stub", help="The served model name.")
    args = parser.parse_args()
    server = OpenAIServer(FixedReply(args.reply), args.name).start()
    print(server.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
