"""Exact-set-match grading with IgakuQA's published special cases; calculation answers by their answer boxes."""

from __future__ import annotations

from dataclasses import dataclass

from medjp_agent.data import Question

from .numeric import numeric_correct

#: Questions every system gets right, as in IgakuQA's evaluation script (the question was withdrawn).
ALWAYS_CORRECT = frozenset({"116A71"})
#: The extraction method of IgakuQA's own comma-split rule; its numeric answers are compared as literal strings.
LITERAL_METHOD = "igakuqa-strict"


@dataclass(frozen=True)
class Grade:
    correct: bool
    points: int
    forbidden_picked: tuple[str, ...]
    by_template: bool = False


def _numeric(question: Question, answer: tuple[str, ...], literal: bool) -> tuple[bool, bool]:
    """(correct, graded by the answer boxes). IgakuQA compares strings ("04" and "4" differ); that stays the rule
    in literal mode and for a question without a box template."""
    by_boxes = None if literal else numeric_correct(question.text, question.answers, answer)
    if by_boxes is None:
        return answer == question.answers, False
    return by_boxes, True


def grade(question: Question, answer: tuple[str, ...], *, literal: bool = False) -> Grade:
    """Grade ``answer``; ``literal`` keeps IgakuQA's string equality for calculation answers."""
    forbidden = tuple(sorted(set(answer) & set(question.forbidden)))
    by_template = False
    if question.id in ALWAYS_CORRECT:
        correct = True
    elif question.qtype == "numeric":
        correct, by_template = _numeric(question, answer, literal)
    else:
        picked = tuple(sorted(answer))
        correct = any(picked == tuple(sorted(gold)) for gold in (question.answers, *question.accepted))
    return Grade(correct, question.points if correct else 0, forbidden, by_template)
