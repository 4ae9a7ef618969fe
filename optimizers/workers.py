"""Workers that run trials of one study until a budget is spent, robust to kills and to each other.

Budgets count the whole study, not one process: ``n_trials`` finished trials and ``max_lm_calls`` LM calls over
every run and worker (so a resumed search stops where the first would have), ``timeout_s`` for this run. A trial
already running when a budget runs out finishes, so the LM-call budget may be passed by one trial per worker.

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

from .liveness import Liveness
from .objective import TrialInterrupted

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

StopReason = Literal["n_trials", "timeout", "max_lm_calls", "interrupted"]
SURPLUS = "surplus"
_HELD = (TrialState.COMPLETE, TrialState.RUNNING)


@dataclass(frozen=True)
class Budget:
    """When a search stops. ``None`` means no limit; with no limit at all it runs until interrupted."""

    n_trials: int | None = None
    timeout_s: float | None = None
    max_lm_calls: int | None = None

    def spent(self, trials: Sequence[FrozenTrial], elapsed_s: float) -> StopReason | None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if self.n_trials is not None and len(complete) >= self.n_trials:
            return "n_trials"
        if self.timeout_s is not None and elapsed_s >= self.timeout_s:
            return "timeout"
        if self.max_lm_calls is not None and sum(int(t.user_attrs.get("lm_calls", 0)) for t in complete) >= self.max_lm_calls:
            return "max_lm_calls"
        return None


Objective = Callable[[optuna.Trial], float]


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

    def __post_init__(self) -> None:
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
        try:
            while not self.stopping:
                self.liveness.reclaim(self.study, self.storage)
                reason = self.budget.spent(self.study.get_trials(deepcopy=False), time.monotonic() - self._started)
                if reason:
                    self._reasons.append(reason)
                    return
                trial = self._claim()
                if trial is None:
                    # Every slot is held by a running trial; wait for it to finish, or to die and be re-queued.
                    self._stop.wait(min(1.0, self.liveness.interval_s))
                    continue
                self._run(trial)
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
                held = self.study.get_trials(deepcopy=False, states=_HELD)
                if len(held) >= n_trials:
                    return None
            trial = self.study.ask()
            if n_trials is None:
                return trial
            held = self.study.get_trials(deepcopy=False, states=_HELD)
            if sum(t.number < trial.number for t in held) < n_trials:
                return trial
        # Another process claimed the last slot between our count and our ask: give the slot back, and put an
        # enqueued format (a reference or a retry) back in the queue.
        trial.set_user_attr(SURPLUS, True)
        frozen = self.study.tell(trial, state=TrialState.FAIL)
        fixed = frozen.system_attrs.get("fixed_params")
        if fixed:
            self.study.enqueue_trial(fixed, user_attrs={k: v for k, v in frozen.user_attrs.items() if k != SURPLUS})
        return None

    def _run(self, trial: optuna.Trial) -> None:
        try:
            with self.liveness.beating(trial):
                value = self.objective(trial)
        except BaseException:
            # Interrupted or failed: nothing is lost, the same params wait for the next worker or the next run.
            frozen = self.study.tell(trial, state=TrialState.FAIL)
            self.liveness.retry(self.study, frozen)
            raise
        self.study.tell(trial, value)
