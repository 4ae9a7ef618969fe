"""Exact-set-match grading with IgakuQA's published special cases."""

from __future__ import annotations

from dataclasses import dataclass

from medjp_agent.data import Question

#: Questions every system gets right, as in IgakuQA's evaluation script (the question was withdrawn).
ALWAYS_CORRECT = frozenset({"116A71"})


@dataclass(frozen=True)
class Grade:
    correct: bool
    points: int
    forbidden_picked: tuple[str, ...]


def is_correct(question: Question, answer: tuple[str, ...]) -> bool:
    if question.id in ALWAYS_CORRECT:
        return True
    if question.qtype == "numeric":
        # IgakuQA compares strings, so "04" and "4" differ; keeping that reproduces its published scores.
        return answer == question.answers
    picked = tuple(sorted(answer))
    return any(picked == tuple(sorted(gold)) for gold in (question.answers, *question.accepted))


def grade(question: Question, answer: tuple[str, ...]) -> Grade:
    correct = is_correct(question, answer)
    forbidden = tuple(sorted(set(answer) & set(question.forbidden)))
    return Grade(correct, question.points if correct else 0, forbidden)
