"""`medjp report` through typer's CliRunner: tables, Markdown, every output file, diffs and clean errors."""

from __future__ import annotations

import csv
import json

import pytest
from test_report_factories import exam_2019, outcome_run, write_run
from typer.testing import CliRunner

from medjp_agent.cli import app

runner = CliRunner()


@pytest.fixture
def run_dirs(tmp_path):
    return [outcome_run(tmp_path / "base", [True] * 30 + [False] * 30),
            outcome_run(tmp_path / "better", [True] * 28 + [False] * 2 + [True] * 20 + [False] * 10),
            write_run(tmp_path / "exam", exam_2019(170, 230))]


def invoke(*args):
    return runner.invoke(app, ["report", *map(str, args)])


def test_report_prints_every_table(run_dirs):
    res = invoke(*run_dirs)
    assert res.exit_code == 0, res.output
    for title in ("Runs", "Paired comparisons vs base", "Accuracy by year", "Exam verdicts"):
        assert title in res.output


def test_markdown_with_baseline_by_and_diff(run_dirs):
    base, better, _ = run_dirs
    res = invoke(better, "--baseline", base, "--by", "category", "--md", "--diff", base, better,
                 "--category", "循環器", "--flips", "3")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "### Runs" in out and "| better | m | 60 | 80.0% |" in out and "| base | m | 60 | 50.0% |" in out
    assert "### Accuracy by category" in out and "| 循環器 |" in out
    assert "### Flips: base → better" in out and "| 小児科 |" not in out.split("### Flips")[1]
    assert "first 3 shown" in out


def test_output_files(run_dirs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    res = invoke(*run_dirs, "--html", out / "r.html", "--csv", out / "r.csv", "--json", out / "r.json",
                 "--plots-dir", out / "plots")
    assert res.exit_code == 0, res.output
    page = (out / "r.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4 and all(f">{d.name}<" in page for d in run_dirs)
    rows = list(csv.DictReader((out / "r.csv").open(encoding="utf-8")))
    assert [r["label"] for r in rows] == ["base", "better", "exam"]
    assert float(rows[1]["delta"]) == pytest.approx(0.3) and rows[1]["significant"] == "True"
    assert rows[2]["verdict_2019"] == "pass" and rows[0]["verdict_2025"] == "no cut-off known"
    report = json.loads((out / "r.json").read_text(encoding="utf-8"))
    assert report["baseline"] == "base" and report["comparisons"][0]["gained"] == 20
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["accuracy_by_category.png", "accuracy_by_year.png",
                                                                "deltas.png", "verdicts.png"]


@pytest.mark.parametrize("args,message", [
    (["--by", "model"], "Invalid value for '--by': 'model' is not one of year, section"),
    (["--category", "循環器"], "give --diff too"),
    (["--baseline", "/nonexistent/run"], "not a run folder"),
])
def test_clean_errors(run_dirs, args, message):
    res = invoke(run_dirs[0], *args)
    assert res.exit_code == 2 and message in " ".join(res.output.split())
