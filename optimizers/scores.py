"""Per-question scores a format search optimises: 0/1 exam correctness, or the log-probability of the gold option.

A score turns one format into a function ``Question -> QuestionResult`` whose ``score`` field is the number the
search reports to Optuna for that question. Correctness is what the exam counts, but a 0/1 outcome carries little
information per question; the gold option's log-probability (local models only) moves continuously with the
format, so the paired Wilcoxon test behind pruning separates two formats with far fewer questions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import dspy

from medjp_agent.data import LABELS, Question
from medjp_agent.evaluate import answer_question
from medjp_agent.scoring import Extraction, QuestionResult
from medjp_agent.signatures import DemoSelector, FormatAdapter, MedicalQA, PromptFormat, default_pool, signature_for

ScoreKind = Literal["auto", "correct", "logprob"]
AskFn = Callable[[Question], QuestionResult]


class QuestionScore(Protocol):
    """How a trial's format answers and scores questions; ``name`` is recorded with the study."""

    name: str

    def prepare(self, fmt: PromptFormat) -> AskFn:
        """A thread-safe function answering one question in ``fmt`` (with ``score`` set)."""
        ...

    def accepts(self, question: Question) -> bool:
        """Whether this score is defined for ``question``."""
        ...


@dataclass(frozen=True)
class CorrectnessScore:
    """1.0 when the exam would count the answer right (exact set match), else 0.0. Any LM, any format."""

    lm: dspy.BaseLM
    demo_pool: Sequence[dict[str, Any]] | None = None
    seed: int = 0
    name: str = "correct"

    def prepare(self, fmt: PromptFormat) -> AskFn:
        program = MedicalQA(fmt, demo_pool=self.demo_pool, seed=self.seed)

        def ask(question: Question) -> QuestionResult:
            result = answer_question(program, question, self.lm)
            return dataclasses.replace(result, score=float(result.correct))

        return ask

    def accepts(self, question: Question) -> bool:
        return True


@dataclass(frozen=True)
class LogprobScore:
    """log-softmax probability of the gold option among the options, read from the model without generating.

    The question is rendered in the format with a direct answer (the raw prompt then ends with the answer marker),
    and each option's display label is scored as the continuation; in chat formats the continuation is the
    assistant's ``marker + label``. Both give the same softmax, because the shared marker cancels out. For
    multi-answer questions the score is the mean over the gold labels; the recorded answer is the top option.
    Needs an LM with ``score_continuations(messages, continuations) -> list[float]`` (the local HF backend) and
    choice questions (numeric ones have no options to compare).
    """

    lm: Any
    demo_pool: Sequence[dict[str, Any]] | None = None
    seed: int = 0
    name: str = "logprob"

    def prepare(self, fmt: PromptFormat) -> AskFn:
        fmt = fmt.replace(reasoning="direct", output="marker")
        selector = DemoSelector(fmt, default_pool() if self.demo_pool is None else self.demo_pool, seed=self.seed)
        adapter = FormatAdapter(fmt)
        signature = signature_for(fmt.task_instruction(), fmt.marker)

        def ask(question: Question) -> QuestionResult:
            inputs = {"question": question.text, "choices": list(question.choices)}
            messages = adapter.format(signature, selector.select(question.text, question.choices), inputs)
            shown = fmt.display_labels[: len(question.choices)]
            prefix = fmt.marker if fmt.uses_chat else ""
            scores = self.lm.score_continuations(messages, [prefix + label for label in shown])
            log_probs = _log_softmax(scores)
            gold = [LABELS.index(a) for a in question.answers]
            top = max(range(len(log_probs)), key=log_probs.__getitem__)
            return QuestionResult.scored(
                question, Extraction((LABELS[top],)), lm_calls=1, score=sum(log_probs[i] for i in gold) / len(gold),
                completion=" ".join(f"{label}:{lp:.3f}" for label, lp in zip(shown, log_probs)),
            )

        return ask

    def accepts(self, question: Question) -> bool:
        return bool(question.choices)


def supports_logprob(lm: Any) -> bool:
    return hasattr(lm, "score_continuations")


def make_score(kind: ScoreKind, lm: Any, demo_pool: Sequence[dict[str, Any]] | None = None,
               seed: int = 0) -> CorrectnessScore | LogprobScore:
    """The score ``kind`` names; ``auto`` is ``logprob`` where the LM can score continuations, else ``correct``."""
    if kind == "auto":
        kind = "logprob" if supports_logprob(lm) else "correct"
    if kind == "logprob":
        if not supports_logprob(lm):
            raise ValueError(f"--score logprob needs a local model that scores continuations; {type(lm).__name__} "
                             "cannot (use --score correct)")
        return LogprobScore(lm, demo_pool, seed)
    return CorrectnessScore(lm, demo_pool, seed)


def _log_softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    log_total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - log_total for s in scores]
