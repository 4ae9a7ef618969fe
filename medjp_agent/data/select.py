"""Filters and deterministic splits over a list of questions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from .question import Question, QuestionType


def select(
    questions: Iterable[Question],
    *,
    years: Sequence[int] | None = None,
    sections: Sequence[str] | None = None,
    text_only: bool | None = None,
    n_choices: Sequence[int] | None = None,
    qtypes: Sequence[QuestionType] | None = None,
    ids: Sequence[str] | None = None,
) -> list[Question]:
    """Keep questions matching every given filter. ``sections`` matches ``"112-A"`` or just the letter ``"A"``."""

    def keep(q: Question) -> bool:
        return (
            (not years or q.year in years)
            and (not sections or q.section in sections or q.section.rsplit("-", 1)[-1] in sections)
            and (text_only is None or q.text_only == text_only)
            and (not n_choices or len(q.choices) in n_choices)
            and (not qtypes or q.qtype in qtypes)
            and (not ids or q.id in ids)
        )

    return [q for q in questions if keep(q)]


def _bucket(qid: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(questions: Sequence[Question], fractions: Sequence[float], seed: int = 0) -> list[list[Question]]:
    """Split by a hash of each id, so a question stays in its split when others are added or filtered out."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    ordered = sorted(questions, key=lambda q: _bucket(q.id, seed))
    out, start = [], 0
    for i, frac in enumerate(fractions):
        end = len(ordered) if i == len(fractions) - 1 else start + round(frac * len(ordered))
        out.append(ordered[start:end])
        start = end
    return out
