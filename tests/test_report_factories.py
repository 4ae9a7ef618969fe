"""Builders of question results, exams and run folders shared by the report tests (plus a check of the builders)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medjp_agent.results import RunManifest, RunWriter, read_run
from medjp_agent.scoring import QuestionResult


def result(qid: str, *, year: int = 2019, section: str = "113-A", correct: bool = True, points_possible: int = 1,
           forbidden: Sequence[str] = (), category: str = "循環器", reasoning: str = "") -> QuestionResult:
    """A single-answer question whose gold is ``a``; a wrong answer is ``b`` (or a forbidden choice)."""
    answer = ("a",) if correct else tuple(forbidden) or ("b",)
    return QuestionResult(id=qid, year=year, section=section, category=category, qtype="single", gold=("a",),
                          answer=answer, correct=correct, points=points_possible if correct else 0,
                          points_possible=points_possible, forbidden_picked=tuple(forbidden), reasoning=reasoning)


def exam_2019(compulsory_points: int, general_points: int, forbidden: int = 0) -> list[QuestionResult]:
    """A 113th-exam-shaped run with the official totals: 必修 50×1 + 50×3 = 200 points in blocks B and E,
    一般+臨床 296 one-point questions in A/C/D/F plus one excluded (0-point) question, all answered right.

    The run earns ``compulsory_points`` and ``general_points`` and picks ``forbidden`` 禁忌肢 (on wrong general
    questions).
    """
    threes = min(50, compulsory_points // 3)
    ones = compulsory_points - 3 * threes
    rows = [result(f"113B{i}", section="113-B", correct=i < ones) for i in range(50)]
    rows += [result(f"113E{i}", section="113-E", points_possible=3, correct=i < threes) for i in range(50)]
    blocks = "ACDF"
    general = [result(f"113{blocks[i % 4]}{i}", section=f"113-{blocks[i % 4]}", correct=i < general_points,
                      forbidden=("e",) if general_points <= i < general_points + forbidden else ())
               for i in range(296)]
    return rows + general + [result("113C999", section="113-C", points_possible=0, correct=True)]


def write_run(run_dir: Path, results: Sequence[QuestionResult], *, kind: str = "eval", model: str = "m",
              filters: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``results`` as a finished run folder with the project's own writer."""
    manifest = RunManifest.create(name=run_dir.name, kind=kind, data="test", model=model, filters=filters or {},
                                  n_questions=len(results), extra=extra or {})
    writer = RunWriter(run_dir, manifest)
    for r in results:
        writer.write(r)
    writer.finalize(n_expected=len(results))
    return run_dir


def outcome_run(run_dir: Path, outcomes: Sequence[bool], *, prefix: str = "q", **kw: Any) -> Path:
    """A run over questions q0..qN of the sample exam's year (2025, no cut-off), correct where ``outcomes`` says."""
    rows = [result(f"{prefix}{i}", year=2025, section="S-A" if i % 2 else "S-B", correct=ok,
                   category="循環器" if i % 3 == 0 else "小児科", reasoning=f"reasoning {run_dir.name} {i}")
            for i, ok in enumerate(outcomes)]
    return write_run(run_dir, rows, **kw)


def test_exam_2019_has_the_official_totals():
    rows = exam_2019(161, 210, forbidden=2)
    compulsory = [r for r in rows if r.section in ("113-B", "113-E")]
    assert sum(r.points_possible for r in compulsory) == 200
    assert sum(r.points for r in compulsory) == 161
    assert sum(r.points_possible for r in rows) - 200 == 296
    assert sum(r.points for r in rows) - 161 == 210  # the excluded question earns nothing
    assert sum(len(r.forbidden_picked) for r in rows) == 2


def test_written_run_reads_back(tmp_path):
    run = read_run(outcome_run(tmp_path / "r", [True, False, True]))
    assert [r.correct for r in run.results] == [True, False, True]
    assert run.summary.complete and run.label == "r"


def test_a_delta_paired_on_fewer_questions_than_the_run_says_on_how_many(tmp_path):
    from medjp_agent.report import build_report, report_tables

    base = outcome_run(tmp_path / "base", [False, True, False])
    other = write_run(tmp_path / "other", [result("q0", year=2025, section="S-B"), result("x1", year=2025)])
    runs = report_tables(build_report([read_run(base), read_run(other)], n_boot=200))[0]
    assert runs.rows[1][-1].endswith(" on 1") and "on" not in runs.rows[0][-1]
