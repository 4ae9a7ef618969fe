"""One Optuna trial = one prompt format answering the dev questions, reported question by question.

Each question's score is reported with ``step`` = the question's index in the dev list, so the WilcoxonPruner pairs
the same question across trials; the *order* of asking is shuffled per trial, so an early stop never favours the
questions that happen to come first. When the pruner says stop, the trial returns the mean score of what it
answered instead of raising ``TrialPruned``: the trial then stays ``COMPLETE`` with an informative (if noisy)
value, and TPE/GP learn that this region of the space is poor, which they cannot from a pruned trial.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from medjp_agent.data import Question
from medjp_agent.evaluate import RunInterrupted
from medjp_agent.scoring import QuestionResult

from .scores import AskFn, QuestionScore
from .space import FormatSpace

if TYPE_CHECKING:
    import optuna

#: User attr of an enqueued trial that evaluates a named reference format (the paper's); never pruned.
REFERENCE = "reference"


class TrialInterrupted(RuntimeError):
    """The search was asked to stop while this trial ran; the trial is failed and queued again."""


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial found; stored in its user attrs, so it reads back from any storage.

    ``value`` is the mean score over the answered questions (the Optuna objective); ``accuracy`` the share answered
    right. A pruned trial answered fewer than ``n_questions``; ``lm_calls_saved`` estimates the calls its stop saved
    (the unanswered questions times this trial's calls per question).
    """

    number: int
    value: float
    accuracy: float
    answered: int
    n_questions: int
    pruned: bool
    lm_calls: int
    lm_calls_saved: int
    format: dict[str, Any]
    reference: str = ""
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return str(self.format.get("name") or f"trial-{self.number}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def user_attrs(self) -> dict[str, Any]:
        """What a finished trial adds to its user attrs (``format`` is set when the trial starts)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("number", "value", "reference", "format")}

    @classmethod
    def from_trial(cls, trial: "optuna.trial.FrozenTrial") -> "TrialOutcome | None":
        """The outcome of a finished trial of a format search; None for a trial that holds none."""
        attrs = trial.user_attrs
        if trial.value is None or "answered" not in attrs:
            return None
        names = {f.name for f in dataclasses.fields(cls)} - {"number", "value", "reference"}
        return cls(number=trial.number, value=float(trial.value), reference=str(attrs.get(REFERENCE) or ""),
                   **{k: attrs[k] for k in names if k in attrs})


class SearchObserver(Protocol):
    """Receives progress as it happens (the live TUI, or a log)."""

    def question_done(self, trial_number: int, name: str, answered: int, total: int, mean: float) -> None: ...

    def trial_done(self, outcome: TrialOutcome) -> None: ...


@dataclass
class FormatObjective:
    """The Optuna objective of a format search.

    Args:
        questions: The dev questions (their order defines the ``step`` ids reported to Optuna).
        space: Where formats come from.
        score: How a question is answered and scored (:mod:`medjp_agent.optimizers.scores`).
        threads: Questions in flight at once (a local backend batches them); pruning is checked as each finishes.
        seed: Seed of the per-trial question order.
        observer: Progress receiver.
        should_stop: Polled between questions; when true the trial raises :class:`TrialInterrupted`.
    """

    questions: Sequence[Question]
    space: FormatSpace
    score: QuestionScore
    threads: int = 8
    seed: int = 0
    observer: SearchObserver | None = None
    should_stop: Callable[[], bool] | None = None

    def __call__(self, trial: "optuna.Trial") -> float:
        start = time.perf_counter()
        reference = str(trial.user_attrs.get(REFERENCE) or "")
        fmt = self.space.sample(trial)
        fmt = fmt.replace(name=reference) if reference else fmt
        trial.set_user_attr("format", fmt.to_dict())
        results, pruned = self._answer(trial, self.score.prepare(fmt), fmt.name, prune=not reference)
        calls = sum(r.lm_calls for r in results)
        answered = len(results)
        outcome = TrialOutcome(
            number=trial.number, value=sum(float(r.score or 0.0) for r in results) / answered,
            accuracy=sum(r.correct for r in results) / answered, answered=answered,
            n_questions=len(self.questions), pruned=pruned, lm_calls=calls,
            lm_calls_saved=round((len(self.questions) - answered) * calls / answered) if pruned else 0,
            format=fmt.to_dict(), reference=reference, seconds=round(time.perf_counter() - start, 3),
        )
        for key, value in outcome.user_attrs().items():
            trial.set_user_attr(key, value)
        if self.observer:
            self.observer.trial_done(outcome)
        return outcome.value

    def order(self, trial_number: int) -> list[int]:
        """This trial's order of asking: a seeded shuffle of the dev indices."""
        order = list(range(len(self.questions)))
        random.Random(f"{self.seed}:{trial_number}").shuffle(order)
        return order

    def _answer(self, trial: "optuna.Trial", ask: AskFn, name: str, prune: bool) -> tuple[list[QuestionResult], bool]:
        """Ask questions in this trial's order, ``threads`` at a time, until done or pruned.

        Questions already in flight when the pruner says stop are still counted: their LM calls are spent.
        """
        queue = iter(self.order(trial.number))
        results: list[QuestionResult] = []
        pruned = False
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            running: dict[Future[QuestionResult], int] = {}
            while True:
                while not pruned and len(running) < max(1, self.threads):
                    index = next(queue, None)
                    if index is None:
                        break
                    running[pool.submit(ask, self.questions[index])] = index
                if not running:
                    return results, pruned
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    try:
                        results.append(future.result())
                    except Exception as e:  # the LM failed: the trial is re-queued and the search stops
                        raise RunInterrupted(f"trial {trial.number}, question {self.questions[index].id}: "
                                             f"{type(e).__name__}: {e}") from e
                    trial.report(float(results[-1].score or 0.0), step=index)
                    pruned = pruned or (prune and trial.should_prune())
                if self.should_stop and self.should_stop():
                    raise TrialInterrupted(f"trial {trial.number} stopped after {len(results)} questions")
                if self.observer:
                    mean = sum(float(r.score or 0.0) for r in results) / len(results)
                    self.observer.question_done(trial.number, name, len(results), len(self.questions), mean)
