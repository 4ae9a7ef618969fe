"""Paired comparisons and flips between constructed runs."""

from __future__ import annotations

import json

import pytest
from test_report_factories import outcome_run

from medjp_agent.report import build_report, compare_runs, diff_runs, mcnemar_exact
from medjp_agent.results import read_run

BASE = [True] * 30 + [False] * 30
# vs BASE: loses 2 questions, gains 20
BETTER = [True] * 28 + [False] * 2 + [True] * 20 + [False] * 10
# vs BASE: loses 3, gains 4
SIMILAR = [True] * 27 + [False] * 3 + [True] * 4 + [False] * 26


@pytest.fixture
def runs(tmp_path):
    return [read_run(outcome_run(tmp_path / name, outcomes))
            for name, outcomes in (("base", BASE), ("better", BETTER), ("similar", SIMILAR))]


def test_compare_counts_deltas_and_holm(runs):
    base, better, similar = runs
    got = {c.run: c for c in compare_runs(base, [better, similar], seed=0)}
    b = got["better"]
    assert (b.n, b.lost, b.gained) == (60, 2, 20)
    assert b.delta == pytest.approx(18 / 60) and b.baseline_accuracy == 0.5
    assert b.p_value == pytest.approx(mcnemar_exact(2, 20))
    assert b.ci_low < b.delta < b.ci_high and b.ci_low > 0
    s = got["similar"]
    assert (s.lost, s.gained) == (3, 4) and s.p_value == 1.0
    # Holm with two tests: the smaller p doubled, the larger kept (already 1).
    assert b.p_holm == pytest.approx(2 * b.p_value) and s.p_holm == 1.0
    assert b.significant and not s.significant


def test_compare_pairs_only_shared_questions(runs, tmp_path):
    base = runs[0]
    (c,) = compare_runs(base, [read_run(outcome_run(tmp_path / "partial", BETTER[:30]))])
    assert (c.n, c.lost, c.gained, c.baseline_accuracy) == (30, 2, 0, 1.0)
    assert compare_runs(base, [read_run(outcome_run(tmp_path / "disjoint", [True], prefix="x"))]) == ()


def test_build_report_defaults_to_first_run_and_adds_an_outside_baseline(runs):
    base, better, similar = runs
    report = build_report([better, similar])
    assert report.baseline == "better" and [c.run for c in report.comparisons] == ["similar"]
    report = build_report([better, similar], baseline=base)
    assert [r.label for r in report.runs] == ["base", "better", "similar"]
    assert report.comparison("better").significant and report.comparison("base") is None
    assert [v.status for v in report.verdicts] == ["no cut-off known"] * 3


def test_diff_lists_flips_with_both_answers_and_reasoning(runs):
    base, better, _ = runs
    d = diff_runs(base, better)
    assert (d.shared, d.gained, d.lost) == (60, 20, 2)
    lost = [f for f in d.flips if not f.gained]
    assert [f.id for f in lost] == ["q28", "q29"]
    assert lost[0].first.shown == "a" and lost[0].second.shown == "b"
    assert lost[0].first.reasoning == "reasoning base 28" and lost[0].second.reasoning == "reasoning better 28"


def test_diff_filters_by_category(runs):
    base, better, _ = runs
    d = diff_runs(base, better, categories={"循環器"})
    assert d.shared == 20 and {f.category for f in d.flips} == {"循環器"}
    assert len(d.flips) == sum(1 for i in range(60) if i % 3 == 0 and BASE[i] != BETTER[i])


def test_report_serialises_to_json_with_derived_figures(runs):
    base, better, _ = runs
    d = json.loads(json.dumps(build_report([base, better], diff=diff_runs(base, better)).to_dict()))
    assert d["runs"][1]["overall"]["accuracy"] == pytest.approx(0.8)
    assert d["comparisons"][0]["gained"] == 20 and d["comparisons"][0]["significant"] is True
    assert d["diff"]["gained"] == 20 and d["diff"]["flips"][0]["gained"] is False
    assert d["diff"]["flips"][0]["second"]["shown"] == "b"
    assert d["verdicts"][0]["status"] == "no cut-off known"


def test_local_model_paths_are_shown_by_name_hub_ids_whole():
    from medjp_agent.report.build import short_name

    assert short_name("/home/u/.cache/medjp/tiny-llama-l4") == "tiny-llama-l4"
    assert short_name("./models/swallow") == "swallow"
    assert short_name("tokyotech-llm/Swallow-70b-instruct-hf") == "tokyotech-llm/Swallow-70b-instruct-hf"
