"""Where a trial is pruned: one Optuna trial = one prompt format answering the dev questions through
:func:`medjp_agent.evaluate.evaluate`, with a :class:`TrialReporter` observing every result.

Each question's score is reported with ``step`` = the question's index in the dev list, so the WilcoxonPruner pairs
the same question across trials; the *order* of asking is shuffled per trial, so an early stop never favours the
questions that happen to come first. A pruned trial ends in Optuna's ``PRUNED`` state (so it can never become
``study.best_trial``, the trial the pruner compares against) with the mean score of exactly the questions it had
answered when the pruner stopped it; answers still in flight then are spent LM calls, but not part of its value.
TPE learns from pruned trials too: they are the "worse" group that tells it where not to look.

A trial whose params equal another trial's is not evaluated again (:class:`DuplicateTrial`): it copies a finished
trial's outcome, or makes way for a fresh sample while the other is still running or waiting.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from optuna.trial import TrialState

from medjp_agent.data import Question
from medjp_agent.evaluate import CallMeter, evaluate
from medjp_agent.runs import EvalConfig, RunInfo, run_eval
from medjp_agent.scoring import QuestionResult
from medjp_agent.signatures import PromptFormat

from .scores import ScoreKind, make_program
from .space import FormatSpace

if TYPE_CHECKING:
    import dspy
    import optuna

#: User attr of an enqueued trial that evaluates a named reference format (the paper's); never pruned.
REFERENCE = "reference"
#: User attr of a trial whose params repeat trial N's.
DUPLICATE_OF = "duplicate_of"
TRIALS_DIR = "trials"
_PENDING = (TrialState.RUNNING, TrialState.WAITING)


class TrialInterrupted(RuntimeError):
    """The search was asked to stop while this trial ran; the trial is failed and queued again."""


class BudgetSpent(RuntimeError):
    """The LM-call budget ran out in the middle of this trial; it is failed (its calls recorded) and queued again."""

    def __init__(self, lm_calls: int):
        super().__init__(f"the LM-call budget ran out after {lm_calls} calls of this trial")
        self.lm_calls = lm_calls


class DuplicateTrial(RuntimeError):
    """The trial's params equal those of a trial still running or waiting: sample another instead."""

    def __init__(self, number: int):
        super().__init__(f"same params as trial {number}, which is still running or waiting")
        self.number = number


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial found; stored in its user attrs, so it reads back from any storage.

    ``value`` is the mean score over the answered questions (the Optuna objective); ``accuracy`` the share answered
    right. A pruned trial answered fewer than ``n_questions``; ``lm_calls_saved`` estimates the calls its stop saved
    (the unanswered questions times this trial's calls per question). ``duplicate_of`` names the trial whose
    outcome a repeated format copied (it cost no LM calls).
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
    duplicate_of: int | None = None

    @property
    def name(self) -> str:
        return str(self.format.get("name") or f"trial-{self.number}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def user_attrs(self) -> dict[str, Any]:
        """What a finished trial adds to its user attrs (``format`` is set when the trial starts)."""
        skip = ("number", "value", "reference", "format", DUPLICATE_OF)
        attrs = {k: v for k, v in self.to_dict().items() if k not in skip}
        return {**attrs, "partial_value": self.value, **({DUPLICATE_OF: self.duplicate_of}
                                                           if self.duplicate_of is not None else {})}

    @classmethod
    def from_trial(cls, trial: "optuna.trial.FrozenTrial") -> "TrialOutcome | None":
        """The outcome of a finished trial of a format search; None for a trial that holds none."""
        attrs = trial.user_attrs
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or "answered" not in attrs:
            return None
        names = {f.name for f in dataclasses.fields(cls)} - {"number", "value", "reference", "pruned"}
        value = attrs.get("partial_value", trial.value)
        return cls(number=trial.number, value=float(value), reference=str(attrs.get(REFERENCE) or ""),
                   pruned=trial.state == TrialState.PRUNED, **{k: attrs[k] for k in names if k in attrs})


class SearchObserver(Protocol):
    """Receives progress as it happens (the live TUI, or a log)."""

    def search_started(self, study: str, storage: str, previous: Sequence[TrialOutcome], n_dev: int) -> None: ...

    def question_done(self, trial_number: int, name: str, answered: int, total: int, mean: float) -> None: ...

    def trial_done(self, outcome: TrialOutcome) -> None: ...


class TrialReporter:
    """An observer of :func:`evaluate`: reports each score to the trial (``step`` = the question's dev index) and
    asks the pruner. Results arriving after the pruner said stop are kept out of the trial's value."""

    def __init__(self, trial: "optuna.Trial", steps: Mapping[str, int], prune: bool,
                 stop: Callable[[], bool] = lambda: False):
        self.trial, self.steps, self.prune, self._stop = trial, steps, prune, stop
        self.kept: list[QuestionResult] = []
        self.late: list[QuestionResult] = []
        self.pruned = False

    def on_result(self, result: QuestionResult) -> None:
        if self.pruned or result.not_run:  # a question not asked is no evidence about the format
            self.late.append(result)
            return
        self.kept.append(result)
        self.trial.report(float(result.score or 0.0), step=self.steps[result.id])
        self.pruned = self.prune and self.trial.should_prune()

    def should_stop(self) -> bool:
        return self.pruned or self._stop()

    @property
    def mean(self) -> float:
        return sum(float(r.score or 0.0) for r in self.kept) / max(1, len(self.kept))


@dataclass
class LiveTrial:
    """An observer of :func:`evaluate` that forwards a trial's running mean to a :class:`SearchObserver`."""

    observer: SearchObserver
    reporter: TrialReporter
    number: int
    name: str
    total: int

    def on_result(self, result: QuestionResult) -> None:
        self.observer.question_done(self.number, self.name, len(self.reporter.kept), self.total, self.reporter.mean)

    def should_stop(self) -> bool:
        return False


@dataclass
class FormatObjective:
    """The objective of a format search: samples a format on a trial and evaluates it on the dev questions.

    Args:
        questions: The dev questions (their order defines the ``step`` ids reported to Optuna).
        space: Where formats come from.
        lm: The LM answering.
        score: ``correct`` (generation accuracy of the format as it will be run) or ``logprob`` (:mod:`.scores`).
        demo_pool: Demos for few-shot formats.
        threads: Questions in flight at once (a local backend batches them); pruning is checked as each finishes.
        seed: Seed of the per-trial question order and of demo selection.
        observer: Progress receiver.
        out: When set, every trial writes an ordinary run folder ``<out>/trials/<number>``.
        info: What those run folders' manifests record.
        meter: Counts LM calls into the study's budget.
        stop_reason: Asked before each question: ``"interrupted"`` or ``"max_lm_calls"`` ends the trial.
    """

    questions: Sequence[Question]
    space: FormatSpace
    lm: "dspy.BaseLM"
    score: ScoreKind = "correct"
    demo_pool: Sequence[dict[str, Any]] | None = None
    threads: int = 8
    seed: int = 0
    observer: SearchObserver | None = None
    out: Path | None = None
    info: RunInfo = RunInfo(kind="search-trial")
    meter: CallMeter | None = None
    stop_reason: Callable[[], str | None] = lambda: None
    _steps: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._steps = {q.id: i for i, q in enumerate(self.questions)}

    def __call__(self, trial: "optuna.Trial") -> TrialOutcome:
        outcome = self._run(trial)
        if self.observer:
            self.observer.trial_done(outcome)
        return outcome

    def _run(self, trial: "optuna.Trial") -> TrialOutcome:
        start = time.perf_counter()
        reference = str(trial.user_attrs.get(REFERENCE) or "")
        fmt = self.space.sample(trial)
        fmt = fmt.replace(name=reference) if reference else fmt
        trial.set_user_attr("format", fmt.to_dict())
        copied = copy_duplicate(trial)
        if copied is not None:
            return dataclasses.replace(copied, number=trial.number, reference=reference, format=fmt.to_dict(),
                                       lm_calls=0, lm_calls_saved=0, seconds=0.0)
        reporter = TrialReporter(trial, self._steps, prune=not reference, stop=lambda: self.stop_reason() is not None)
        results = self._evaluate(trial, fmt, reporter)
        calls = sum(r.lm_calls for r in results)
        if not reporter.pruned and len(results) < len(self.questions):
            if self.stop_reason() == "max_lm_calls":
                raise BudgetSpent(calls)
            raise TrialInterrupted(f"trial {trial.number} stopped after {len(results)} questions")
        kept = reporter.kept
        return TrialOutcome(
            number=trial.number, value=reporter.mean, accuracy=sum(r.correct for r in kept) / max(1, len(kept)),
            answered=len(kept), n_questions=len(self.questions), pruned=reporter.pruned, lm_calls=calls,
            lm_calls_saved=round((len(self.questions) - len(results)) * calls / len(results)) if reporter.pruned else 0,
            format=fmt.to_dict(), reference=reference, seconds=round(time.perf_counter() - start, 3),
        )

    def order(self, trial_number: int) -> list[int]:
        """This trial's order of asking: a seeded shuffle of the dev indices."""
        order = list(range(len(self.questions)))
        random.Random(f"{self.seed}:{trial_number}").shuffle(order)
        return order

    def _evaluate(self, trial: "optuna.Trial", fmt: PromptFormat, reporter: TrialReporter) -> list[QuestionResult]:
        program = make_program(self.score, fmt, self.demo_pool, self.seed)
        questions = [self.questions[i] for i in self.order(trial.number)]
        observers: list[Any] = [reporter]
        if self.observer is not None:
            observers.append(LiveTrial(self.observer, reporter, trial.number, fmt.name, len(questions)))
        if self.out is None:
            evaluate(program, questions, self.lm, threads=self.threads, observers=observers, meter=self.meter)
        else:
            info = dataclasses.replace(self.info, extra={**self.info.extra, "trial": trial.number})
            run_eval(EvalConfig(questions, program, self.lm, self.out / TRIALS_DIR / str(trial.number),
                                threads=self.threads, info=info, observers=observers, meter=self.meter))
        return [*reporter.kept, *reporter.late]


def copy_duplicate(trial: "optuna.Trial") -> TrialOutcome | None:
    """When a finished trial had these params: copy its reports and outcome onto ``trial`` (which is then told
    the same state and value). Raises :class:`DuplicateTrial` when a running or waiting trial has them."""
    same = [t for t in trial.study.get_trials(deepcopy=False, states=(*_PENDING, TrialState.COMPLETE,
                                                                      TrialState.PRUNED))
            if t.number != trial.number and t.params == trial.params]
    finished = [t for t in same if t.state not in _PENDING and TrialOutcome.from_trial(t) is not None]
    if not finished:
        if same:
            raise DuplicateTrial(same[0].number)
        return None
    original = finished[0]
    outcome = TrialOutcome.from_trial(original)
    assert outcome is not None
    for step, value in original.intermediate_values.items():
        if step < outcome.n_questions:  # a pruned trial's value is reported when it is told
            trial.report(value, step=step)
    return dataclasses.replace(outcome, duplicate_of=original.user_attrs.get(DUPLICATE_OF, original.number))
