"""NMLE pass/fail on constructed exams: pass, each way to fail, scaled and approximate verdicts, no cut-off."""

from __future__ import annotations

import dataclasses

import pytest
from test_report_factories import exam_2019, result

from medjp_agent.report import exam_verdicts, load_cutoffs


def verdict(rows, **kw):
    (v,) = exam_verdicts(rows, run="r", **kw)
    return v


def test_shipped_cutoffs_are_the_official_figures_with_their_source():
    cutoffs = load_cutoffs()
    official = {2018: (112, 160, 200, 208, 299), 2019: (113, 160, 200, 209, 296), 2020: (114, 158, 197, 217, 299),
                2021: (115, 160, 200, 209, 300), 2022: (116, 158, 197, 214, 297)}
    got = {y: (c.exam, c.compulsory_required, c.compulsory_total, c.general_required, c.general_total)
           for y, c in cutoffs.items()}
    assert got == official
    for c in cutoffs.values():
        assert c.forbidden_max == 3
        assert c.compulsory_blocks == ("B", "E")
        assert f"第{c.exam}回医師国家試験" in c.source and "厚生労働省" in c.source


def test_pass_at_exactly_the_cutoffs():
    v = verdict(exam_2019(160, 209, forbidden=3))
    assert v.status == "pass" and not v.approximate and v.notes == ()
    assert (v.exam, v.compulsory.points, v.compulsory.possible, v.compulsory.required) == (113, 160, 200, 160)
    assert (v.general.points, v.general.possible, v.general.required) == (209, 296, 209)
    assert v.forbidden == 3 and "第113回" in v.source


def test_fail_by_compulsory():
    v = verdict(exam_2019(159, 250))
    assert v.status == "fail" and v.compulsory.passed is False and v.general.passed is True


def test_fail_by_general_cutoff():
    v = verdict(exam_2019(200, 208))
    assert v.status == "fail" and v.compulsory.passed is True and v.general.passed is False


def test_fail_by_four_forbidden_choices_despite_the_points():
    v = verdict(exam_2019(200, 280, forbidden=4))
    assert v.status == "fail" and v.compulsory.passed and v.general.passed and v.forbidden == 4


def test_subset_is_approximate_and_scales_the_cutoff():
    rows = exam_2019(170, 230)
    dropped = {"113E0"}  # one 3-point compulsory question answered right: 167 of 197 points remain
    v = verdict([r for r in rows if r.id not in dropped])
    assert v.approximate and v.status == "pass"
    assert v.compulsory.possible == 197 and v.compulsory.required == pytest.approx(160 * 197 / 200)
    assert any("197 of 200" in n for n in v.notes)


def test_scaled_cutoff_decides_at_its_share():
    # Three wrong general questions dropped: 293 of 296 points, cut-off 209 × 293/296 = 206.9; 207 passes, 206 fails.
    dropped = {f"113{'ACDF'[i % 4]}{i}" for i in (293, 294, 295)}
    def judged(points):
        return verdict([r for r in exam_2019(200, points) if r.id not in dropped]).general
    assert judged(207).required == pytest.approx(209 * 293 / 296)
    assert judged(207).passed is True and judged(206).passed is False


def test_filtered_run_is_approximate_even_with_full_totals():
    v = verdict(exam_2019(180, 230), subset=("filtered: text_only=True",))
    assert v.approximate and v.status == "pass" and v.notes == ("filtered: text_only=True",)


def test_missing_part_is_undetermined_unless_another_criterion_fails():
    general_only = [r for r in exam_2019(200, 250) if r.section not in ("113-B", "113-E")]
    assert verdict(general_only).status == "undetermined"
    assert verdict(general_only).compulsory.passed is None
    assert verdict([r for r in exam_2019(200, 100) if r.section not in ("113-B", "113-E")]).status == "fail"


def test_year_without_cutoff_says_so():
    v = verdict([result("s1", year=2025, section="S-A"), result("s2", year=2025, section="S-B", correct=False)])
    assert v.status == "no cut-off known" and v.compulsory is None and v.exam is None


def test_one_verdict_per_year_in_order():
    rows = [dataclasses.replace(r, year=2021) for r in exam_2019(150, 250)] + exam_2019(190, 250)
    got = exam_verdicts(rows, run="r")
    assert [(v.year, v.status) for v in got] == [(2019, "pass"), (2021, "fail")]
    assert got[1].general.required == pytest.approx(209 * 296 / 300) and got[1].approximate
