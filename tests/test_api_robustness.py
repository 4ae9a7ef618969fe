"""APILM against the loopback OpenAI-compatible server (tests/openai_server.py) answering the way real servers and
proxies fail: a prompt over the model's context, a server that ignores ``n``, a proxy's HTML error page, a model
name the server does not serve and an API URL without its path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server import FixedReply, OpenAIServer

from medjp_agent.data import SAMPLE_DIR, load_igakuqa
from medjp_agent.lm.api import APILM, ServerUnavailable
from medjp_agent.lm.errors import NotRun, RequestRejected
from medjp_agent.lm.prompts import raw_messages as raw
from medjp_agent.runs import evaluate_run

#: vLLM's refusal of a prompt longer than ``--max-model-len`` (vllm/renderers/params.py), as its server sends it.
TOO_LONG = {"object": "error", "message": "This model's maximum context length is 64 tokens. However, your prompt "
            "contains 300 input tokens, which exceeds this limit even without any output tokens. Please reduce the "
            "length of the input prompt.", "type": "BadRequestError", "param": "input_tokens", "code": 400}
#: nginx's error page in front of a server that is down.
BAD_GATEWAY = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
               "</center>\r\n</body>\r\n</html>\r\n")


@pytest.fixture()
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(FixedReply("考察\n答え：a"), "stub") as srv:
        yield srv


def client(server: OpenAIServer, **kwargs: Any) -> APILM:
    settings = {"num_retries": 2, "backoff_s": 0.01, "timeout_s": 60.0, "max_tokens": 8, "cache": False, **kwargs}
    return APILM(server.name, server.url, **settings)


def test_a_prompt_over_the_models_context_is_not_run_for_that_question_only(server: OpenAIServer,
                                                                             tmp_path: Path):
    questions = list(load_igakuqa(SAMPLE_DIR))[:3]
    server.reply(400, json.dumps(TOO_LONG))  # the first question (threads=1)
    _, out = evaluate_run(questions, "plain-ja-direct", client(server), out=tmp_path / "run", threads=1)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [q.id for q in questions]
    assert rows[0]["not_run"].startswith("prompt too long") and "maximum context length is 64" in rows[0]["not_run"]
    assert all(r["not_run"] == "" and r["completion"] == "考察\n答え：a" for r in rows[1:])
    assert len(server.peers) == 3  # refused once, not retried


def test_an_other_refusal_still_stops_with_the_url(server: OpenAIServer):
    server.reply(400, '{"object": "error", "message": "temperature must be >= 0"}')
    with pytest.raises(RequestRejected, match=f"{server.url}/completions refused the request .*temperature"):
        client(server)(messages=raw("拒否"))


def test_a_server_that_ignores_n_is_a_clear_error_at_once_not_empty_replies(server: OpenAIServer):
    server.lm = FixedReply("考察\n答え：a", ignores_n=True)
    api = client(server)
    with pytest.raises(RequestRejected, match="returned 1 completions where n=3 were asked: it ignores n"):
        api(messages=raw("多数決"), n=3, temperature=1.0)
    assert len(server.peers) == 1  # the same request would get the same one completion: not retried
    assert api(messages=raw("一つ")) == ["考察\n答え：a"]  # n=1 is served


def test_a_proxys_html_error_page_is_quoted_on_one_line(server: OpenAIServer):
    for _ in range(3):
        server.reply(502, BAD_GATEWAY, "text/html")
    with pytest.raises(ServerUnavailable) as caught:
        client(server)(messages=raw("中継"))
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert "HTTP 502: <html> <head><title>502 Bad Gateway</title></head>" in message


def test_a_refused_prompt_is_not_run_on_the_async_path_too(server: OpenAIServer):
    server.reply(400, json.dumps(TOO_LONG))
    with pytest.raises(NotRun, match="prompt too long for the served model"):
        asyncio.run(client(server).acall(messages=raw("長すぎる")))


#: vLLM's reply to a model name it does not serve.
NO_SUCH_MODEL = {"object": "error", "message": "The model `wrong` does not exist.", "type": "NotFoundError",
                 "param": None, "code": 404}


@pytest.mark.parametrize("served", [["swallow-70b", "medical-lora"], None], ids=["models-listed", "no-models-path"])
def test_a_404_says_which_models_the_server_serves_or_that_the_url_is_wrong(server: OpenAIServer, served):
    server.served = served
    server.reply(404, json.dumps(NO_SUCH_MODEL))
    api = client(server)
    with pytest.raises(RequestRejected) as caught:
        api(messages=raw("誰"))
    if served:
        assert str(caught.value) == (f"the server at {server.url} serves no model named {api.model!r}; it serves "
                                     "swallow-70b, medical-lora: pass one as --model")
    else:
        assert str(caught.value).endswith(f"GET {server.url}/models is not found either: is --api-base the API's "
                                          "URL (an OpenAI-compatible server's usually ends in /v1)?")
        assert "refused the request (HTTP 404)" in str(caught.value)


def test_a_404_for_a_served_model_keeps_the_servers_own_words(server: OpenAIServer):
    api = client(server)
    server.served = [api.model]
    server.reply(404, '{"detail": "route gone"}')
    with pytest.raises(RequestRejected, match=r"refused the request \(HTTP 404\): \{\"detail\": \"route gone\"\}$"):
        api(messages=raw("誰"))


def test_a_404_on_the_async_path_names_the_served_models_too(server: OpenAIServer):
    server.served = ["swallow-70b"]
    server.reply(404, json.dumps(NO_SUCH_MODEL))
    with pytest.raises(RequestRejected, match="it serves swallow-70b: pass one as --model"):
        asyncio.run(client(server).acall(messages=raw("誰")))
