"""Calculation questions graded by their answer boxes (解答：①.②g/日 …); `--parse strict` keeps IgakuQA's strings."""

from __future__ import annotations

import pytest

from medjp_agent.data import Question
from medjp_agent.scoring import Extraction, QuestionResult, grade
from medjp_agent.scoring.numeric import AnswerBoxes, answer_boxes

ROUND_1 = "ただし、小数第2位以下の数値が得られた場合には、小数第2位を四捨五入すること。"
ROUND_0 = "ただし、小数点以下の数値が得られた場合には、小数第1位を四捨五入すること。"


def numeric(text: str, gold: str) -> Question:
    return Question("n", 2022, "116-B", text, (), (gold,))


@pytest.mark.parametrize("tail,expected", [
    (ROUND_1 + "解答：①.②g/日", AnswerBoxes("#", 1, 1)),
    (ROUND_1 + "解答：①②.③/人口1,000対", AnswerBoxes("##", 1, 1)),
    (ROUND_0 + "解答：1, ①②③ kcal", AnswerBoxes("1###", 0, 0)),
    ("小数第3位以下の数値が得られた場合には、小数第3位を四捨五入すること。解答：①.②③", AnswerBoxes("#", 2, 2)),
    ("解答：①②③mL", AnswerBoxes("###", 0, None)),
    ("求めよ。", None),
])
def test_answer_box_templates(tail, expected):
    assert answer_boxes("問題文。" + tail) == expected


@pytest.mark.parametrize("tail,gold,answer,correct", [
    (ROUND_1 + "解答：①.②g/日", "21", "2.1", True),  # gold digits 21 mean 2.1
    (ROUND_1 + "解答：①.②g/日", "21", "2.05", True),  # rounded half up as the question says
    (ROUND_1 + "解答：①.②g/日", "21", "21", False),  # 21 does not fit ①.②
    (ROUND_1 + "解答：①②.③/人口1,000対", "100", "10.0", True),
    (ROUND_1 + "解答：①②.③/人口1,000対", "100", "10", True),
    (ROUND_0 + "解答：1, ①②③ kcal", "130", "1130", True),
    (ROUND_0 + "解答：1, ①②③ kcal", "130", "2130", False),  # the printed 1 must match
    (ROUND_0 + "解答：1, ①②③ kcal", "130", "130", False),
    (ROUND_1 + "解答：①.②", "8.5", "8.5", True),  # a gold that keeps its point
    ("小数第3位以下の数値が得られた場合には、小数第3位を四捨五入すること。解答：①.②③", "7.20", "7.2", True),
    (ROUND_1 + "解答：①.②", "04", "0.375", True),
    (ROUND_1 + "解答：①.②", "04", "4", False),
    ("解答：①②③mL", "325", "325", True),
    (ROUND_0 + "解答：①②Torr", "97", "96.64", True),
    (ROUND_0 + "解答：①②Torr", "97", "-97", False),
])
def test_grading_by_the_boxes(tail, gold, answer, correct):
    q = numeric("問題文。" + tail, gold)
    g = grade(q, (answer,))
    assert (g.correct, g.by_template) == (correct, True)


def test_literal_mode_and_questions_without_a_template_compare_strings():
    boxed = numeric(ROUND_1 + "解答：①.②g/日", "21")
    assert not grade(boxed, ("2.1",), literal=True).correct and grade(boxed, ("21",), literal=True).correct
    plain = numeric("求めよ。", "04")
    assert grade(plain, ("04",)).correct and not grade(plain, ("4",)).correct
    assert not grade(plain, ("04",)).by_template


def test_result_records_template_grading_but_strict_stays_literal():
    q = numeric(ROUND_1 + "解答：①.②g/日", "21")
    lenient = QuestionResult.scored(q, Extraction(("2.1",), method="marker"))
    assert lenient.correct and lenient.method == "marker+template"
    strict = QuestionResult.scored(q, Extraction(("2.1",), method="igakuqa-strict"))
    assert not strict.correct and strict.method == "igakuqa-strict"
    assert QuestionResult.from_dict(lenient.to_dict()) == lenient


def test_lenient_score_credits_gpt4s_right_calculation_answers(igakuqa):
    """IgakuQA's GPT-4 answered 114C75 ``①10.0/人口1,000対`` (gold 100), 116B50 ``2.1g/日`` (gold 21), 116F74
    ``0.4`` (gold 04), 113F84 ``7.2`` (gold 7.20) …: all right, and all marked wrong by string equality."""
    from medjp_agent.baseline import read_predictions, score_predictions
    from medjp_agent.data import load_dataset

    questions = [q for q in load_dataset(igakuqa / "data", lenient=True) if q.qtype == "numeric"]
    preds = read_predictions(igakuqa / "baseline_results", "gpt4")
    lenient, _, _ = score_predictions(questions, preds, "lenient")
    strict, _, _ = score_predictions(questions, preds, "strict")
    right = {r.id for r in lenient if r.correct}
    assert right == {"112C66", "113A75", "113F84", "114C75", "114D75", "114F75", "115C75", "115F75", "116B50",
                     "116F74"}
    assert all(r.method.endswith("+template") for r in lenient if r.correct)
    assert not any(r.correct for r in strict)
