"""Turn free model text into a canonical answer, or a reason why that failed. It never guesses.

Labels and numbers are read only where a model states its answer; the order of attempts is part of the contract:

1. with a format ``marker``: only the span after the *last* marker (no marker: failure);
2. an answer marker in the text (``答え：``, ``解答:``, ``正解は``, ``answer:``; the last one that holds labels or a
   choice's text);
3. a choice's exact text (or several, comma-separated): 「C.difficile …」 is that choice, not label ``c``;
4. an opening answer line: the text starts with labels (``a, c``, ``c (…)``, ``b: …``);
5. one clearly closest choice text;
6. a refusal or hedge ("cannot answer without the image") is a failure with reason ``refusal``;
7. a last line of labels only, or of one choice's exact text (reasoning first, the answer last);
8. calculation questions instead: a number on the answer line, or in a final statement (``… = 97です``).

A label is a whole token: ``b`` in ``B型肝炎``, ``β-D-グルカン`` or ``ビタミンB12`` is not a label, nor is the
English article in ``a definitive diagnosis``. Circled box digits (``①146②``) are never read as numbers.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace

from medjp_agent.data import LABELS, Question

_PUNCT = "。．.、，,：:;；!！?？「」『』()（）[]【】 \t"
_CIRCLED = re.compile("[\u2460-\u2473\u24ea\u2776-\u277f]")  # ①–⑳, ⓪, ❶–❿: answer-box marks, not digits
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_MARKER = re.compile(r"(?:最終的な)?(?:答え|解答|正解|(?:final |correct )?answer)\s*(?:は|:|is|=)+\s*")
_SEPARATOR = r"\s*(?:,|、|/|・|&|\band\b|および|及び|と|\s)\s*"
_AFTER_LIST = r"(?=$|[\s.:,、)(\]。」』]|です|が|を|は|で|の)"
_REFUSAL = re.compile(
    r"できません|できない|出来ません|選べません|わかりません|分かりません|わからない|分からない|見えません"
    r"|不可能|難しい|困難|申し訳|不足して|足りません|足りない|不明|提供して|提示して|教えて|お知らせ|お願い|お試し"
    r"|cannot|can't|can not|unable to|not possible|impossible|sorry|not provided|no image|more information"
    r"|additional (?:context|information)|enough (?:information|context)|lacks|no correct answer|none of the options"
    r"|not (?:entirely )?clear|missing|please provide|no answer can be given"
)
# A final statement of a number: 「… = 97です」「リスク比は8.5倍となる」「≈ 97」 at the end of a line.
_FINAL_NUMBER = re.compile(
    r"(?:=|≈|≒|は|\bis)\s*(?:約\s*)?(-?\d+(?:\.\d+)?)[^=\d\n]{0,12}?\s*(?:\([^)]*\))?\s*"
    r"(?:です|となる|となります|である|になる|になります)?\s*[。.]?\s*$"
)
# The denominator of a unit (「/1,000人」「/人口1,000対」) is not an answer.
_PER_UNIT = re.compile(r"/\s*(?:人口)?\d+(?=\s*[^\d\s.=+×÷*-])")
#: Single-letter labels that are also English words; followed by a word they are the word.
_WORD_LABELS = frozenset({"a", "i"})


@dataclass(frozen=True)
class Extraction:
    """A parsed answer (canonical labels, or one numeric string) or the reason nothing could be parsed.

    ``method`` says how the answer was found: ``marker``, ``label-line``, ``choice-text``, ``choice-text-fuzzy``,
    ``number`` or ``final-line``; a failure keeps the method empty.
    """

    answer: tuple[str, ...] = ()
    reason: str | None = None
    method: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def normalize(text: str) -> str:
    """NFKC (full-width -> half-width, ⅰ -> i) and lower case: the form every comparison uses.

    Circled box digits are kept as ``#``: NFKC would turn ``①0.94`` into ``10.94``."""
    return unicodedata.normalize("NFKC", _CIRCLED.sub("#", text)).lower()


