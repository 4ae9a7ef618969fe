"""The per-question result record: one line of a run's ``results.jsonl``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from medjp_agent.data import Question

from .extract import Extraction
from .grade import LITERAL_METHOD, grade


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
    #: False when no metadata said which choices are 禁忌肢, so ``forbidden_picked`` is empty by ignorance.
    forbidden_known: bool = True
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
    #: How the answer was found (marker, label-line, choice-text, number, ...; ``+template`` when a calculation
    #: answer was graded by its answer boxes); empty when nothing was parsed.
    method: str = ""
    #: Why the completions ended (``"length"`` when any was cut off at the token limit, and then ``truncated``);
    #: empty when the backend did not say. See :func:`medjp_agent.lm.finish.finish_summary`.
    finish_reason: str = ""
    truncated: bool = False
    #: Why the question could not be asked (a server that kept answering empty, a prompt too long); empty when it
    #: was. Such a record holds no answer: it is not a wrong one.
    not_run: str = ""
    #: The exact prompt sent (a string, chat messages, or an ensemble's list of them), kept only by --log-prompts.
    prompt: Any = None

    @classmethod
    def scored(cls, question: Question, extraction: Extraction, **extra: Any) -> "QuestionResult":
        g = grade(question, extraction.answer, literal=extraction.method == LITERAL_METHOD)
        method = extraction.method + ("+template" if g.by_template and extraction.method else "")
        return cls(
            id=question.id, year=question.year, section=question.section, category=question.category,
            qtype=question.qtype, gold=question.answers, answer=extraction.answer, correct=g.correct,
            points=g.points, points_possible=question.points, forbidden_picked=g.forbidden_picked,
            forbidden_known=question.forbidden_known,
            parse_error=extraction.reason, text_only=question.text_only, method=method, **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["prompt"] is None:  # only runs with --log-prompts carry the prompt
            del d["prompt"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuestionResult":
        kw = {k: v for k, v in d.items() if k in _FIELDS}
        for key in ("gold", "answer", "forbidden_picked"):
            kw[key] = tuple(kw.get(key, ()))
        kw["samples"] = tuple(tuple(s) for s in kw.get("samples", ()))
        return cls(**kw)


_FIELDS = {f.name for f in dataclasses.fields(QuestionResult)}
