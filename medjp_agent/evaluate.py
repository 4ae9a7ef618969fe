"""Where a question is asked: :func:`evaluate` sends questions to an LM, many at a time, and hands each result to
observers as it finishes.

It is the only place that does: `medjp eval`, a search's dev trials, the held-out test evaluation and `medjp
optimize` all call it. What happens to a result is an observer's business: the run-folder
writer (:class:`~medjp_agent.results.RunWriter`), the progress bar (:class:`~medjp_agent.views.RunProgress`), a
search trial's Optuna reporter (report and prune) and the live search view. An observer that wants the run to end
early (a pruned trial, a spent budget) says so through ``should_stop``, which is asked before every question.

Questions are asked from a pool of ``threads`` threads, or, for a server backend, as tasks on one asyncio event
loop through DSPy's async path (``acall``): then ``threads`` bounds the requests in flight, not OS threads, so
hundreds can be in flight to a vLLM cluster. Both ways share the scheduling and the scoring; only how the program
is called differs.

LM calls are counted with a DSPy callback (its public ``BaseCallback`` seam, which DSPy also runs around ``acall``)
attached to the LMs a question is asked with, so a result's ``lm_calls`` holds every call made while answering it,
Medprompt's one-off self-generated chains of thought included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Protocol

import dspy
from dspy.utils.callback import BaseCallback

from medjp_agent.data import LABELS, Question
from medjp_agent.errors import LMError, RunInterrupted
from medjp_agent.lm.errors import NotRun
from medjp_agent.lm.finish import finish_summary
from medjp_agent.scoring import Extraction, QuestionResult

__all__ = ["CallMeter", "Observer", "RunInterrupted", "aanswer_question", "answer_question", "counting_calls",
           "evaluate", "scored"]

#: Threads of the async path's default executor, where DSPy prepares each LM call (a quick, CPU-only step).
_PREPARE_THREADS = 4


class Observer(Protocol):
    """Receives every result as it finishes (in the thread that called :func:`evaluate`, one at a time)."""

    def on_result(self, result: QuestionResult) -> None: ...

    def should_stop(self) -> bool:
        """Asked before each question is sent: True ends the evaluation (questions in flight still finish)."""
        ...


class CallMeter(BaseCallback):
    """Counts successful LM calls (retried failures are not calls); thread-safe, shareable between questions.

    :func:`counting_calls` makes it count; it is also a DSPy callback, for ``dspy.context(callbacks=[meter])``.
    """

    def __init__(self, on_call: Callable[[], Any] | None = None):
        self.calls = 0
        self._lock = threading.Lock()
        self._on_call = on_call

    def count(self) -> None:
        with self._lock:
            self.calls += 1
        if self._on_call:
            self._on_call()

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        if exception is None:
            self.count()


#: The ``dspy.context`` key holding the meters that count the calls made within it.
_METERS = "medjp_call_meters"


class _MeterDispatch(BaseCallback):
    """Attached to an LM (an instance callback): adds each of its successful calls to the meters of the
    ``dspy.context`` the call runs in.

    A global DSPy callback would count the same calls, but while one is set DSPy inspects the arguments of every
    module, adapter and LM call it wraps: a third of a cached evaluation's time (64 questions, 16 threads: 0.088 s
    against 0.056 s). An instance callback costs only the LM's own calls, and DSPy's copies of an LM keep it.
    """

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        if exception is None:
            for meter in dspy.settings.get(_METERS) or ():
                meter.count()


_DISPATCH = _MeterDispatch()


@contextmanager
def counting_calls(*meters: CallMeter, lms: Iterable[Any] = ()) -> Iterator[None]:
    """Count by ``meters`` every call of ``lms`` (and of DSPy's copies of them) made within, in this thread and in
    DSPy's own worker threads; a meter that an enclosing context already counts with is not counted twice."""
    for lm in lms:
        callbacks = getattr(lm, "callbacks", None)
        if callbacks is not None and not any(isinstance(c, _MeterDispatch) for c in callbacks):
            callbacks.append(_DISPATCH)
    current = tuple(dspy.settings.get(_METERS) or ())
    added = tuple(m for m in dict.fromkeys(meters) if all(m is not c for c in current))
    with dspy.context(**{_METERS: current + added}):
        yield


@dataclasses.dataclass
class _Asked:
    """What is known of a question's asking besides the prediction: its own call count and wall time."""

    meter: CallMeter
    elapsed_s: float = 0.0


@contextmanager
def _asking(program: dspy.Module, lm: dspy.BaseLM | None, meter: CallMeter | None) -> Iterator[_Asked]:
    """Around one question's program call, sync or awaited: its LM, usage tracking, call meters and clock."""
    asked = _Asked(CallMeter())
    start = time.perf_counter()
    lm = lm or dspy.settings.lm
    lms = [lm, *(p.lm for p in program.predictors() if p.lm is not None)]
    with dspy.context(lm=lm, track_usage=True), \
            counting_calls(asked.meter, *([meter] if meter else []), lms=lms):
        yield asked
    asked.elapsed_s = time.perf_counter() - start


def answer_question(program: dspy.Module, question: Question, lm: dspy.BaseLM | None = None,
                    meter: CallMeter | None = None) -> QuestionResult:
    """Ask one question and score it (:func:`scored`); a failed parse is scored wrong with its reason."""
    with _asking(program, lm, meter) as asked:
        pred = program(question=question.text, choices=list(question.choices))
    return scored(question, pred, asked.elapsed_s, asked.meter.calls)


async def aanswer_question(program: dspy.Module, question: Question, lm: dspy.BaseLM | None = None,
                           meter: CallMeter | None = None) -> QuestionResult:
    """:func:`answer_question` through the program's async path (``acall``), from an event loop."""
    with _asking(program, lm, meter) as asked:
        pred = await program.acall(question=question.text, choices=list(question.choices))
    return scored(question, pred, asked.elapsed_s, asked.meter.calls)


def scored(question: Question, pred: dspy.Prediction, latency_s: float, lm_calls: int) -> QuestionResult:
    """The result of one prediction that took ``latency_s`` and ``lm_calls`` metered calls; a failed parse is scored wrong with its reason, never dropped.

    ``pred`` holds an ``extraction`` (:class:`~medjp_agent.signatures.MedicalQA`), or ``option_logprobs`` (a
    program that scores the options instead of generating); the result's ``score`` is then the gold options' mean
    log-probability, else 1.0/0.0 for right/wrong.
    """
    extraction: Extraction = pred.get("extraction") or Extraction(reason="the program returned no extraction")
    usage = _usage(pred)
    finish_reason, truncated = finish_summary(pred.get_lm_usage() or {})
    result = QuestionResult.scored(
        question, extraction, completion=pred.get("completion") or "", reasoning=pred.get("reasoning") or "",
        prompt_hash=pred.get("prompt_hash") or "", prompt=pred.get("prompt"), latency_s=round(latency_s, 4),
        finish_reason=finish_reason, truncated=truncated,
        # Calls through DSPy's LM interface are metered; a program that scores options reports its own.
        lm_calls=max(lm_calls, int(pred.get("lm_calls") or 0)), prompt_tokens=usage[0],
        completion_tokens=usage[1], generation_s=usage[2], samples=tuple(tuple(s) for s in pred.get("samples") or ()),
    )
    logprobs = pred.get("option_logprobs")
    if logprobs is not None:
        gold = [LABELS.index(a) for a in question.answers]
        return _with_score(result, sum(logprobs[i] for i in gold) / len(gold))
    return _with_score(result, float(result.correct))


def not_run(question: Question, reason: str) -> QuestionResult:
    """The record of a question that could not be asked: no answer, and so not a wrong one."""
    return QuestionResult.scored(question, Extraction(reason=f"not run: {reason}"), not_run=reason)


def _with_score(result: QuestionResult, score: float) -> QuestionResult:
    return dataclasses.replace(result, score=score)


def _usage(pred: dspy.Prediction) -> tuple[int, int, float]:
    """(prompt tokens, completion tokens, generation seconds); backends that report no time give 0."""
    usage = pred.get_lm_usage() or {}
    return (sum(int(u.get("prompt_tokens") or 0) for u in usage.values()),
            sum(int(u.get("completion_tokens") or 0) for u in usage.values()),
            round(sum(float(u.get("generation_s") or 0.0) for u in usage.values()), 4))


def evaluate(program: dspy.Module, questions: Sequence[Question], lm: dspy.BaseLM | None = None, *,
             threads: int = 8, observers: Sequence[Observer] = (), meter: CallMeter | None = None,
             asynchronous: bool | None = None) -> list[QuestionResult]:
    """Ask ``questions`` in order, ``threads`` at a time; returns the results in the order they finished.

    Before each question every observer's ``should_stop`` is asked; once one says stop, nothing more is sent and
    the questions in flight finish (their results still reach the observers, one at a time, in this thread).
    ``meter`` also counts the calls (a budget shared by many evaluations).

    A question the backend cannot ask (:class:`~medjp_agent.lm.errors.NotRun`: a prompt longer than the context,
    a server that keeps answering empty) is recorded as *not run* and the others go on. Raises
    :class:`RunInterrupted` when the LM fails otherwise (what finished has reached the observers); any other
    exception is a bug and propagates as it is.

    ``asynchronous``: ask on one asyncio event loop in this thread (``threads`` is then the number of questions in
    flight, not of OS threads) instead of a pool of ``threads`` threads. By default a server backend
    (:class:`~medjp_agent.lm.api.APILM`) with a program that has an async path is asked so, as long as this thread
    runs no event loop already; a local model keeps the threads its batcher gathers calls from.
    """
    lm = lm or dspy.settings.lm
    run = _Run(questions, observers, max(1, threads))
    use_async = _asks_async(program, lm) if asynchronous is None else asynchronous
    if use_async:
        asyncio.run(_evaluate_async(run, program, lm, meter))
    else:
        _evaluate_threads(run, program, lm, meter)
    return run.outcome()


def _asks_async(program: dspy.Module, lm: dspy.BaseLM) -> bool:
    from medjp_agent.lm.api import APILM

    return isinstance(lm, APILM) and callable(getattr(program, "aforward", None)) and not _loop_running()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Run:
    """The bookkeeping both ways of asking share: which question goes next, and where a finished one goes."""

    def __init__(self, questions: Sequence[Question], observers: Sequence[Observer], width: int):
        self.width = width
        self.results: list[QuestionResult] = []
        self._queue = iter(questions)
        self._observers = observers
        self._failure: tuple[Question, LMError] | None = None

    def next_question(self, in_flight: int) -> Question | None:
        """The question to send now, or None: a slot is not free, an observer says stop, the LM failed, or none
        is left."""
        if self._failure is not None or in_flight >= self.width or any(o.should_stop() for o in self._observers):
            return None
        return next(self._queue, None)

    def finished(self, question: Question, outcome: Callable[[], QuestionResult]) -> None:
        """Record what asking ``question`` gave (``outcome`` returns its result or raises why there is none)."""
        try:
            result = outcome()
        except NotRun as e:  # this question only: recorded, and the others go on
            result = not_run(question, e.reason)
        except LMError as e:
            self._failure = self._failure or (question, e)
            return
        self.results.append(result)
        for observer in self._observers:
            observer.on_result(result)

    def outcome(self) -> list[QuestionResult]:
        if self._failure is not None:
            question, error = self._failure
            raise RunInterrupted(f"stopped at question {question.id}: {error}") from error
        return self.results


#: Thread pools of finished evaluations, for the next ones to reuse: a search runs hundreds, and starting 16 threads
#: while the first questions hold the GIL took ~15 ms, a sixth of a cached 64-question evaluation.
_idle_pools: list[tuple[int, ThreadPoolExecutor]] = []
#: As many as evaluations run at once in one process, usually one; the largest are kept.
_MAX_IDLE_POOLS = 4
_pools_lock = threading.Lock()


@contextmanager
def _thread_pool(width: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of at least ``width`` threads, an idle one if any; given back for reuse unless the caller raised."""
    with _pools_lock:
        found = min((entry for entry in _idle_pools if entry[0] >= width), key=lambda entry: entry[0], default=None)
        if found is not None:
            _idle_pools.remove(found)
    size, pool = found or (width, ThreadPoolExecutor(max_workers=width, thread_name_prefix="medjp-eval"))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    with _pools_lock:
        _idle_pools.append((size, pool))
        _idle_pools.sort(key=lambda entry: entry[0], reverse=True)
        surplus = _idle_pools[_MAX_IDLE_POOLS:]
        del _idle_pools[_MAX_IDLE_POOLS:]
    for _, extra in surplus:
        extra.shutdown(wait=False)


def _evaluate_threads(run: _Run, program: dspy.Module, lm: dspy.BaseLM, meter: CallMeter | None) -> None:
    with _thread_pool(run.width) as pool:
        running: dict[Future[QuestionResult], Question] = {}
        while True:
            while (question := run.next_question(len(running))) is not None:
                running[pool.submit(answer_question, program, question, lm, meter)] = question
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run.finished(running.pop(future), future.result)


async def _evaluate_async(run: _Run, program: dspy.Module, lm: dspy.BaseLM, meter: CallMeter | None) -> None:
    # DSPy's acall prepares each LM call in the loop's default executor: a few threads serve any number in flight.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=_PREPARE_THREADS))
    running: dict[asyncio.Task[QuestionResult], Question] = {}
    while True:
        while (question := run.next_question(len(running))) is not None:
            running[asyncio.create_task(aanswer_question(program, question, lm, meter))] = question
        if not running:
            return
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            run.finished(running.pop(task), task.result)
