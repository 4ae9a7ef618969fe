"""IgakuQA's calculation questions: the answer-box template a question ends with, and grading by it.

The exam prints the boxes an examinee marks, e.g. ``解答：①.②g/日`` or ``解答：1, ①②③ kcal``, and IgakuQA's gold
is the digits marked in them (``21`` means 2.1, ``130`` under ``1, ①②③`` means 1,130; a few golds keep the point,
``8.5``, ``7.20``). A number is graded by laying it into the boxes: rounded as the question instructs (小数第N位を
四捨五入), padded to the boxes, any printed digits (the ``1`` of ``1, ①②③``) checked, and the box digits compared
with the gold digits, decimal points ignored on both sides.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩"
# The template is the box run after the last 解答: circled boxes, a decimal point, printed digits, commas, spaces.
_TEMPLATE = re.compile(rf"解答[：:]\s*((?:[{_CIRCLED}0-9.,，．]|\s)*[{_CIRCLED}](?:[{_CIRCLED}0-9.．]|\s)*)")
# 「小数第2位を四捨五入」 keeps one decimal; 「小数第1位を四捨五入」 keeps none.
_ROUNDING = re.compile(r"小数第([0-9０-９一二三四五])位を四捨五入")
_KANJI_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5}


@dataclass(frozen=True)
class AnswerBoxes:
    """The boxes of one calculation question.

    Attributes:
        integer: The printed pattern before the point: ``#`` for a box, a digit for a printed digit (``1###``).
        decimals: Number of boxes after the point.
        keep_decimals: Decimals the question's rounding instruction keeps (None: no instruction, the boxes decide).
    """

    integer: str
    decimals: int
    keep_decimals: int | None = None

    @property
    def places(self) -> int:
        return self.keep_decimals if self.keep_decimals is not None else self.decimals

    def lay(self, value: str) -> str | None:
        """The digits a number fills the boxes with, or None when it cannot fill them (too long, wrong printed
        digit, not a number)."""
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        if number < 0:
            return None
        rounded = number.quantize(Decimal(1).scaleb(-self.places), rounding=ROUND_HALF_UP)
        text = f"{rounded:.{self.decimals}f}" if self.places <= self.decimals else f"{rounded:f}"
        whole, _, frac = text.partition(".")
        if len(frac) != self.decimals or len(whole) > len(self.integer):
            return None
        whole = whole.rjust(len(self.integer), "0")
        if any(p != "#" and p != d for p, d in zip(self.integer, whole)):
            return None
        return "".join(d for p, d in zip(self.integer, whole) if p == "#") + frac


def answer_boxes(question_text: str) -> AnswerBoxes | None:
    """The answer-box template of a calculation question, or None when the text has none."""
    found = list(_TEMPLATE.finditer(unicodedata.normalize("NFC", question_text)))
    if not found:
        return None
    pattern = re.sub(r"[\s,，]", "", found[-1].group(1)).replace("．", ".")
    whole, _, frac = pattern.partition(".")
    integer = "".join("#" if c in _CIRCLED else c for c in whole)
    if not integer or any(c not in "#0123456789" for c in integer) or any(c not in _CIRCLED for c in frac):
        return None
    rounding = _ROUNDING.search(question_text)
    keep = None
    if rounding:
        n = rounding.group(1)
        keep = (_KANJI_DIGITS[n] if n in _KANJI_DIGITS else int(unicodedata.normalize("NFKC", n))) - 1
    return AnswerBoxes(integer, len(frac), keep)


def digits(text: str) -> str:
    """A gold or box string without its decimal point (``"7.20"`` -> ``"720"``)."""
    return text.replace(".", "").strip()


def numeric_correct(question_text: str, gold: tuple[str, ...], answer: tuple[str, ...]) -> bool | None:
    """Whether ``answer`` fills the boxes with the gold digits; None when the question has no box template."""
    boxes = answer_boxes(question_text)
    if boxes is None:
        return None
    if len(answer) != 1 or len(gold) != 1:
        return False
    laid = boxes.lay(answer[0])
    return laid is not None and laid == digits(gold[0])
