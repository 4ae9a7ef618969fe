"""The one record every part of medjp-agent passes around: an exam question with its gold answer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

QuestionType = Literal["single", "multi", "numeric"]

#: Canonical choice labels. Formats may *display* other labels (A, ア, 1, ａ); data and scoring always use these.
LABELS = "abcdefghi"


@dataclass(frozen=True)
class Question:
    """One exam question.

    ``answers`` holds canonical labels (``("a", "c")``) for choice questions or one numeric string for calculation
    questions (then ``choices`` is empty). ``accepted`` lists extra answer sets that also count as correct, as in
    IgakuQA's 112B30 whose gold reads "a or d". ``forbidden_known`` is False when no metadata said which choices
    are 禁忌肢 (forbidden), so an empty ``forbidden`` means "unknown", not "none".
    """

    id: str
    year: int
    section: str
    text: str
    choices: tuple[str, ...]
    answers: tuple[str, ...]
    points: int = 1
    text_only: bool = True
    category: str = ""
    forbidden: tuple[str, ...] = ()
    forbidden_known: bool = True
    human_accuracy: float | None = None
    accepted: tuple[tuple[str, ...], ...] = ()
    explanation: str = ""

    @property
    def qtype(self) -> QuestionType:
        if not self.choices:
            return "numeric"
        return "multi" if len(self.answers) > 1 else "single"

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(LABELS[: len(self.choices)])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Question":
        tuples = {"choices", "answers", "forbidden"}
        kw = {k: tuple(v) if k in tuples else v for k, v in d.items() if k in _FIELDS}
        kw["accepted"] = tuple(tuple(a) for a in d.get("accepted", ()))
        return cls(**kw)


_FIELDS = {f.name for f in dataclasses.fields(Question)}


@dataclass(frozen=True)
class Dataset:
    """Questions plus where they came from, what the loader had to skip (only in lenient mode) and warnings about
    what it loaded (such as a missing metadata file)."""

    questions: tuple[Question, ...]
    source: str
    skipped: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self):
        return iter(self.questions)
