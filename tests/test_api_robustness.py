"""APILM against a loopback server that answers the way real servers and proxies fail: a prompt over the model's
context, a server that ignores ``n``, a proxy's HTML error page."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from medjp_agent.data import SAMPLE_DIR, load_igakuqa
from medjp_agent.lm.api import APILM, ServerUnavailable
from medjp_agent.lm.errors import NotRun, RequestRejected
from medjp_agent.lm.options import RAW_PROMPT
from medjp_agent.runs import evaluate_run

#: vLLM's refusal of a prompt longer than ``--max-model-len`` (vllm/renderers/params.py), as its server sends it.
TOO_LONG = {"object": "error", "message": "This model's maximum context length is 64 tokens. However, your prompt "
            "contains 300 input tokens, which exceeds this limit even without any output tokens. Please reduce the "
            "length of the input prompt.", "type": "BadRequestError", "param": "input_tokens", "code": 400}
#: nginx's error page in front of a server that is down.
BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
               "</center>\r\n</body>\r\n</html>\r\n")


class ScriptedServer:
    """Answers ``/v1/chat/completions`` and ``/v1/completions`` with ``text``; ``script`` queues replies
    ``(status, body, content type)`` for the next requests. ``one_choice``: ignore ``n`` (one completion always).
    ``GET /v1/models`` lists ``served``, or is not found when it is None."""

    def __init__(self, text: str = "考察\n答え：a", one_choice: bool = False):
        self.text = text
        self.one_choice = one_choice
        self.script: deque[tuple[int, str, str]] = deque()
        self.bodies: list[dict[str, Any]] = []
        self.served: list[str] | None = None
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def reply(self, body: dict[str, Any]) -> tuple[int, str, str]:
        self.bodies.append(body)
        if self.script:
            return self.script.popleft()
        n = 1 if self.one_choice else int(body.get("n") or 1)
        chat = "messages" in body
        answer = {"message": {"role": "assistant", "content": self.text}} if chat else {"text": self.text}
        choices = [{"index": i, "finish_reason": "stop", **answer} for i in range(n)]
        return 200, json.dumps({"model": body["model"], "choices": choices}, ensure_ascii=False), "application/json"


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.answer(*server.reply(json.loads(self.rfile.read(int(self.headers["Content-Length"])))))

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/v1/models" or server.served is None:
                self.answer(404, '{"detail": "Not Found"}', "application/json")
                return
            listed = {"object": "list", "data": [{"id": name, "object": "model"} for name in server.served]}
            self.answer(200, json.dumps(listed), "application/json")

        def answer(self, status: int, body: str, kind: str) -> None:
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture()
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    threading.Thread(target=server._http.serve_forever, daemon=True).start()
    yield server
    server._http.shutdown()
    server._http.server_close()


def client(server: ScriptedServer, **kwargs: Any) -> APILM:
    settings = {"num_retries": 2, "backoff_s": 0.01, "timeout_s": 60.0, "max_tokens": 8, "cache": False, **kwargs}
    return APILM(f"m-{uuid.uuid4().hex[:8]}", server.url, **settings)


def raw(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text, "name": RAW_PROMPT}]


def test_a_prompt_over_the_models_context_is_not_run_for_that_question_only(scripted: ScriptedServer,
                                                                             tmp_path: Path):
    questions = list(load_igakuqa(SAMPLE_DIR))[:3]
    scripted.script.append((400, json.dumps(TOO_LONG), "application/json"))  # the first question (threads=1)
    _, out = evaluate_run(questions, "plain-ja-direct", client(scripted), out=tmp_path / "run", threads=1)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [q.id for q in questions]
    assert rows[0]["not_run"].startswith("prompt too long") and "maximum context length is 64" in rows[0]["not_run"]
    assert all(r["not_run"] == "" and r["completion"] == "考察\n答え：a" for r in rows[1:])
    assert len(scripted.bodies) == 3  # refused once, not retried


def test_an_other_refusal_still_stops_with_the_url(scripted: ScriptedServer):
    scripted.script.append((400, '{"object": "error", "message": "temperature must be >= 0"}', "application/json"))
    with pytest.raises(RequestRejected, match=f"{scripted.url}/completions refused the request .*temperature"):
        client(scripted)(messages=raw("拒否"))


def test_a_server_that_ignores_n_is_a_clear_error_at_once_not_empty_replies(scripted: ScriptedServer):
    scripted.one_choice = True
    api = client(scripted)
    with pytest.raises(RequestRejected, match="returned 1 completions where n=3 were asked: it ignores n"):
        api(messages=raw("多数決"), n=3, temperature=1.0)
    assert len(scripted.bodies) == 1  # the same request would get the same one completion: not retried
    assert api(messages=raw("一つ")) == ["考察\n答え：a"]  # n=1 is served


def test_a_proxys_html_error_page_is_quoted_on_one_line(scripted: ScriptedServer):
    scripted.script.extend([(502, BAD_GATEWAY, "text/html")] * 3)
    with pytest.raises(ServerUnavailable) as caught:
        client(scripted)(messages=raw("中継"))
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert "HTTP 502: <html> <head><title>502 Bad Gateway</title></head>" in message


def test_a_refused_prompt_is_not_run_on_the_async_path_too(scripted: ScriptedServer):
    scripted.script.append((400, json.dumps(TOO_LONG), "application/json"))
    with pytest.raises(NotRun, match="prompt too long for the served model"):
        asyncio.run(client(scripted).acall(messages=raw("長すぎる")))


#: vLLM's reply to a model name it does not serve.
NO_SUCH_MODEL = {"object": "error", "message": "The model `wrong` does not exist.", "type": "NotFoundError",
                 "param": None, "code": 404}


@pytest.mark.parametrize("served", [["swallow-70b", "medical-lora"], None], ids=["models-listed", "no-models-path"])
def test_a_404_says_which_models_the_server_serves_or_that_the_url_is_wrong(scripted: ScriptedServer, served):
    scripted.served = served
    scripted.script.append((404, json.dumps(NO_SUCH_MODEL), "application/json"))
    api = client(scripted)
    with pytest.raises(RequestRejected) as caught:
        api(messages=raw("誰"))
    if served:
        assert str(caught.value) == (f"the server at {scripted.url} serves no model named {api.model!r}; it serves "
                                     "swallow-70b, medical-lora: pass one as --model")
    else:
        assert str(caught.value).endswith(f"GET {scripted.url}/models is not found either: is --api-base the API's "
                                          "URL (an OpenAI-compatible server's usually ends in /v1)?")
        assert "refused the request (HTTP 404)" in str(caught.value)


def test_a_404_for_a_served_model_keeps_the_servers_own_words(scripted: ScriptedServer):
    api = client(scripted)
    scripted.served = [api.model]
    scripted.script.append((404, '{"detail": "route gone"}', "application/json"))
    with pytest.raises(RequestRejected, match=r"refused the request \(HTTP 404\): \{\"detail\": \"route gone\"\}$"):
        api(messages=raw("誰"))


def test_a_404_on_the_async_path_names_the_served_models_too(scripted: ScriptedServer):
    scripted.served = ["swallow-70b"]
    scripted.script.append((404, json.dumps(NO_SUCH_MODEL), "application/json"))
    with pytest.raises(RequestRejected, match="it serves swallow-70b: pass one as --model"):
        asyncio.run(client(scripted).acall(messages=raw("誰")))
