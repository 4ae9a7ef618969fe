"""Accuracy, points and forbidden choices over groups of question results."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .record import QuestionResult

GroupBy = Literal["year", "section", "category", "qtype"]


@dataclass(frozen=True)
class Aggregate:
    n: int
    correct: int
    points: int
    points_possible: int
    forbidden_picked: int
    parse_failures: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "accuracy": self.accuracy}


def aggregate(results: Iterable[QuestionResult]) -> Aggregate:
    rows = list(results)
    return Aggregate(
        n=len(rows),
        correct=sum(r.correct for r in rows),
        points=sum(r.points for r in rows),
        points_possible=sum(r.points_possible for r in rows),
        forbidden_picked=sum(len(r.forbidden_picked) for r in rows),
        parse_failures=sum(r.parse_error is not None for r in rows),
    )


def aggregate_by(results: Iterable[QuestionResult], key: GroupBy) -> dict[str, Aggregate]:
    groups: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in results:
        groups[str(getattr(r, key))].append(r)
    return {k: aggregate(v) for k, v in sorted(groups.items())}
