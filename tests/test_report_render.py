"""The report drawn: rich tables (recorded console), Markdown, plots and the self-contained HTML page."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import pytest
from rich.console import Console
from test_report_factories import exam_2019, outcome_run, write_run

from medjp_agent.report import build_report, diff_runs, report_tables
from medjp_agent.report.html import render_html
from medjp_agent.report.plots import report_plots
from medjp_agent.results import read_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report(tmp_path):
    base = read_run(outcome_run(tmp_path / "base", [True] * 30 + [False] * 30))
    better = read_run(outcome_run(tmp_path / "better", [True] * 28 + [False] * 2 + [True] * 20 + [False] * 10))
    passing = read_run(write_run(tmp_path / "exam-pass", exam_2019(170, 230)))
    failing = read_run(write_run(tmp_path / "exam-fail", exam_2019(170, 230, forbidden=4),
                                 filters={"years": [2019], "text_only": True}))
    return build_report([base, better, passing, failing], diff=diff_runs(base, better), seed=0)


def rendered(tables) -> str:
    console = Console(record=True, width=200)
    for table in tables:
        console.print(table)
    return console.export_text()


def test_rich_tables(report):
    text = rendered(report_tables(report))
    runs = text[:text.index("Paired comparisons")]
    assert all(label in runs for label in ("base", "better", "exam-pass", "exam-fail"))
    better_row = next(line for line in runs.splitlines() if line.startswith("│ better"))
    assert "80.0%" in better_row and "+30.0 [" in better_row and better_row.rstrip(" │").endswith("*")
    assert "baseline" in next(line for line in runs.splitlines() if line.startswith("│ base "))
    assert "no shared questions" in next(line for line in runs.splitlines() if line.startswith("│ exam-pass"))
    assert "lost" in text and "gained" in text and "Holm-adjusted over 1 comparison" in text
    verdicts = text[text.index("Exam verdicts"):text.index("Flips")]
    passed = next(line for line in verdicts.splitlines() if line.startswith("│ exam-pass"))
    assert "113th" in passed and "170/200 ≥ 160 ✓" in passed and "230/296 ≥ 209 ✓" in passed and "PASS" in passed
    failed = next(line for line in verdicts.splitlines() if line.startswith("│ exam-fail"))
    assert "4 > 3 ✗" in failed and "FAIL ~" in failed and "text_only=True" in failed
    assert "no cut-off known" in next(line for line in verdicts.splitlines() if line.startswith("│ base"))
    assert "第113回医師国家試験" in text
    flips = text[text.index("Flips: base → better"):]
    assert "22 of 60 shared questions flip: 20 gained, 2 lost by better" in " ".join(flips.split())
    assert "reasoning base 28" in flips and "reasoning better 28" in flips


def test_groups_table_follows_by(tmp_path):
    run = read_run(outcome_run(tmp_path / "r", [True, False, True, True]))
    text = rendered(report_tables(build_report([run], by="section")))
    assert "Accuracy by section" in text and "S-A" in text and "S-B" in text and "100.0% (2/2)" in text


def test_flips_limit_and_markdown(report):
    tables = report_tables(report, flips=5)
    flips = tables[-1]
    assert len(flips.rows) == 5 and "first 5 shown" in flips.caption
    md = flips.to_markdown()
    assert md.startswith("### Flips: base → better\n\n| id | category |") and md.count("\n| q") == 5
    runs_md = tables[0].to_markdown()
    assert "| ---: |" in runs_md and "| better |" in runs_md


def test_html_page_is_self_contained_with_every_run_and_plot(report):
    plots = report_plots(report)
    assert set(plots) == {"accuracy_by_year.png", "accuracy_by_category.png", "deltas.png", "verdicts.png"} and all(p.startswith(PNG) for p in plots.values())
    page = render_html("medjp report", report_tables(report, reasoning_chars=None), plots)

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.images, self.external = [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs["src"])
            if tag in ("link", "script") or attrs.get("href", "").startswith("http"):
                self.external.append(tag)

        def handle_data(self, data):
            self.text.append(data)

    parser = Page()
    parser.feed(page)
    parser.close()
    text = " ".join(parser.text)
    assert all(label in text for label in ("base", "better", "exam-pass", "exam-fail"))
    assert "Exam verdicts" in text and "Flips: base → better" in text
    assert len(parser.images) == 4 and not parser.external
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)


def test_cells_are_text_not_markup():
    from medjp_agent.report import ReportTable

    text = rendered([ReportTable("t", ("reasoning",), (("選択肢[a]は[bold]誤り[/bold]",),))])
    assert "選択肢[a]は[bold]誤り[/bold]" in text
