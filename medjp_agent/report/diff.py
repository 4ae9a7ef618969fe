"""Per-question diff of two runs: the questions one run gets right and the other wrong."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from medjp_agent.results import Run
from medjp_agent.scoring import QuestionResult

from .serialize import Serializable


@dataclass(frozen=True)
class Side(Serializable):
    """One run's answer to a flipped question: what it parsed, or why it could not, and its reasoning."""

    answer: tuple[str, ...]
    correct: bool
    parse_error: str | None
    reasoning: str

    @classmethod
    def of(cls, r: QuestionResult) -> "Side":
        # Runs scored from bare predictions or direct-answer formats have no reasoning; the raw completion is then
        # the only trace of what the model said.
        return cls(answer=r.answer, correct=r.correct, parse_error=r.parse_error, reasoning=r.reasoning or r.completion)

    @property
    def shown(self) -> str:
        """The answer as a table shows it."""
        return ",".join(self.answer) if self.answer else f"({self.parse_error or 'no answer'})"


@dataclass(frozen=True)
class Flip(Serializable):
    """A question the two runs disagree on in correctness; ``gained`` when the second run is the one right."""

    id: str
    year: int
    category: str
    gold: tuple[str, ...]
    first: Side
    second: Side

    @property
    def gained(self) -> bool:
        return self.second.correct


@dataclass(frozen=True)
class RunDiff(Serializable):
    """The flips between ``first`` and ``second`` (run labels) over the questions both answered."""

    first: str
    second: str
    shared: int
    flips: tuple[Flip, ...]
    categories: tuple[str, ...] = ()

    @property
    def gained(self) -> int:
        return sum(f.gained for f in self.flips)

    @property
    def lost(self) -> int:
        return len(self.flips) - self.gained


def diff_runs(first: Run, second: Run, *, categories: Collection[str] = ()) -> RunDiff:
    """Questions whose correctness differs between the runs, in the first run's order.

    ``categories`` keeps only questions of those categories (e.g. ``循環器``); empty keeps all. ``shared`` counts the
    questions both runs answered within that filter.
    """
    others = {r.id: r for r in second.results}
    pairs = [(a, others[a.id]) for a in first.results
             if a.id in others and (not categories or a.category in categories)]
    flips = tuple(Flip(id=a.id, year=a.year, category=a.category, gold=a.gold, first=Side.of(a), second=Side.of(b))
                  for a, b in pairs if a.correct != b.correct)
    return RunDiff(first=first.label, second=second.label, shared=len(pairs), flips=flips,
                   categories=tuple(categories))
