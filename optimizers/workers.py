"""Workers that run trials of one study until a budget is spent, robust to kills and to each other.

Budgets count the whole study, not one process: ``n_trials`` finished (complete or pruned) trials and
``max_lm_calls`` LM calls over every run and worker (so a resumed search stops where the first would have),
``timeout_s`` for this run. The LM-call budget is checked before each question and counts every call (Medprompt's
preparation included, :class:`CallBudget`); a trial it cuts short is failed, its calls recorded, and queued again.

A worker claims a slot before it asks for a trial: within a process under a lock, across processes by the trial
numbers the storage hands out (a trial whose number ranks beyond ``n_trials`` among the finished and running ones
is surplus, failed at once and never run). It waits rather than exits while other workers' trials still run, so
a trial left by a dead worker is found (:mod:`.liveness`), re-queued and finished here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from medjp_agent.errors import check_settings
from medjp_agent.evaluate import CallMeter

from .liveness import Liveness
from .objective import DUPLICATE_OF, BudgetSpent, DuplicateTrial, TrialInterrupted, TrialOutcome

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

StopReason = Literal["n_trials", "timeout", "max_lm_calls", "interrupted", "exhausted"]
SURPLUS = "surplus"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_HELD = (*_FINISHED, TrialState.RUNNING)
#: Fresh samples that repeated a running or waiting trial in a row, before a worker waits for one to finish.
MAX_RESAMPLES = 20
#: Samples in a row that repeated finished trials: the sampler has nothing new to try (a small space, converged).
MAX_REPEATS = 30


@dataclass(frozen=True)
class Budget:
    """When a search stops. ``None`` means no limit; with no limit at all it runs until interrupted."""

    n_trials: int | None = None
    timeout_s: float | None = None
    max_lm_calls: int | None = None

    def __post_init__(self) -> None:
        check_settings(("--n-trials", self.n_trials, self.n_trials is None or self.n_trials >= 0,
                        "must not be negative"),
                       ("--timeout", self.timeout_s, self.timeout_s is None or self.timeout_s > 0, "must be positive"),
                       ("--max-lm-calls", self.max_lm_calls, self.max_lm_calls is None or self.max_lm_calls >= 1,
                        "must be at least 1"))

    def spent(self, trials: Sequence[FrozenTrial], elapsed_s: float, lm_calls: int | None = None) -> StopReason | None:
        """Which budget ran out; ``lm_calls`` defaults to the calls the trials recorded."""
        if self.n_trials is not None and len(budgeted_trials(trials)) >= self.n_trials:
            return "n_trials"
        if self.timeout_s is not None and elapsed_s >= self.timeout_s:
            return "timeout"
        calls = recorded_calls(trials) if lm_calls is None else lm_calls
        if self.max_lm_calls is not None and calls >= self.max_lm_calls:
            return "max_lm_calls"
        return None


def budgeted_trials(trials: Sequence[FrozenTrial], states: Sequence[TrialState] = _FINISHED) -> list[FrozenTrial]:
    """The trials a trial budget counts: a repeated format copies a finished trial's value and costs nothing."""
    return [t for t in trials if t.state in states and DUPLICATE_OF not in t.user_attrs]


def recorded_calls(trials: Sequence[FrozenTrial]) -> int:
    """LM calls the finished trials recorded (failed ones too: a trial cut short by the budget spent its calls)."""
    return sum(int(t.user_attrs.get("lm_calls", 0)) for t in trials if t.state != TrialState.RUNNING)


class CallBudget:
    """The study's LM calls as this process sees them between two trial boundaries.

    What finished trials recorded is read from the storage at each boundary; what this process spends is counted
    call by call (:class:`~medjp_agent.evaluate.CallMeter`). With one process the count is exact; with several,
    others' running trials are seen when they finish.
    """

    def __init__(self, limit: int | None, offset: int = 0):
        self.limit, self.offset = limit, offset  # offset: calls spent before this study (a screening stage)
        self.meter = CallMeter()
        self._stored = 0
        self._start: int | None = None

    def refresh(self, trials: Sequence[FrozenTrial]) -> None:
        self._stored = recorded_calls(trials)
        if self._start is None:
            self._start = self._stored

    @property
    def spent(self) -> int:
        return self.offset + max(self._stored, (self._start or 0) + self.meter.calls)

    def exhausted(self) -> bool:
        return self.limit is not None and self.spent >= self.limit


Objective = Callable[[optuna.Trial], TrialOutcome]


