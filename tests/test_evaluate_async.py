"""The async path of the evaluation core: on a server backend ``--threads N`` is N requests in flight on one event
loop, not N OS threads, and everything else holds as on the thread path (results, observers, pruning, not-run
questions, interruptions, call counts)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import uuid
import zlib

import dspy
import pytest

from medjp_agent.data import LABELS, SAMPLE_DIR, Question, load_igakuqa
from medjp_agent.evaluate import CallMeter, RunInterrupted, evaluate
from medjp_agent.lm.api import APILM
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.scoring import QuestionResult
from medjp_agent.signatures import MedicalQA, PromptFormat
from openai_server import FixedReply, OpenAIServer

BANK = list(load_igakuqa(SAMPLE_DIR))
DIRECT = PromptFormat(name="direct", reasoning="direct", shots=0)
#: Self-consistency votes over a shuffled ensemble: the calls whose order and mapping must match the thread path.
VOTING = PromptFormat(name="voting", shots=0, ensemble=3, self_consistency=2, shuffle_choices=True)
DELAY_S = 0.3


def questions(n: int) -> list[Question]:
    """``n`` questions with distinct texts (the bundled sample, numbered once it runs out)."""
    out = []
    for i in range(n):
        q = BANK[i % len(BANK)]
        out.append(q if i < len(BANK) else dataclasses.replace(q, id=f"{q.id}-{i}", text=f"{q.text}（{i}）"))
    return out


def client_threads() -> int:
    """OS threads of this process but the stub server's own (one per connection it serves) and the idle pools that
    earlier thread-path evaluations left for reuse."""
    return sum("process_request" not in t.name and not t.name.startswith("medjp-eval") for t in threading.enumerate())


def api(server: OpenAIServer, **kwargs) -> APILM:
    """A client with its own model name: DSPy's cache never answers for another test's requests."""
    settings = {"num_retries": 2, "backoff_s": 0.01, "timeout_s": 60.0, "max_tokens": 32, **kwargs}
    return APILM(f"async-{uuid.uuid4().hex[:8]}", server.url, **settings)


def comparable(results: list[QuestionResult]) -> list[QuestionResult]:
    """Results in question order without their wall time, the one field two runs never share."""
    return sorted((dataclasses.replace(r, latency_s=0.0) for r in results), key=lambda r: r.id)


class Watcher:
    """An observer that records what it saw, in which thread, with how many client threads alive."""

    def __init__(self, stop_after: int | None = None):
        self.seen: list[str] = []
        self.asked = 0
        self.stop_after = stop_after
        self.thread_ids: set[int] = set()
        self.peak_threads = 0

    def _sample(self) -> None:
        self.thread_ids.add(threading.get_ident())
        self.peak_threads = max(self.peak_threads, client_threads())

    def on_result(self, result: QuestionResult) -> None:
        self._sample()
        self.seen.append(result.id)

    def should_stop(self) -> bool:
        self._sample()
        self.asked += 1
        return self.stop_after is not None and len(self.seen) >= self.stop_after


@pytest.fixture(scope="module")
def server() -> OpenAIServer:
    with OpenAIServer(FixedReply("考察\n答え：a"), "stub", hang_s=DELAY_S) as srv:
        yield srv


def test_threads_256_on_a_server_backend_are_requests_in_flight_not_os_threads(server: OpenAIServer):
    asked = questions(300)
    server.inject(*["timeout"] * len(asked))  # each reply waits DELAY_S: requests overlap only if sent together
    server.peak_in_flight = 0
    watcher = Watcher()
    results = evaluate(MedicalQA(DIRECT), asked, api(server), threads=256, observers=[watcher])
    assert sorted(r.id for r in results) == sorted(q.id for q in asked) == sorted(watcher.seen)
    assert all(r.completion == "考察\n答え：a" and not r.not_run and r.lm_calls == 1 for r in results)
    assert server.peak_in_flight >= 100
    assert watcher.peak_threads < 16  # the thread path would hold 256 workers here
    assert watcher.thread_ids == {threading.get_ident()}  # observers run in the caller's thread


def test_the_async_path_gives_the_thread_paths_results_and_requests(server: OpenAIServer):
    asked = [q for q in BANK if q.choices][:12]

    def run(asynchronous: bool) -> tuple[list[QuestionResult], list[str], int]:
        lm, meter = api(server), CallMeter()
        before = len(server.requests)
        results = evaluate(MedicalQA(VOTING), asked, lm, threads=8, meter=meter, asynchronous=asynchronous)
        bodies = sorted(json.dumps({**body, "model": ""}, ensure_ascii=False) for _, body in server.requests[before:])
        return results, bodies, meter.calls

    async_results, async_bodies, async_calls = run(asynchronous=True)
    thread_results, thread_bodies, thread_calls = run(asynchronous=False)
    assert comparable(async_results) == comparable(thread_results)
    assert async_bodies == thread_bodies and len(async_bodies) == 3 * len(asked)  # the same prompts, one per vote
    # DSPy's callbacks meter awaited calls as they meter threaded ones.
    assert async_calls == thread_calls == sum(r.lm_calls for r in async_results) == 3 * len(asked)
    assert all(len(r.samples) == 6 for r in async_results)


@pytest.mark.parametrize("threads", [1, 4])
def test_should_stop_is_asked_before_each_question_is_sent(server: OpenAIServer, threads: int):
    asked = questions(20)
    before = len(server.requests)
    watcher = Watcher(stop_after=5)
    results = evaluate(MedicalQA(DIRECT), asked, api(server), threads=threads, observers=[watcher])
    sent = len(server.requests) - before
    # Nothing is sent once stop is said; what was in flight then still finishes and is observed.
    assert [r.id for r in results] == watcher.seen and sent == len(results)
    assert 5 <= len(results) <= 5 + threads - 1
    if threads == 1:
        assert watcher.seen == [q.id for q in asked[:5]]


def test_a_question_the_server_keeps_answering_empty_is_recorded_not_run(server: OpenAIServer):
    asked = [q for q in BANK if q.choices][:3]
    server.inject("null", "empty", "no_choices")  # every attempt at the first question (threads=1: in order)
    results = evaluate(MedicalQA(DIRECT), asked, api(server), threads=1)
    assert [r.id for r in results] == [q.id for q in asked]
    assert "no completion text 3 times" in results[0].not_run and results[0].answer == ()
    assert all(not r.not_run and r.completion == "考察\n答え：a" for r in results[1:])


def test_a_failing_server_interrupts_after_what_was_in_flight_finished(server: OpenAIServer):
    asked = questions(12)
    watcher = Watcher()
    server.outage_after(4)
    try:
        with pytest.raises(RunInterrupted, match="stopped at question .*failed 2 times in a row"):
            evaluate(MedicalQA(DIRECT), asked, api(server, num_retries=1), threads=4, observers=[watcher])
    finally:
        server.recover()
    assert len(watcher.seen) == 4  # the four admitted answers reached the observers; nothing after the failure


def test_from_inside_a_running_event_loop_the_thread_path_is_taken(server: OpenAIServer):
    asked = [q for q in BANK if q.choices][:3]

    async def inside() -> list[QuestionResult]:
        return evaluate(MedicalQA(DIRECT), asked, api(server), threads=2)

    assert sorted(r.id for r in asyncio.run(inside())) == sorted(q.id for q in asked)


# -- with a scripted LM: the module's async path ----------------------------------------------------------------------
def scripted_reply(prompt: str, kwargs: dict) -> str:
    """A deterministic answer that differs per prompt and sample, so votes, shuffles and ties all matter."""
    label = LABELS[zlib.crc32(f"{prompt}:{kwargs['sample']}".encode()) % 5]
    return f"推論\n答え：{label}"


def test_acall_mirrors_the_modules_forward_with_votes_shuffles_and_self_generated_demos():
    pool = [{"question": f"問{i}", "choices": ["x", "y", "z", "v", "w"], "reasoning": "解説", "answer": "a"}
            for i in range(6)]
    fmt = PromptFormat(template="plain", instruction_position="preamble", shots=2, self_generated_cot=True,
                       ensemble=3, self_consistency=2, shuffle_choices=True)
    asked = [q for q in BANK if q.choices][:5]

    def answers(use_async: bool) -> tuple[list[dict], list[str]]:
        lm, qa = ScriptedLM(scripted_reply), MedicalQA(fmt, demo_pool=pool)
        with dspy.context(lm=lm):
            preds = [asyncio.run(qa.acall(question=q.text, choices=q.choices)) if use_async
                     else qa(question=q.text, choices=q.choices) for q in asked]
        return [p.toDict() for p in preds], [c["prompt"] for c in lm.calls]

    async_preds, async_prompts = answers(use_async=True)
    sync_preds, sync_prompts = answers(use_async=False)
    assert async_preds == sync_preds and async_prompts == sync_prompts
    assert all(p["lm_calls"] == 3 and len(p["samples"]) == 6 for p in async_preds)


def test_a_scripted_lm_on_the_async_path_holds_many_calls_on_few_threads():
    # Each call lasts long enough that all 64 are held at once even on a loaded machine (at 0.05 s, a CI run
    # beside another job saw the first call end before the 64th started).
    lm, watcher = ScriptedLM(scripted_reply, latency_s=0.5), Watcher()
    asked = questions(120)
    results = evaluate(MedicalQA(DIRECT), asked, lm, threads=64, observers=[watcher], asynchronous=True)
    assert lm.peak_in_flight == 64 and watcher.peak_threads < 16
    expected = evaluate(MedicalQA(DIRECT), asked, ScriptedLM(scripted_reply), threads=4, asynchronous=False)
    assert comparable(results) == comparable(expected)
