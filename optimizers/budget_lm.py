"""An exact LM-call budget for code that cannot be stopped from outside: DSPy's optimizers.

DSPy's callbacks see every call but cannot stop a compile (what they raise is swallowed), and an optimizer treats
an LM's exception as one more failed example until ``max_errors`` (it may even finish, with what it had). So the
budget is kept where a call is sent: :class:`BudgetLM` asks the shared :class:`CallAllowance` before each call and
a refused call is never sent. The allowance remembers the refusal, so :meth:`CallAllowance.phase` ends the phase
with :class:`LMBudgetSpent` whatever the optimizer made of the error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dspy

from medjp_agent.errors import PROGRAMMING_ERRORS, LMError
from medjp_agent.lm import describe_lm
from medjp_agent.lm.errors import NotRun

_REFUSAL = "LM-call budget of"
#: Where DSPy's optimizers log each example that failed: once the budget is spent, every remaining one (hundreds).
_PARALLELIZER_LOGGER = "dspy.utils.parallelizer"


class LMBudgetSpent(LMError):
    """The LM-call budget ran out; what finished is saved. An :class:`LMError`, so an evaluation records the
    questions in flight before it stops."""

    def __init__(self, limit: int, phase: str):
        super().__init__(f"{_REFUSAL} {limit:,} spent during {phase}")
        self.limit, self.phase = limit, phase


def _not_a_refusal(record: logging.LogRecord) -> bool:
    return _REFUSAL not in str(record.msg)


def quiet_refusals() -> None:
    """Keep DSPy from logging one error per example refused by the budget; the run ends with one message."""
    logger = logging.getLogger(_PARALLELIZER_LOGGER)
    if _not_a_refusal not in logger.filters:
        logger.addFilter(_not_a_refusal)


class CallAllowance:
    """``limit`` LM calls (None: any number) shared by every :class:`BudgetLM` and thread of a run; ``used``
    counts those sent, less those the LM could not answer (:meth:`call`)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.refused_in: str | None = None
        self._phase = "the run"
        self._lock = threading.Lock()

    def take(self) -> None:
        """Count one call about to be sent, or raise :class:`LMBudgetSpent` when none is left."""
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                self.refused_in = self.refused_in or self._phase
                raise LMBudgetSpent(self.limit, self._phase)
            self.used += 1

    @contextmanager
    def call(self) -> Iterator[None]:
        """One call: taken from the allowance, and given back when the LM could not answer it (:class:`NotRun`: a
        prompt longer than the context, ...), which the run's call count leaves out too."""
        self.take()
        try:
            yield
        except NotRun:
            with self._lock:
                self.used -= 1
            raise

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run a phase (``name`` goes into the message); raises :class:`LMBudgetSpent` when a call was refused in
        it, even when the code it ran swallowed the refusal or wrapped it in an error of its own."""
        self._phase = name
        try:
            yield
        except PROGRAMMING_ERRORS:
            raise
        except Exception as e:
            if self.limit is None or self.refused_in is None or isinstance(e, LMBudgetSpent):
                raise
            raise LMBudgetSpent(self.limit, self.refused_in) from e
        if self.limit is not None and self.refused_in is not None:
            raise LMBudgetSpent(self.limit, self.refused_in)


class BudgetLM(dspy.BaseLM):
    """``lm`` behind a :class:`CallAllowance`: each call is taken from the allowance first, then sent to ``lm``.

    Its ``kwargs`` are ``lm``'s; a copy DSPy makes with other defaults (BootstrapFewShot's ``temperature=1.0``
    rollouts) passes the ones it changed on with each call.
    """

    def __init__(self, lm: dspy.BaseLM, allowance: CallAllowance):
        super().__init__(model=lm.model, model_type=lm.model_type, cache=lm.cache)
        self.kwargs = lm.kwargs
        self.lm, self.allowance = lm, allowance

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any):
        with self.allowance.call():
            return self.lm.forward(prompt=prompt, messages=messages, **{**self._changed(), **kwargs})

    async def aforward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
                       **kwargs: Any):
        with self.allowance.call():
            return await self.lm.aforward(prompt=prompt, messages=messages, **{**self._changed(), **kwargs})

    def _changed(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k not in self.lm.kwargs or self.lm.kwargs[k] != v}

    def describe(self) -> dict[str, str]:
        return describe_lm(self.lm)
