"""Accuracy, points and forbidden choices over groups of question results."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .record import QuestionResult

GroupBy = Literal["year", "section", "category", "qtype"]
#: The reason recorded on a question that a scored prediction file does not answer: it counts as ``missing``,
#: wrong, and not as a parse failure (there was nothing to parse).
NO_PREDICTION = "no prediction for this question"


#: Counts kept apart from answers that did not parse, as (column title, :class:`Aggregate` field): questions a
#: prediction file left unanswered, questions that could not be asked, answers cut off at the token limit.
SIDE_COUNTS = (("no prediction", "missing"), ("not run", "not_run"), ("truncated", "truncated"))


@dataclass(frozen=True)
class Aggregate:
    n: int
    correct: int
    points: int
    points_possible: int
    forbidden_picked: int
    parse_failures: int
    missing: int = 0
    #: Questions that could not be asked (see :attr:`QuestionResult.not_run`): outside every other count, so they
    #: are neither right nor wrong, and accuracy is over the questions asked.
    not_run: int = 0
    #: Answers read from a completion cut off at the token limit.
    truncated: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "accuracy": self.accuracy}


def aggregate(results: Iterable[QuestionResult]) -> Aggregate:
    everything = list(results)
    rows = [r for r in everything if not r.not_run]
    return Aggregate(
        n=len(rows),
        correct=sum(r.correct for r in rows),
        points=sum(r.points for r in rows),
        points_possible=sum(r.points_possible for r in rows),
        # Questions with a forbidden choice picked, as the exam's 禁忌肢 criterion counts them.
        forbidden_picked=sum(bool(r.forbidden_picked) for r in rows),
        parse_failures=sum(r.parse_error is not None and r.parse_error != NO_PREDICTION for r in rows),
        missing=sum(r.parse_error == NO_PREDICTION for r in rows),
        not_run=len(everything) - len(rows),
        truncated=sum(r.truncated for r in rows),
    )


def aggregate_by(results: Iterable[QuestionResult], key: GroupBy) -> dict[str, Aggregate]:
    groups: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in results:
        groups[str(getattr(r, key))].append(r)
    return {k: aggregate(v) for k, v in sorted(groups.items())}