def locate_answer(text: str, marker: str) -> tuple[int, str] | None:
    """(where the last ``marker`` starts, the answer span after it), matched after normalisation; None if absent.

    The span runs to the end of the marker's line; an empty rest of line falls through to the next non-empty line,
    as models often break after the marker.
    """
    norm_text, norm_marker = normalize(text), normalize(marker).strip()
    at = norm_text.rfind(norm_marker)
    if at < 0:
        return None
    return at, _rest_of_line(norm_text[at + len(norm_marker):])


def answer_span(text: str, marker: str) -> str | None:
    """The answer span after the last ``marker`` (see :func:`locate_answer`), or None when there is no marker."""
    found = locate_answer(text, marker)
    return found[1] if found else None


def _rest_of_line(text: str) -> str:
    return next((line.strip() for line in text.split("\n") if line.strip()), "")


def _short(text: str, n: int = 60) -> str:
    text = text.replace("\n", " ").strip()
    return text if len(text) <= n else text[: n - 1] + "…"


class _Reader:
    """The patterns of one question's labels, and the readers that use them."""

    def __init__(self, question: Question, labels: Sequence[str], threshold: float):
        shown = [normalize(label).strip(_PUNCT) for label in labels[: len(question.choices)]]
        self.index = {label: i for i, label in enumerate(shown)}
        one = "|".join(re.escape(label) for label in sorted(shown, key=len, reverse=True))
        item = rf"[(\[]?(?:{one})[)\]]?"
        self.labels = re.compile(rf"{item}(?:{_SEPARATOR}{item})*{_AFTER_LIST}") if shown else None
        self.choices = [normalize(c).strip(_PUNCT) for c in question.choices]
        self.threshold = threshold

    def label_list(self, text: str, *, whole: bool = False) -> tuple[str, ...]:
        """Canonical labels of a label list opening ``text`` (``whole``: the list is all of ``text``)."""
        text = text.strip()
        found = self.labels.match(text) if self.labels else None
        if not found:
            return ()
        rest = text[found.end():]
        if whole and rest.strip(_PUNCT):
            return ()
        tokens = [t for t in re.split(_SEPARATOR, found.group()) if t.strip("()[]")]
        if len(tokens) == 1 and tokens[0].strip("()[]") in _WORD_LABELS and re.match(r"\s+[a-z]{2,}", rest):
            return ()  # "a definitive answer…": the article, not a label
        if re.match(r"\.[a-z]", rest):
            return ()  # "c.difficile": an abbreviation, not a label
        return tuple(sorted({LABELS[self.index[t.strip("()[]")]] for t in tokens}))

    def choice_text(self, span: str, *, fuzzy: bool = True) -> Extraction | None:
        """The choice(s) whose text ``span`` is: exactly (several joined by commas), or with ``fuzzy`` the one
        clearly closest choice to a one-line span."""
        cleaned = span.strip(_PUNCT)
        if cleaned in self.choices:
            return Extraction((LABELS[self.choices.index(cleaned)],), method="choice-text")
        pieces = [p.strip(_PUNCT) for p in re.split(r"[,、]", cleaned)]
        if len(pieces) > 1 and all(p in self.choices for p in pieces):
            return Extraction(tuple(sorted({LABELS[self.choices.index(p)] for p in pieces})), method="choice-text")
        if not fuzzy or "\n" in cleaned or not cleaned:
            return None
        # The quick upper bounds skip most full comparisons: a choice whose bound is under the threshold can be
        # neither the answer nor tied with it (a third of a cached run's time went here).
        matchers = [difflib.SequenceMatcher(None, cleaned, c) for c in self.choices]
        ratios = [m.ratio() if m.real_quick_ratio() >= self.threshold and m.quick_ratio() >= self.threshold else 0.0
                  for m in matchers]
        best = max(range(len(self.choices)), key=ratios.__getitem__)
        if ratios[best] >= self.threshold and ratios.count(ratios[best]) == 1:
            return Extraction((LABELS[best],), method="choice-text-fuzzy")
        return None


