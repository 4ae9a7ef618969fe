"""What a trial's value is made of: generation accuracy of the format as it will be run, or the gold option's
log-probability (a cheap screening signal).

- ``correct`` (the default objective): the format generates exactly as `medjp eval` will run it (its reasoning,
  votes, ensembles, Medprompt), and a question scores 1.0 when the exam counts the answer right, else 0.0.
- ``logprob``: the format's *direct-answer variant* is rendered and each option is scored as the continuation,
  without generating (one forward pass, local models only): its label, or in the paper's harness layout (which
  answers with the choice text) its text. It moves continuously with the surface
  of the format, so the paired Wilcoxon test separates formats with few questions, but it cannot see reasoning or
  voting; it serves as stage 1 of a screened search (:mod:`.screen`).

Both are programs (``dspy.Module``) that :func:`medjp_agent.evaluate.evaluate` runs like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import dspy

from medjp_agent.data import LABELS
from medjp_agent.errors import ConfigError, lm_boundary
from medjp_agent.scoring import Extraction
from medjp_agent.signatures import DemoSelector, FormatAdapter, MedicalQA, PromptFormat, default_pool, signature_for
from medjp_agent.signatures.adapter import hash_prompt
from medjp_agent.suggest import did_you_mean

from .space import LOGPROB_FIXED

ScoreKind = Literal["correct", "logprob"]
SCORES: tuple[str, ...] = ("correct", "logprob")


class LogprobQA(dspy.Module):
    """Scores each option of a question in the direct-answer variant of ``fmt``; generates nothing.

    The prompt ends with the answer marker (raw formats) and each option's display label is the continuation; in
    chat formats the continuation is the assistant's ``marker + label``. Both give the same softmax, because the
    shared marker cancels out. The harness layout (``template="harness"``) answers with the choice text after
    ``### 応答：\n``, in chat too (its whole prompt is the user turn), so there each option's *text* is the
    continuation. Texts are scored like labels, by their summed log-probability, not divided by their length: the
    log-softmax is then in both cases the model's probability of answering with that option, renormalised over
    the options, so label and harness formats' values compare in one study, and it favours what the model would
    write (a short likely text) as generation does. A per-length mean (lm-evaluation-harness's ``acc_norm``)
    would flatten the harness formats' softmax towards uniform and make their values incomparable. The
    prediction carries ``option_logprobs`` (log-softmax over the options) and an extraction of the top option.
    Needs an LM with ``score_continuations(messages, continuations)``.
    """

    def __init__(self, fmt: PromptFormat, demo_pool: Sequence[dict[str, Any]] | None = None, seed: int = 0):
        super().__init__()
        self.format = fmt.replace(**LOGPROB_FIXED)
        self._selector = DemoSelector(self.format, default_pool() if demo_pool is None else demo_pool, seed=seed)
        self._adapter = FormatAdapter(self.format)
        self._signature = signature_for(self.format.task_instruction(), self.format.marker)

    def continuations(self, choices: Sequence[str]) -> list[str]:
        """What is scored after the prompt for each option: its text in the harness layout, else its label (after
        the marker in chat)."""
        if self.format.template == "harness":
            return list(choices)
        prefix = self.format.marker if self.format.uses_chat else ""
        return [prefix + label for label in self.format.display_labels[: len(choices)]]

    def forward(self, question: str, choices: Sequence[str] = ()) -> dspy.Prediction:
        lm = dspy.settings.lm
        if not supports_logprob(lm):
            raise ConfigError(f"a log-probability score needs a local model that scores continuations; "
                              f"{type(lm).__name__} cannot")
        choices = list(choices)
        messages = self._adapter.format(self._signature, self._selector.select(question, choices),
                                        {"question": question, "choices": choices})
        shown = self.continuations(choices)
        # The format's adapter is the active one, as for a generated answer, so an LM may read the format from it.
        with lm_boundary(), dspy.context(adapter=self._adapter):
            scores = lm.score_continuations(messages, shown)
        log_probs = _log_softmax(scores)
        top = max(range(len(log_probs)), key=log_probs.__getitem__)
        return dspy.Prediction(
            extraction=Extraction((LABELS[top],), method="logprob"), option_logprobs=log_probs, lm_calls=1,
            prompt_hash=hash_prompt(messages),
            completion=" ".join(f"{label}:{lp:.3f}" for label, lp in zip(shown, log_probs)),
        )


def supports_logprob(lm: Any) -> bool:
    return hasattr(lm, "score_continuations")


def check_score(kind: str) -> ScoreKind:
    """``kind`` when it names a score; a :class:`~medjp_agent.errors.ConfigError` naming the choices otherwise."""
    if kind not in SCORES:
        raise ConfigError(f"--score must be one of {', '.join(SCORES)}, got {kind!r}{did_you_mean(kind, SCORES)}")
    return kind  # type: ignore[return-value]


def make_program(kind: ScoreKind, fmt: PromptFormat, demo_pool: Sequence[dict[str, Any]] | None = None,
                 seed: int = 0) -> dspy.Module:
    """The program whose results a trial of score ``kind`` reports."""
    if kind == "logprob":
        return LogprobQA(fmt, demo_pool, seed)
    check_score(kind)
    return MedicalQA(fmt, demo_pool=demo_pool, seed=seed)


def scores_question(kind: ScoreKind, question: Any) -> bool:
    """Whether score ``kind`` is defined for ``question`` (log-probabilities need options to compare)."""
    return kind != "logprob" or bool(question.choices)


def _log_softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    log_total = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - log_total for s in scores]
