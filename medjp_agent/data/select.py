"""Filters and deterministic splits over a list of questions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

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
            and (not sections or not _section_names(q).isdisjoint(sections))
            and (text_only is None or q.text_only == text_only)
            and (not n_choices or len(q.choices) in n_choices)
            and (not qtypes or q.qtype in qtypes)
            and (not ids or q.id in ids)
        )

    return [q for q in questions if keep(q)]


def _section_names(q: Question) -> set[str]:
    """What ``--section`` may call a question's section: ``"112-A"`` or just its letter ``"A"``."""
    return {q.section, q.section.rsplit("-", 1)[-1]}


def unmatched(questions: Sequence[Question], *, years: Sequence[int] = (), sections: Sequence[str] = (),
              qtypes: Sequence[str] = (), n_choices: Sequence[int] = ()) -> list[str]:
    """Filter values no question has, each as ``--flag value (present: ...)``: a typo given next to a valid value
    would otherwise just select nothing more, silently."""
    present: dict[str, tuple[Sequence[Any], set[Any]]] = {
        "--year": (years, {q.year for q in questions}),
        "--section": (sections, {name for q in questions for name in _section_names(q)}),
        "--qtype": (qtypes, {q.qtype for q in questions}),
        "--n-choices": (n_choices, {len(q.choices) for q in questions}),
    }
    return [f"{flag} {value!r} (present: {', '.join(map(str, sorted(values)))})"
            for flag, (wanted, values) in present.items() for value in wanted if value not in values]


#: Named selections. ``harness``: the paper harness's question set (``eval_bench.py``): text-only questions with five
#: choices and a question text of at most 1,024 characters.
PRESETS: dict[str, dict[str, Any]] = {"harness": {"text_only": True, "n_choices": (5,), "max_chars": 1024}}


def apply_preset(questions: Iterable[Question], name: str) -> list[Question]:
    """The questions a named selection (:data:`PRESETS`) keeps; an unknown name is a ValueError naming them all."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    rule = PRESETS[name]
    return [q for q in select(questions, text_only=rule["text_only"], n_choices=rule["n_choices"])
            if len(q.text) <= rule["max_chars"]]


def _bucket(qid: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{qid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(questions: Sequence[Question], fractions: Sequence[float], seed: int = 0) -> list[list[Question]]:
    """Split by a hash of each id against cumulative fractions, so a question keeps its split when others are
    added or filtered out (sizes are therefore approximately, not exactly, proportional)."""
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    bounds = [sum(fractions[: i + 1]) for i in range(len(fractions))]
    out: list[list[Question]] = [[] for _ in fractions]
    for q in questions:
        b = _bucket(q.id, seed)
        out[next(i for i, bound in enumerate(bounds) if b < bound or i == len(bounds) - 1)].append(q)
    return out