@dataclass
class Workers:
    """``n`` worker threads running ``objective`` on ``study`` until ``budget`` is spent or :meth:`stop` is called.

    Threads share the process's LM, so a local backend batches their questions together. Workers in other
    processes or on other machines join by opening the same study on the same storage.
    """

    study: optuna.Study
    storage: "BaseStorage"
    objective: Objective
    budget: Budget
    liveness: Liveness = Liveness()
    n: int = 1
    calls: CallBudget | None = None

    def __post_init__(self) -> None:
        self.calls = self.calls or CallBudget(self.budget.max_lm_calls)
        self._stop = threading.Event()
        self._claim_lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._reasons: list[StopReason] = []
        self._started = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def stop_reason(self) -> StopReason | None:
        """Asked before each question of a running trial."""
        if self.stopping:
            return "interrupted"
        assert self.calls is not None
        return "max_lm_calls" if self.calls.exhausted() else None

    def run(self) -> StopReason:
        """Run the workers to the end; Ctrl-C fails and re-queues the running trials, then re-raises."""
        finished = [threading.Event() for _ in range(self.n)]
        for event in finished:
            threading.Thread(target=self._work, args=(event,), name="search-worker", daemon=True).start()
        # Waiting on events, not Thread.join: a join interrupted by Ctrl-C reports a live thread as finished
        # (CPython), and the trials it is running would be left RUNNING.
        try:
            while not all(event.wait(0.2) for event in finished):
                pass
        except KeyboardInterrupt:
            self.stop()
            for event in finished:
                event.wait()
            raise
        if self._errors:
            raise self._errors[0]
        return self._reasons[0] if self._reasons else "interrupted"

    # -- one worker -------------------------------------------------------------------------------------------------
    def _work(self, finished: threading.Event) -> None:
        resampled = repeated = 0
        try:
            while not self.stopping:
                self.liveness.reclaim(self.study, self.storage)
                trials = self.study.get_trials(deepcopy=False)
                assert self.calls is not None
                self.calls.refresh(trials)
                reason = self.budget.spent(trials, time.monotonic() - self._started, self.calls.spent)
                if reason:
                    self._reasons.append(reason)
                    return
                trial = self._claim()
                ran = self._run(trial) if trial is not None else None
                resampled = resampled + 1 if ran is False else 0
                repeated = repeated + 1 if ran == "repeat" else 0
                if repeated >= MAX_REPEATS:
                    self._reasons.append("exhausted")
                    return
                if trial is None or resampled >= MAX_RESAMPLES:
                    # Every slot is held by a running trial (or every fresh sample repeats one): wait for it to
                    # finish, or to die and be re-queued.
                    resampled = 0
                    self._stop.wait(min(1.0, self.liveness.interval_s))
        except TrialInterrupted:
            self._reasons.append("interrupted")
        except BaseException as e:  # noqa: BLE001 - reported by run() after every worker has stopped
            self._errors.append(e)
            self.stop()
        finally:
            finished.set()

    def _claim(self) -> optuna.Trial | None:
        with self._claim_lock:
            n_trials = self.budget.n_trials
            if n_trials is not None:
                if len(budgeted_trials(self.study.get_trials(deepcopy=False, states=_HELD), _HELD)) >= n_trials:
                    return None
            trial = self.study.ask()
            if n_trials is None:
                return trial
            held = budgeted_trials(self.study.get_trials(deepcopy=False, states=_HELD), _HELD)
            if sum(t.number < trial.number for t in held) < n_trials:
                return trial
        # Another process claimed the last slot between our count and our ask: give the slot back.
        self._give_back(trial, SURPLUS, True)
        return None

    def _give_back(self, trial: optuna.Trial, key: str, value: object) -> None:
        """Fail ``trial`` (marked ``key``) without running it; an enqueued format (a reference or a retry) goes back
        in the queue."""
        trial.set_user_attr(key, value)
        frozen = self.study.tell(trial, state=TrialState.FAIL)
        fixed = frozen.system_attrs.get("fixed_params")
        if fixed:
            self.study.enqueue_trial(fixed, user_attrs={k: v for k, v in frozen.user_attrs.items()
                                                        if k not in (key, "format")})

    def _run(self, trial: optuna.Trial) -> bool | Literal["repeat"]:
        """Run one trial and tell the storage how it ended; False when it made way for a fresh sample, ``"repeat"``
        when it copied a finished trial."""
        try:
            with self.liveness.beating(trial):
                outcome = self.objective(trial)
        except DuplicateTrial as e:
            self._give_back(trial, DUPLICATE_OF, e.number)
            return False
        except BudgetSpent as e:
            trial.set_user_attr("lm_calls", e.lm_calls)
            self._fail(trial)
            return True
        except BaseException:
            self._fail(trial)
            raise
        for key, value in outcome.user_attrs().items():
            trial.set_user_attr(key, value)
        if outcome.pruned:
            # The value of a pruned trial is its last report: the mean over exactly what it had answered, at a
            # step past every question's, so no paired test ever reads it as a question's score.
            trial.report(outcome.value, step=outcome.n_questions)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, outcome.value)
        return "repeat" if outcome.duplicate_of is not None else True

    def _fail(self, trial: optuna.Trial) -> None:
        # Interrupted or failed: nothing is lost, the same params wait for the next worker or the next run.
        frozen = self.study.tell(trial, state=TrialState.FAIL)
        self.liveness.retry(self.study, frozen)
