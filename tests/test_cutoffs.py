"""Official pass criteria of the 114th (2020) and 116th (2022) exams, and the 禁忌肢 criterion counted by question."""

from __future__ import annotations

from medjp_agent.report import exam_verdicts, load_cutoffs
from medjp_agent.scoring import QuestionResult, aggregate


def test_114th_and_116th_marked_totals_and_sources():
    c114, c116 = load_cutoffs()[2020], load_cutoffs()[2022]
    assert (c114.compulsory_required, c114.compulsory_total, c114.general_required, c114.general_total) == (
        158, 197, 217, 299)
    assert (c116.compulsory_required, c116.compulsory_total, c116.general_required, c116.general_total) == (
        158, 197, 214, 297)
    for c, year in ((c114, 2020), (c116, 2022)):
        assert f"mhlw.go.jp/general/sikaku/successlist/{year}/" in c.source and f"第{c.exam}回" in c.source


def _row(qid: str, forbidden: tuple[str, ...]) -> QuestionResult:
    return QuestionResult(id=qid, year=2019, section="113-A", category="", qtype="multi", gold=("a", "b"),
                          answer=("c", "d"), correct=False, points=0, points_possible=1, forbidden_picked=forbidden)


def test_forbidden_criterion_counts_questions_not_choices():
    # Three questions, one of them with two forbidden choices picked: 3 questions, within the limit of 3.
    rows = [_row("q1", ("c", "d")), _row("q2", ("c",)), _row("q3", ("d",)), _row("q4", ())]
    (v,) = exam_verdicts(rows)
    assert v.forbidden == 3 and aggregate(rows).forbidden_picked == 3
    (v4,) = exam_verdicts([*rows, _row("q5", ("c",))])
    assert v4.forbidden == 4 and v4.status == "fail"


def test_whole_igakuqa_years_with_exactly_the_marked_questions_are_exact(igakuqa):
    from medjp_agent.baseline import read_predictions, score_predictions
    from medjp_agent.data import load_dataset

    questions = [q for q in load_dataset(igakuqa / "data", lenient=True) if q.year in (2020, 2022)]
    results, missing, _ = score_predictions(questions, read_predictions(igakuqa / "baseline_results", "gpt4"))
    assert not missing
    verdicts = exam_verdicts(results)
    assert [v.year for v in verdicts] == [2020, 2022]
    for v in verdicts:
        assert (v.compulsory.possible, v.general.possible) == (v.compulsory.official_total, v.general.official_total)
        assert not v.compulsory.scaled and not v.general.scaled
        assert not v.approximate and v.notes == () and v.status == "pass"  # IgakuQA: GPT-4 passes both years
