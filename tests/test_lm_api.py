"""APILM against a real OpenAI-compatible HTTP server on 127.0.0.1 serving the tiny model, with injected faults."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from medjp_agent.data import SAMPLE_DIR, load_igakuqa
from medjp_agent.evaluate import RunInterrupted
from medjp_agent.lm import build_lm
from medjp_agent.lm.api import APILM, ServerUnavailable
from medjp_agent.lm.hf import HFLM
from medjp_agent.lm.options import RAW_PROMPT, LMOptions
from medjp_agent.runs import evaluate_run
from openai_server import OpenAIServer

#: The client timeout of the timeout test; the server hangs longer. Other tests wait long: on a busy machine even
#: the tiny model may take seconds, and a timed-out request would be retried behind the test's back.
SHORT_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> OpenAIServer:
    lm = HFLM.from_options(LMOptions(model=str(tiny_model), max_new_tokens=8, cache=False))
    with OpenAIServer(lm, "tiny", hang_s=SHORT_TIMEOUT_S + 1) as srv:
        yield srv
    lm.close()


def client(server: OpenAIServer, **kwargs) -> APILM:
    """A client with its own model name: DSPy's cache never answers for another test's requests."""
    settings = {"num_retries": 2, "backoff_s": 0.01, "timeout_s": 60.0, "max_tokens": 8, **kwargs}
    return APILM(f"tiny-{uuid.uuid4().hex[:8]}", server.url, **settings)


def raw(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text, "name": RAW_PROMPT}]


def test_chat_and_raw_prompts_reach_their_endpoints(server: OpenAIServer):
    api = client(server)
    start = len(server.requests)
    chat = api(messages=[{"role": "user", "content": "発熱の鑑別は？"}])
    text = api(messages=raw("### 指示：\n答えなさい。\n\n### 応答：\n"))
    (chat_path, chat_body), (text_path, text_body) = server.requests[start:]
    assert chat_path == "/v1/chat/completions" and chat_body["messages"][-1]["content"] == "発熱の鑑別は？"
    assert text_path == "/v1/completions" and text_body["prompt"] == "### 指示：\n答えなさい。\n\n### 応答：\n"
    assert len(chat) == len(text) == 1 and chat[0] and text[0]


def test_n_samples_are_one_request_and_repeats_come_from_dspy_cache(server: OpenAIServer):
    api = client(server)
    first = api(messages=raw("サンプル"), n=3, temperature=1.0)
    chat = api(messages=[{"role": "user", "content": "サンプル"}], n=3, temperature=1.0)
    assert len(first) == len(chat) == 3 and answered(server, api) == 2
    assert api(messages=raw("サンプル"), n=3, temperature=1.0) == first
    assert api(messages=[{"role": "user", "content": "サンプル"}], n=3, temperature=1.0) == chat
    assert answered(server, api) == 2
    api(messages=raw("サンプル"), n=3, temperature=1.0, cache=False)
    api(messages=[{"role": "user", "content": "サンプル"}], n=3, temperature=1.0, cache=False)
    assert answered(server, api) == 4


@pytest.mark.parametrize("fault, route", [("500", "chat"), ("500", "raw"), ("malformed", "chat"),
                                          ("malformed", "raw"), ("timeout", "chat")])
def test_transient_failures_are_retried(server: OpenAIServer, fault: str, route: str):
    api = client(server, timeout_s=SHORT_TIMEOUT_S, max_tokens=2)
    messages = [{"role": "user", "content": f"{fault} {route}"}] if route == "chat" else raw(f"{fault} {route}")
    server.inject(fault)
    assert len(api(messages=messages)) == 1


def test_a_server_that_keeps_failing_raises_a_clear_error(server: OpenAIServer):
    api = client(server)
    server.inject("500", "500", "500")
    with pytest.raises(ServerUnavailable, match=f"{server.url}.*failed 3 times"):
        api(messages=raw("失敗"))


def test_a_stopped_server_raises_a_clear_error(server: OpenAIServer):
    api = client(server)
    server.stop()
    try:
        with pytest.raises(ServerUnavailable, match=server.url):
            api(messages=raw("停止"))
    finally:
        server.start()
    assert len(api(messages=raw("再開"))) == 1


def test_options_build_an_api_client_and_refuse_local_model_flags(server: OpenAIServer):
    api = build_lm(LMOptions(model="served-name", api_base=server.url, max_new_tokens=5))
    assert isinstance(api, APILM)
    assert api.describe() == {"model": "served-name", "adapter": "", "backend": f"api {server.url}"}
    assert api.kwargs["max_tokens"] == 5
    with pytest.raises(ValueError, match="--lora-modules"):
        build_lm(LMOptions(model="x", api_base=server.url, adapters=("a",)))
    with pytest.raises(ValueError, match="--model"):
        build_lm(LMOptions(api_base=server.url))


@pytest.mark.slow
def test_an_outage_mid_run_saves_finished_questions_and_a_rerun_resumes(server: OpenAIServer, tmp_path: Path):
    questions = list(load_igakuqa(SAMPLE_DIR))[:8]
    api = client(server)
    out = tmp_path / "run"
    server.outage_after(3)
    try:
        with pytest.raises(RunInterrupted, match="re-run the same command to resume"):
            evaluate_run(questions, "plain-ja-direct", api, out=out, threads=2)
    finally:
        server.recover()
    saved = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert 1 <= len(saved) <= 3

    answered_before = answered(server, api)
    summary, _ = evaluate_run(questions, "plain-ja-direct", api, out=out, threads=2)
    ids = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(q.id for q in questions)  # every question once: no duplicates
    assert summary.n_questions == 8
    assert answered(server, api) - answered_before == 8 - len(saved)  # finished questions were not asked again


def answered(server: OpenAIServer, api: APILM) -> int:
    """Requests of this client that the server answered (requests of other tests may still be finishing)."""
    return sum(body.get("model") == api.model for _, body in server.requests)
