"""The per-question result record: one line of a run's ``results.jsonl``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from medjp_agent.data import Question

from .extract import Extraction
from .grade import grade


@dataclass(frozen=True)
class QuestionResult:
    """Everything a report needs about one answered question; it is never dropped, even when unparseable."""

    id: str
    year: int
    section: str
    category: str
    qtype: str
    gold: tuple[str, ...]
    answer: tuple[str, ...]
    correct: bool
    points: int
    points_possible: int
    forbidden_picked: tuple[str, ...] = ()
    parse_error: str | None = None
    completion: str = ""
    reasoning: str = ""
    prompt_hash: str = ""
    latency_s: float = 0.0
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    samples: tuple[tuple[str, ...], ...] = ()
    score: float | None = None
    text_only: bool = True

    @classmethod
    def scored(cls, question: Question, extraction: Extraction, **extra: Any) -> "QuestionResult":
        g = grade(question, extraction.answer)
        return cls(
            id=question.id, year=question.year, section=question.section, category=question.category,
            qtype=question.qtype, gold=question.answers, answer=extraction.answer, correct=g.correct,
            points=g.points, points_possible=question.points, forbidden_picked=g.forbidden_picked,
            parse_error=extraction.reason, text_only=question.text_only, **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuestionResult":
        kw = {k: v for k, v in d.items() if k in _FIELDS}
        for key in ("gold", "answer", "forbidden_picked"):
            kw[key] = tuple(kw.get(key, ()))
        kw["samples"] = tuple(tuple(s) for s in kw.get("samples", ()))
        return cls(**kw)


_FIELDS = {f.name for f in dataclasses.fields(QuestionResult)}
