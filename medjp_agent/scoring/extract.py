"""Turn free model text into a canonical answer, or a reason why that failed.

The order of attempts matters and is part of the contract:
1. cut the answer span after the *last* answer marker (the format's, e.g. ``答え：``), when a marker is given;
2. numeric questions: the first number in the span (full-width digits and units allowed);
3. choice questions: standalone choice labels in the display scheme the prompt used (a/A/ａ/ア/1/ⅰ…);
4. otherwise the text of a choice: exact match, then the closest choice above a similarity threshold.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from medjp_agent.data import LABELS, Question

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_TOKEN = re.compile(r"[a-z0-9]+|[\u30a0-\u30ff]+")
_PUNCT = "。．.、，,：:;；!！?？「」『』()（）[]【】 \t"


@dataclass(frozen=True)
class Extraction:
    """A parsed answer (canonical labels, or one numeric string) or the reason nothing could be parsed."""

    answer: tuple[str, ...] = ()
    reason: str | None = None
    method: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def normalize(text: str) -> str:
    """NFKC (full-width -> half-width, ⅰ -> i) and lower case: the form every comparison uses."""
    return unicodedata.normalize("NFKC", text).lower()


def locate_answer(text: str, marker: str) -> tuple[int, str] | None:
    """(where the last ``marker`` starts, the answer span after it), matched after normalisation; None if absent.

    The span runs to the end of the marker's line; an empty rest of line falls through to the next non-empty line,
    as models often break after the marker.
    """
    norm_text, norm_marker = normalize(text), normalize(marker).strip()
    at = norm_text.rfind(norm_marker)
    if at < 0:
        return None
    lines = norm_text[at + len(norm_marker):].split("\n")
    return at, next((line.strip() for line in lines if line.strip()), "")


def answer_span(text: str, marker: str) -> str | None:
    """The answer span after the last ``marker`` (see :func:`locate_answer`), or None when there is no marker."""
    found = locate_answer(text, marker)
    return found[1] if found else None


def _short(text: str, n: int = 60) -> str:
    text = text.replace("\n", " ").strip()
    return text if len(text) <= n else text[: n - 1] + "…"


def extract_answer(
    text: str,
    question: Question,
    *,
    labels: Sequence[str] | None = None,
    marker: str | None = None,
    fuzzy_threshold: float = 0.8,
) -> Extraction:
    """Parse ``text`` for ``question``. ``labels`` are the labels the prompt displayed, in choice order."""
    if marker:
        span = answer_span(text, marker)
        if span is None:
            return Extraction(reason=f"no answer marker {marker.strip()!r} in the completion")
    else:
        span = normalize(text).strip()
    if not span:
        return Extraction(reason="empty answer")
    if question.qtype == "numeric":
        found = _NUMBER.search(span.replace(",", ""))
        if not found:
            return Extraction(reason=f"no number in answer {_short(span)!r}")
        return Extraction((found.group(),), method="number")
    return _choice_answer(span, question, labels or question.labels, fuzzy_threshold)


def _choice_answer(span: str, question: Question, labels: Sequence[str], threshold: float) -> Extraction:
    index = {normalize(label).strip(_PUNCT): i for i, label in enumerate(labels[: len(question.choices)])}
    picked = sorted({LABELS[index[tok]] for tok in _TOKEN.findall(span) if tok in index})
    if picked:
        return Extraction(tuple(picked), method="label")
    cleaned = span.strip(_PUNCT)
    choices = [normalize(c).strip(_PUNCT) for c in question.choices]
    if cleaned in choices:
        return Extraction((LABELS[choices.index(cleaned)],), method="choice-text")
    ratios = [difflib.SequenceMatcher(None, cleaned, c).ratio() for c in choices]
    best = max(range(len(choices)), key=ratios.__getitem__)
    if ratios[best] >= threshold and ratios.count(ratios[best]) == 1:
        return Extraction((LABELS[best],), method="choice-text-fuzzy")
    return Extraction(reason=f"no choice label or choice text in answer {_short(span)!r}")
