"""Answer extraction, grading (with IgakuQA's special cases) and aggregation."""

from __future__ import annotations

import pytest

from medjp_agent.data import Question
from medjp_agent.scoring import Extraction, QuestionResult, aggregate, aggregate_by, extract_answer, grade

MCQ = Question("q1", 2018, "112-A", "どれか。", ("急性膵炎", "胆石症", "Cushing症候群", "痛風", "鉄欠乏性貧血"),
               ("a", "c"), forbidden=("e",))
NUM = Question("q2", 2018, "112-C", "求めよ。", (), ("146",))


@pytest.mark.parametrize("text,expected", [
    ("答え：a, c", ("a", "c")),
    ("答え：a,c", ("a", "c")),
    ("答え：aとc", ("a", "c")),
    ("答え：ａ、ｃ", ("a", "c")),
    ("答え：Ａ，Ｃ", ("a", "c")),
    ("答え: C and A", ("a", "c")),
    ("理由を述べる。答え：b と考えたが誤り。\n最終的に\n答え：\nc", ("c",)),  # last marker; answer on next line
    ("答え：(c)", ("c",)),
    ("答え：Cushing症候群", ("c",)),  # choice text, exact
    ("答え：クッシング症候群", ()),  # not similar enough: no guess
    ("答え：Cushng症候群", ("c",)),  # fuzzy choice text
])
def test_label_and_text_extraction(text, expected):
    got = extract_answer(text, MCQ, marker="答え：")
    assert got.answer == expected
    assert got.ok == bool(expected)


def test_display_labels_map_back_to_canonical():
    assert extract_answer("答え：ア、ウ", MCQ, marker="答え：", labels=tuple("アイウエオ")).answer == ("a", "c")
    assert extract_answer("Answer: 2", MCQ, marker="Answer:", labels=tuple("12345")).answer == ("b",)
    assert extract_answer("答え：ⅲ", MCQ, marker="答え：", labels=tuple("ⅰⅱⅲⅳⅴ")).answer == ("c",)


def test_katakana_words_are_not_labels():
    got = extract_answer("答え：ウイルス性", MCQ, marker="答え：", labels=tuple("アイウエオ"))
    assert not got.ok and "ウイルス性" in got.reason


def test_failures_carry_reasons():
    assert extract_answer("考え中", MCQ, marker="答え：").reason == "no answer marker '答え：' in the completion"
    assert extract_answer("答え：", MCQ, marker="答え：").reason == "empty answer"
    assert extract_answer("答え：不明", NUM, marker="答え：").reason == "refusal"
    assert "no number (or several)" in extract_answer("答え：多い", NUM, marker="答え：").reason
    assert "no number (or several)" in extract_answer("答え：① 13 torr, ② 16 torr", NUM, marker="答え：").reason


@pytest.mark.parametrize("text,expected", [
    ("答え：146", "146"), ("答え：１４６ mL/分", "146"), ("答え：約146mg/dL", "146"), ("答え：1,460", "1460"),
    ("答え：-3.5", "-3.5"),
])
def test_numeric_extraction(text, expected):
    assert extract_answer(text, NUM, marker="答え：").answer == (expected,)


def test_extraction_without_marker_reads_whole_text():
    assert extract_answer("a,c", MCQ) == Extraction(("a", "c"), method="label-line")


def test_grade_exact_set_match_points_and_forbidden():
    q = Question("q", 2018, "112-B", "t", tuple("abcde"), ("a", "c"), points=3, forbidden=("e",))
    assert grade(q, ("c", "a")).correct and grade(q, ("c", "a")).points == 3
    wrong = grade(q, ("a", "c", "e"))
    assert (wrong.correct, wrong.points, wrong.forbidden_picked) == (False, 0, ("e",))
    assert not grade(q, ("a",)).correct


def test_igakuqa_special_cases():
    either = Question("112B30", 2018, "112-B", "t", tuple("abcde"), ("a",), accepted=(("d",),), points=3)
    assert grade(either, ("a",)).correct and grade(either, ("d",)).correct
    assert not grade(either, ("a", "d")).correct and not grade(either, ("b",)).correct
    withdrawn = Question("116A71", 2022, "116-A", "t", tuple("abcde"), ("e",))
    assert grade(withdrawn, ()).correct and grade(withdrawn, ("a",)).points == 1


def test_numeric_grading_is_exact_string_as_igakuqa():
    q = Question("n", 2018, "112-C", "t", (), ("04",))
    assert grade(q, ("04",)).correct and not grade(q, ("4",)).correct


def test_aggregates_by_group():
    qs = [Question(f"q{i}", 2018 + i % 2, "112-A" if i < 2 else "112-B", "t", tuple("abcde"), ("a",),
                   points=1 + (i == 3), category="循環器" if i % 2 else "小児科", forbidden=("b",)) for i in range(4)]
    answers = [("a",), ("b",), (), ("a",)]
    results = [QuestionResult.scored(q, Extraction(a, reason=None if a else "empty answer")) for q, a in zip(qs, answers)]
    total = aggregate(results)
    assert (total.n, total.correct, total.points, total.points_possible) == (4, 2, 3, 5)
    assert (total.forbidden_picked, total.parse_failures, total.accuracy) == (1, 1, 0.5)
    by_year = aggregate_by(results, "year")
    assert by_year["2018"].correct == 1 and by_year["2019"].points == 2
    assert set(aggregate_by(results, "qtype")) == {"single"}
    assert QuestionResult.from_dict(results[1].to_dict()) == results[1]
