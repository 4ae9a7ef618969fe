"""Run a `MedicalQA`-like program over questions, many at a time, writing each result as it finishes.

DSPy's ``Evaluate`` keeps nothing when interrupted; this runner appends every finished question to the run folder,
so a re-run (or a crash, or a server that went away) loses only what was in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import dspy

from medjp_agent.data import Question
from medjp_agent.results import RunWriter
from medjp_agent.scoring import Extraction, QuestionResult


class RunInterrupted(RuntimeError):
    """The LM failed mid-run; finished questions are saved and a re-run resumes."""


def answer_question(program: dspy.Module, question: Question, lm: dspy.BaseLM | None = None) -> QuestionResult:
    """Ask one question and score it; a failed parse is scored wrong with its reason, never dropped."""
    start = time.perf_counter()
    with dspy.context(lm=lm or dspy.settings.lm, track_usage=True):
        pred = program(question=question.text, choices=list(question.choices))
    elapsed = time.perf_counter() - start
    usage = _usage(pred)
    answer = tuple(a for a in str(pred.answer or "").split(",") if a)
    extraction = Extraction(answer, reason=pred.get("parse_error"))
    return QuestionResult.scored(
        question, extraction, completion=pred.get("completion") or "", reasoning=pred.get("reasoning") or "",
        prompt_hash=pred.get("prompt_hash") or "", latency_s=round(elapsed, 4), lm_calls=int(pred.get("lm_calls") or 1),
        prompt_tokens=usage[0], completion_tokens=usage[1], generation_s=usage[2],
        samples=tuple(tuple(s) for s in pred.get("samples") or ()), score=pred.get("score"),
    )


def _usage(pred: dspy.Prediction) -> tuple[int, int, float]:
    """(prompt tokens, completion tokens, generation seconds); backends that report no time give 0."""
    usage = pred.get_lm_usage() or {}
    return (sum(int(u.get("prompt_tokens") or 0) for u in usage.values()),
            sum(int(u.get("completion_tokens") or 0) for u in usage.values()),
            round(sum(float(u.get("generation_s") or 0.0) for u in usage.values()), 4))


def run_questions(
    program: dspy.Module,
    questions: Sequence[Question],
    writer: RunWriter,
    *,
    lm: dspy.BaseLM | None = None,
    threads: int = 8,
    on_result: Callable[[QuestionResult], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[QuestionResult]:
    """Answer every question not already in ``writer``; returns all results of the run (old and new).

    Raises :class:`RunInterrupted` when the LM fails: what finished is saved, the rest is asked on the next run.
    ``should_stop`` lets a caller end early (a budget): pending questions are left for a later run.
    """
    todo = [q for q in questions if q.id not in writer.done_ids]
    lm = lm or dspy.settings.lm
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: dict[Future, Question] = {}
        queue = iter(todo)
        failure: BaseException | None = None

        def fill() -> None:
            while len(pending) < max(1, threads) and failure is None and not (should_stop and should_stop()):
                q = next(queue, None)
                if q is None:
                    return
                pending[pool.submit(answer_question, program, q, lm)] = q

        fill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                q = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:  # noqa: BLE001 - any LM failure ends the run cleanly, with results saved
                    failure = failure or e
                    failed_id = q.id
                    continue
                writer.write(result)
                if on_result:
                    on_result(result)
            fill()
    if failure is not None:
        saved = len(writer.done_ids)
        raise RunInterrupted(
            f"stopped at question {failed_id}: {type(failure).__name__}: {failure}. {saved} of {len(questions)} "
            f"questions are saved in {writer.dir}; re-run the same command to resume."
        ) from failure
    return writer.results
