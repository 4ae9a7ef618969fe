"""The report on IgakuQA's published GPT-4 and ChatGPT predictions, scored with `medjp score`.

IgakuQA's paper reports GPT-4 passing every year and ChatGPT failing; the paired test must find GPT-4 far ahead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.report import build_report
from medjp_agent.results import read_run

IGAKUQA = Path(__file__).resolve().parents[1].parent / "shared" / "igakuqa"
runner = CliRunner()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    if not (IGAKUQA / "data").is_dir():
        pytest.skip(f"IgakuQA not found at {IGAKUQA}")
    out = tmp_path_factory.mktemp("igakuqa")
    for system in ("gpt4", "chatgpt"):
        res = runner.invoke(app, ["score", "--data", str(IGAKUQA), "--predictions", str(IGAKUQA / "baseline_results"),
                                  "--system", system, "--out", str(out / system)])
        assert res.exit_code == 0, res.output
    return out


def test_gpt4_is_significantly_ahead_of_chatgpt(scored):
    chatgpt, gpt4 = read_run(scored / "chatgpt"), read_run(scored / "gpt4")
    report = build_report([gpt4], baseline=chatgpt)
    (c,) = report.comparisons
    assert (c.run, c.baseline, c.n) == ("gpt4", "chatgpt", 2000)
    assert c.run_accuracy == pytest.approx(1534 / 2000)
    assert 0.15 < c.ci_low < c.delta < c.ci_high and c.gained > 3 * c.lost
    assert c.p_value < 1e-20 and c.significant


def test_verdicts_gpt4_passes_every_year_chatgpt_fails(scored):
    report = build_report([read_run(scored / "gpt4"), read_run(scored / "chatgpt")])
    status = {(v.run, v.year): v for v in report.verdicts}
    assert [status[("gpt4", y)].status for y in range(2018, 2023)] == ["pass"] * 5
    assert [status[("chatgpt", y)].status for y in range(2018, 2023)] == ["fail"] * 5
    # IgakuQA holds exactly the marked questions of every year (2020 and 2022: 197 compulsory points, as marked).
    assert not any(status[("gpt4", y)].approximate for y in range(2018, 2023))
    assert status[("gpt4", 2020)].compulsory.possible == status[("gpt4", 2020)].compulsory.official_total == 197


def test_cli_report_on_the_two_runs(scored, tmp_path):
    res = runner.invoke(app, ["report", str(scored / "gpt4"), "--baseline", str(scored / "chatgpt"),
                              "--json", str(tmp_path / "r.json"), "--md"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["comparisons"][0]["significant"] and report["comparisons"][0]["delta"] > 0.2
    assert "| chatgpt | chatgpt | 2000 | 54.0% |" in res.output
