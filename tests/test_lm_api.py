"""APILM against a real OpenAI-compatible HTTP server on 127.0.0.1 serving the tiny model, with injected faults."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
import ssl
import threading
import uuid
from pathlib import Path

import dspy
import pytest
import typer
from typer.testing import CliRunner

from medjp_agent.cli.options import with_lm_options
from medjp_agent.data import SAMPLE_DIR, load_igakuqa
from medjp_agent.errors import LMError
from medjp_agent.evaluate import RunInterrupted
from medjp_agent.lm import build_lm
from medjp_agent.lm.api import APILM, ServerUnavailable
from medjp_agent.lm.errors import NotRun, RequestRejected
from medjp_agent.lm.finish import finish_summary
from medjp_agent.lm.hf import HFLM
from medjp_agent.lm.http import ServerClient, Transient, environment_proxy
from medjp_agent.lm.options import LMOptions
from medjp_agent.lm.prompts import raw_messages as raw
from medjp_agent.runs import evaluate_run
from openai_server import FixedReply, OpenAIServer

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


# -- empty replies, finish reasons, options, connections, async (issues 15 and 17) -----------------------------------
@pytest.fixture(scope="module")
def instant() -> OpenAIServer:
    """A server answering at once, without a model (for what does not depend on the text generated)."""
    with OpenAIServer(FixedReply("考察\n答え：a"), "instant", hang_s=SHORT_TIMEOUT_S + 1) as srv:
        yield srv


@pytest.fixture(scope="module")
def truncating() -> OpenAIServer:
    """An instant server whose every completion was cut off at the token limit."""
    with OpenAIServer(FixedReply("答え：", finish_reason="length"), "cut") as srv:
        yield srv


@pytest.mark.parametrize("fault", ["empty", "null", "no_choices"])
@pytest.mark.parametrize("route", ["chat", "raw"])
def test_empty_and_missing_completions_are_retried_and_only_the_answer_is_cached(instant: OpenAIServer, fault: str,
                                                                                route: str):
    api = client(instant)
    messages = [{"role": "user", "content": f"{fault} {route}"}] if route == "chat" else raw(f"{fault} {route}")
    instant.inject(fault)
    first = api(messages=messages)
    assert len(first) == 1 and first[0] and first[0] != "None"
    assert answered(instant, api) == 2  # the empty reply, then the retry
    assert api(messages=messages) == first and answered(instant, api) == 2  # the retry's answer came from the cache


def test_a_server_that_keeps_answering_empty_raises_not_run_and_caches_nothing(instant: OpenAIServer):
    api = client(instant)
    instant.inject("null", "empty", "no_choices")
    with pytest.raises(NotRun, match=f"{instant.url} returned no completion text 3 times") as caught:
        api(messages=raw("空の応答"))
    assert isinstance(caught.value, LMError) and not isinstance(caught.value, ServerUnavailable)
    assert "0 of the 1 completions" in caught.value.reason
    assert api(messages=raw("空の応答"))[0]  # the server recovered: asked again, not answered from the cache
    assert answered(instant, api) == 4


@pytest.mark.parametrize("route", ["chat", "raw"])
def test_no_text_because_the_token_limit_cut_it_off_is_the_models_answer_not_a_fault(route: str):
    with OpenAIServer(FixedReply("", finish_reason="length"), "thinker") as thinker:
        api = client(thinker)
        messages = [{"role": "user", "content": "考え中"}] if route == "chat" else raw("考え中")
        with dspy.track_usage() as usage:
            assert api(messages=messages) == [""]
        assert len(thinker.requests) == 1 and finish_summary(usage.get_total_tokens()) == ("length", True)


def test_a_refused_request_is_not_retried(instant: OpenAIServer):
    api = client(instant)
    before = len(instant.peers)
    instant.inject("400")
    with pytest.raises(RequestRejected, match="HTTP 400"):
        api(messages=raw("拒否"))
    assert len(instant.peers) == before + 1


def test_url_credentials_are_sent_as_basic_auth_and_never_quoted(instant: OpenAIServer):
    api = APILM("m", instant.url.replace("http://", "http://user:pa%40ss@"), "sk-unused", num_retries=0,
                cache=False)
    api(messages=raw("認証"))
    assert instant.authorizations[-1] == "Basic dXNlcjpwYUBzcw=="  # base64 of user:pa@ss
    assert APILM("m", instant.url, "sk-key", cache=False)(messages=raw("認証")) and \
        instant.authorizations[-1] == "Bearer sk-key"
    instant.inject("500")
    with pytest.raises(ServerUnavailable) as caught:
        api(messages=raw("認証"))
    assert instant.url in str(caught.value) and "pa%40ss" not in str(caught.value)


def test_a_client_can_be_deep_copied_and_pickled_and_the_copy_still_answers(instant: OpenAIServer):
    api = client(instant, cache=False)
    api(messages=raw("複製"))
    for twin in (copy.deepcopy(api), pickle.loads(pickle.dumps(api))):
        assert twin.http is not api.http and twin(messages=raw("複製")) == ["考察\n答え：a"]
    assert api.copy().http is api.http  # DSPy's runtime copy shares the pool


def test_rate_limiting_is_retried_after_the_wait_the_server_asks_for(instant: OpenAIServer):
    api = client(instant)
    instant.inject("429")
    assert api(messages=raw("混雑")) == ["考察\n答え：a"] and answered(instant, api) == 1
    assert api._retry_delay_or_raise(Transient("429", retry_after=3.0), attempt=0) == 3.0  # over the 0.01 s backoff
    assert api._retry_delay_or_raise(Transient("429", retry_after=1e6), attempt=0) == 60.0  # capped
    assert api._retry_delay_or_raise(Transient("500"), attempt=1) == 0.02


@pytest.mark.parametrize("env, proxy", [({}, None), ({"HTTP_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
                                        ({"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "gpu-node"}, None),
                                        ({"ALL_PROXY": "http://proxy:3128"}, "http://proxy:3128")])
def test_the_environment_proxy_is_used_unless_no_proxy_exempts_the_server(env: dict, proxy: str | None,
                                                                          monkeypatch: pytest.MonkeyPatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert environment_proxy("http://gpu-node:8000/v1") == proxy


def test_finish_reasons_reach_usage_and_truncation_is_flagged_also_from_the_cache(truncating: OpenAIServer):
    api = client(truncating)
    for _ in range(2):  # asked, then answered from the cache
        with dspy.track_usage() as usage:
            api(messages=raw("長い説明"), n=2, temperature=1.0)
        assert finish_summary(usage.get_total_tokens()) == ("length", True)
        assert usage.get_total_tokens()[api.model]["finish_reasons"] == {"length": 2}
    assert answered(truncating, api) == 1
    assert finish_summary({}) == ("", False)
    assert finish_summary({"a": {"finish_reasons": {"stop": 3}}, "b": {}}) == ("stop", False)


def test_accepted_replies_survive_a_restricted_pickle_disk_cache(truncating: OpenAIServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    from dspy.clients.cache import Cache

    disk_only = Cache(enable_disk_cache=True, enable_memory_cache=False, disk_cache_dir=str(tmp_path),
                      restrict_pickle=True)
    monkeypatch.setattr(dspy, "cache", disk_only)
    api = client(truncating)
    assert api(messages=raw("保存")) == api(messages=raw("保存")) == ["答え："]
    assert answered(truncating, api) == 1


def test_timeout_and_retries_options_configure_the_client(instant: OpenAIServer):
    api = build_lm(LMOptions(model="m", api_base=instant.url, timeout=SHORT_TIMEOUT_S, retries=0, max_new_tokens=2))
    assert isinstance(api, APILM) and api.timeout_s == SHORT_TIMEOUT_S and api.num_retries == 0
    instant.inject("timeout")
    with pytest.raises(ServerUnavailable, match="failed 1 times in a row .*Timeout"):
        api(messages=raw("待機"), cache=False)


def test_timeout_and_retries_flags_reach_the_lm_options():
    seen: list[LMOptions] = []
    app = typer.Typer()

    @app.command()
    @with_lm_options
    def show(*, lm: LMOptions) -> None:
        seen.append(lm)

    assert CliRunner().invoke(app, ["--api-timeout", "7.5", "--api-retries", "1"]).exit_code == 0
    assert (seen[-1].timeout, seen[-1].retries) == (7.5, 1)
    assert CliRunner().invoke(app, []).exit_code == 0
    assert (seen[-1].timeout, seen[-1].retries) == (600.0, 4)
    assert CliRunner().invoke(app, ["--api-retries", "-1"]).exit_code == 2


def test_a_thread_and_an_async_task_each_reuse_one_kept_alive_connection(instant: OpenAIServer):
    api = client(instant)
    start = len(instant.peers)
    for i in range(4):
        api(messages=raw(f"接続{i}"), cache=False)
    assert len(set(instant.peers[start:])) == 1

    async def in_turn() -> None:
        for i in range(4):
            await api.acall(messages=raw(f"非同期接続{i}"), cache=False)

    start = len(instant.peers)
    asyncio.run(in_turn())
    assert len(set(instant.peers[start:])) == 1


def test_no_ca_bundle_is_loaded_for_http_and_one_is_shared_for_https(instant: OpenAIServer,
                                                                    monkeypatch: pytest.MonkeyPatch):
    loads: list[object] = []
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *a, **k: loads.append(a) or real(*a, **k))
    http = ServerClient(instant.url, None, 60.0)
    http.post("/completions", {"model": "m", "prompt": "平文", "max_tokens": 1})
    assert loads == []
    # Nothing listens on port 9: each request fails to connect after its pool is built, the CA bundle loaded once.
    https = ServerClient("https://127.0.0.1:9/v1", None, 5.0)
    with pytest.raises(Transient):
        https.post("/completions", {})
    with pytest.raises(Transient):
        asyncio.run(https.apost("/completions", {}))
    assert len(loads) == 1


def test_async_calls_are_in_flight_together_on_one_event_loop_not_a_thread_each(instant: OpenAIServer):
    api = client(instant)
    n = 48
    executor = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default thread pool, where DSPy prepares a call

    def client_threads() -> int:  # the server's own per-connection threads do not count
        return sum("process_request" not in t.name for t in threading.enumerate())

    async def ask_all() -> tuple[list, int]:
        outs = await asyncio.gather(*(api.acall(messages=raw(f"非同期{i}"), cache=False) for i in range(n)))
        return outs, client_threads()

    before = client_threads()
    instant.inject(*["timeout"] * n)  # each reply takes hang_s: the requests overlap only if sent together
    instant.peak_in_flight = 0
    outs, during = asyncio.run(ask_all())
    assert len(outs) == n and all(o == ["考察\n答え：a"] for o in outs) and answered(instant, api) == n
    assert instant.peak_in_flight > executor  # more in flight than a thread per call could carry
    assert during - before <= executor


def test_a_question_the_server_keeps_answering_empty_is_recorded_not_run_and_the_run_goes_on(
        instant: OpenAIServer, tmp_path: Path):
    questions = list(load_igakuqa(SAMPLE_DIR))[:3]
    api = client(instant)
    instant.inject("null", "empty", "no_choices")  # every attempt at the first question (threads=1: in order)
    _, out = evaluate_run(questions, "plain-ja-direct", api, out=tmp_path / "run", threads=1)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [q.id for q in questions]
    assert "no completion text 3 times" in rows[0]["not_run"] and rows[0]["completion"] == ""
    assert all(r["not_run"] == "" and r["completion"] == "考察\n答え：a" for r in rows[1:])
    assert all(r["finish_reason"] == "stop" and not r["truncated"] for r in rows[1:])
    assert answered(instant, api) == 3 + 2


def test_a_truncated_answer_is_flagged_in_the_results_file(truncating: OpenAIServer, tmp_path: Path):
    _, out = evaluate_run(list(load_igakuqa(SAMPLE_DIR))[:1], "plain-ja-direct", client(truncating),
                          out=tmp_path / "run", threads=1)
    row = json.loads((out / "results.jsonl").read_text(encoding="utf-8"))
    assert row["truncated"] and row["finish_reason"] == "length" and row["not_run"] == ""