def _markers(text: str) -> list[str]:
    """The answer span after each answer marker in ``text``, last first."""
    return [_rest_of_line(text[m.end():]) for m in reversed(list(_MARKER.finditer(text)))]


def _plain(span: str) -> str:
    """``span`` without box marks, thousands separators and unit denominators."""
    return _PER_UNIT.sub("/", _THOUSANDS.sub("", span.replace("#", "")))


def _number(span: str) -> str | None:
    """The number an answer line states: its only number, or the result of its final statement; None when it
    holds none or several (「①13 torr, ②16 torr」 is not one answer)."""
    span = _plain(span)
    numbers = _NUMBER.findall(span)
    if len(numbers) == 1:
        return numbers[0]
    final = _FINAL_NUMBER.search(span) if numbers else None
    return final.group(1) if final else None


def _final_number(line: str) -> str | None:
    """The number a final line states: a short line holding one number (「③ 16.000」), or the result its last
    clause with a number states (「…, the value is 146 mg/dl.」); a last clause like 「肥満度27.3%に相当する」
    after 「…は163で」 states no one result, so nothing is read."""
    plain = _plain(line)
    numbers = _NUMBER.findall(plain)
    if len(numbers) == 1 and len(plain) <= 20:
        return numbers[0]
    clauses = [c for c in re.split(r"[、,。]|\.\s", plain) if _NUMBER.search(c)]
    found = _FINAL_NUMBER.search(clauses[-1]) if clauses else None
    return found.group(1) if found else None


def _numeric_answer(text: str) -> Extraction:
    for span in _markers(text):
        if (number := _number(span)) is not None:
            return Extraction((number,), method="marker")
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if _REFUSAL.search(text):
        return Extraction(reason="refusal")
    if len(lines) == 1 and (number := _number(lines[0])) is not None:
        return Extraction((number,), method="number")
    if lines and (number := _final_number(lines[-1])) is not None:
        return Extraction((number,), method="final-line")
    return Extraction(reason=f"no number (or several) on an answer line in {_short(text)!r}")


def _choice_answer(text: str, reader: _Reader) -> Extraction:
    for span in _markers(text):
        if picked := reader.label_list(span):
            return Extraction(picked, method="marker")
        if found := reader.choice_text(span):
            return Extraction(found.answer, method="marker")
    # A choice's own text first: 「C.difficile …」 or 「Aは右心房である。」 is that choice, not a label.
    if found := reader.choice_text(text, fuzzy=False):
        return found
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if picked := reader.label_list(lines[0]):
        return Extraction(picked, method="label-line")
    if found := reader.choice_text(text):
        return found
    if _REFUSAL.search(text):
        return Extraction(reason="refusal")
    if picked := reader.label_list(lines[-1], whole=True):
        return Extraction(picked, method="label-line")
    if found := reader.choice_text(lines[-1], fuzzy=False):  # reasoning, then the chosen text on its own line
        return found
    return Extraction(reason=f"no answer line, marker or choice text in {_short(text)!r}")


def extract_answer(
    text: str,
    question: Question,
    *,
    labels: Sequence[str] | None = None,
    marker: str | None = None,
    fuzzy_threshold: float = 0.8,
) -> Extraction:
    """Parse ``text`` for ``question``. ``labels`` are the labels the prompt displayed, in choice order.

    With ``marker`` only the span after its last occurrence is read; without, the whole text (see the module doc).
    """
    if marker:
        span = answer_span(text, marker)
        if span is None:
            return Extraction(reason=f"no answer marker {marker.strip()!r} in the completion")
    else:
        span = normalize(text).strip()
    if not span:
        return Extraction(reason="empty answer")
    if question.qtype == "numeric":
        got = _numeric_answer(span)
    else:
        got = _choice_answer(span, _Reader(question, labels or question.labels, fuzzy_threshold))
    # After a format's marker the span is the answer line the marker introduced.
    return replace(got, method="marker") if marker and got.method in ("label-line", "number") else got
