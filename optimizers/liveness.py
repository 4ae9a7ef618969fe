"""Telling a running trial from one whose worker died, the same way in every storage.

A killed worker leaves its trial ``RUNNING`` forever. Each running trial therefore carries a ``heartbeat`` user
attr that a background thread refreshes every ``interval_s``; any worker that finds a ``RUNNING`` trial whose last
beat is older than ``grace_s`` fails it (an atomic state change in the storage, so two workers cannot both win) and
enqueues a retry with the same params. Only public storage operations are used, so this works for SQLite, any RDB
and the journal file alike (Optuna's own heartbeat exists only for RDB storages).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from medjp_agent.errors import check_settings

from .objective import REFERENCE

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

HEARTBEAT, RETRY_OF, ATTEMPT = "heartbeat", "retry_of", "attempt"


@dataclass(frozen=True)
class Liveness:
    """Heartbeat settings and the handling of dead trials.

    Args:
        interval_s: Seconds between two beats of a running trial.
        grace_s: A trial silent for longer is dead (default: three intervals, so one slow write is no death).
        max_attempts: A format is run at most this many times; a trial that keeps killing its worker is dropped.
    """

    interval_s: float = 30.0
    grace_s: float | None = None
    max_attempts: int = 3

    def __post_init__(self) -> None:
        check_settings(("--heartbeat", self.interval_s, self.interval_s > 0, "must be positive"),
                       ("grace_s", self.grace_s, self.grace_s is None or self.grace_s > 0, "must be positive"),
                       ("max_attempts", self.max_attempts, self.max_attempts >= 1, "must be at least 1"))

    @property
    def grace(self) -> float:
        return self.grace_s if self.grace_s is not None else 3 * self.interval_s

    @contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        """Keep ``trial``'s heartbeat fresh while the block runs (the thread stops before the trial is told)."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                trial.set_user_attr(HEARTBEAT, time.time())
                if stop.wait(self.interval_s):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def reclaim(self, study: optuna.Study, storage: "BaseStorage") -> list[int]:
        """Fail every dead ``RUNNING`` trial and queue its params again; returns the failed trial numbers."""
        now = time.time()
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = float(t.user_attrs.get(HEARTBEAT) or (t.datetime_start.timestamp() if t.datetime_start else now))
            if now - last > self.grace and fail_trial(study, storage, t.number):
                failed.append(t.number)
                self.retry(study, t)
        return failed

    def retry(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Enqueue ``trial``'s params again (keeping its reference name), unless it has used up its attempts."""
        attempt = int(trial.user_attrs.get(ATTEMPT, 1)) + 1
        if attempt > self.max_attempts:
            return False
        attrs = {RETRY_OF: int(trial.user_attrs.get(RETRY_OF, trial.number)), ATTEMPT: attempt}
        if trial.user_attrs.get(REFERENCE):
            attrs[REFERENCE] = trial.user_attrs[REFERENCE]
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
        return True


def fail_trial(study: optuna.Study, storage: "BaseStorage", number: int) -> bool:
    """Move trial ``number`` from RUNNING to FAIL; False when another worker finished or failed it first."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    try:
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False
