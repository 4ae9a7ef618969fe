"""Names people can read: descriptive format names, axis=value, run folders named by model, format and time,
and a clash with another run found before any model loads; the live view at 80 and 160 columns."""

from __future__ import annotations

import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.naming import axis_values, default_run_name, format_name, value_word
from medjp_agent.optimizers import Budget, TrialOutcome
from medjp_agent.paths import SLUG
from medjp_agent.search_tui import SearchSnapshot, dashboard

runner = CliRunner()


def test_format_name_lists_what_differs_from_the_base():
    base = {"template": "alpaca", "labels": "latin", "persona": "none", "reasoning": "direct", "shots": 1,
            "separator": "：", "full_width": False}
    values = {**base, "template": "markdown", "labels": "upper", "persona": "specialist", "reasoning": "cot",
              "shots": 5, "name": "ignored"}
    assert format_name(values, base) == "markdown.upper.specialist.cot.5shot"
    assert format_name(base, base) == "base"
    assert value_word("separator", "\n") == "separator-newline" and value_word("full_width", False) == "no-full-width"
    long = {f"axis{i}": "somevalue" for i in range(30)}
    name = format_name(long, {})
    assert SLUG.fullmatch(name) and name.endswith("more") and len(name) <= 100


def test_axis_values_name_their_axis():
    assert axis_values({"template": "json", "separator": "\n", "other": 1}, ["template", "separator"]) == \
        "template=json · separator='\\n'"


def test_default_run_folder_names_model_format_and_time():
    name = default_run_name("/models/Swallow-70b-instruct/", "paper-instruction-in-header", when=0)
    assert re.fullmatch(r"Swallow-70b-instruct__paper-instruction-in-header__19700101-\d{6}", name)
    assert default_run_name(None, "plain-ja-cot").startswith("tiny__plain-ja-cot__")
    assert default_run_name("org/a", "f") != default_run_name("org/b", "f")


def test_clash_is_found_before_the_model_loads(tmp_path, monkeypatch, scripted):
    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: scripted("答え：a"))
    out = tmp_path / "run"
    assert runner.invoke(app, ["eval", "--out", str(out), "--limit", "2"]).exit_code == 0

    def must_not_load(opts):
        raise AssertionError("the model was loaded before the clash was found")

    monkeypatch.setattr("medjp_agent.runs.build_lm", must_not_load)
    res = runner.invoke(app, ["eval", "--out", str(out), "--limit", "2", "--format", "plain-ja-cot"])
    assert res.exit_code == 2 and "(format differs): format: paper-instruction-in-header there, plain-ja-cot now" \
        in " ".join(res.output.split())
    res = runner.invoke(app, ["eval", "--out", str(out), "--limit", "2", "--model", "org/other"])
    assert res.exit_code == 2 and "model differ" in res.output


def test_default_eval_folder_is_named_by_model_format_and_time(tmp_path, monkeypatch, scripted):
    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: scripted("答え：a"))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["eval", "--limit", "1"]).exit_code == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"tiny__paper-instruction-in-header__\d{8}-\d{6}", folder.name)


def outcome(number: int, value: float, name: str, *, pruned: bool = False, reference: str = "") -> TrialOutcome:
    return TrialOutcome(number=number, value=value, accuracy=value, answered=571 if not pruned else 140,
                        n_questions=571, pruned=pruned, lm_calls=571, lm_calls_saved=0,
                        format={"name": name, "template": "markdown", "labels": "upper"}, reference=reference)


@pytest.mark.parametrize("width", [80, 160])
def test_live_view_keeps_every_number_at_80_and_160_columns(width):
    outcomes = (outcome(0, 0.5009, "paper-instruction-in-header", reference="paper-instruction-in-header"),
                outcome(11, 0.7622, "markdown.upper.specialist.cot.5shot.separator-newline.joiner-blank-line"),
                outcome(12, 0.2101, "json.katakana.no-full-width.summarize.3shot", pruned=True))
    snap = SearchSnapshot(running=(), outcomes=outcomes, budget=Budget(n_trials=60), elapsed_s=95.0,
                          finished_here=3, axes=("template", "labels"))
    console = Console(record=True, width=width)
    console.print(dashboard(snap))
    text = console.export_text()
    top = text[text.index("top 8 trials"):]
    assert max(map(len, text.splitlines())) <= width and "…" not in top
    rows = [line for line in top.splitlines() if re.match(r"│\s*\d+ │", line)]
    assert [re.findall(r"\d+\.\d{3}|\d+\.\d%|\d+/\d+", row) for row in rows] == [
        ["0.762", "76.2%", "571/571"], ["0.501", "50.1%", "571/571"], ["0.210", "21.0%", "140/571"]]
    assert "markdown.upper" in top.replace("│", "").replace(" ", "")  # the name wraps, it is not cut
