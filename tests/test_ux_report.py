"""Reports a new user can read: whole numbers at 80 columns, scores in their own unit, colours by direction,
Japanese in plots and HTML, labelled plots with pass lines, `--plots` with no value, `--show`, optuna-dashboard."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import pytest
from rich.console import Console
from test_report_factories import exam_2019, outcome_run, result, write_run
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.report import SearchView, build_report, report_tables
from medjp_agent.report import plots as plots_module
from medjp_agent.report.html import render_html
from medjp_agent.report.optuna_views import AxisValue, dashboard_command
from medjp_agent.report.tables import comparisons_table, forbidden_cell, runs_table
from medjp_agent.report.verdict import YearVerdict
from medjp_agent.results import read_run

runner = CliRunner()


@pytest.fixture
def report(tmp_path):
    base = read_run(outcome_run(tmp_path / "base", [True] * 30 + [False] * 30))
    worse = read_run(outcome_run(tmp_path / "worse", [True] * 8 + [False] * 52))
    exam = read_run(write_run(tmp_path / "exam-run-with-a-long-name", exam_2019(170, 230, forbidden=4)))
    return build_report([base, worse, exam], seed=0, n_boot=500)


def drawn(tables, width: int) -> str:
    console = Console(record=True, width=width)
    for table in tables:
        console.print(table)
    return console.export_text()


def test_numbers_are_never_cut_at_80_columns(report):
    runs = runs_table(report)
    narrow, wide = drawn([runs], 80), drawn([runs], 200)
    assert max(map(len, narrow.splitlines())) <= 80 and "…" not in narrow
    for row in runs.rows:  # every cell whole, each on one line of the vertical layout
        for column, cell in zip(runs.columns, row):
            assert re.search(rf"│ {re.escape(column)}\s+│ {re.escape(cell)}\s+│", narrow), (column, cell)
    assert wide.splitlines()[2].startswith("┃ run ") and "│ run " not in wide  # wide enough: one row per run


def test_significant_loss_is_red_and_gain_green(report):
    runs, comparisons = runs_table(report), comparisons_table(report)
    assert report.comparison("worse").delta < 0 and report.comparison("worse").significant
    assert runs.styles[runs.rows.index(next(r for r in runs.rows if r[0] == "worse"))] == "red"
    assert comparisons.styles == ("red",)  # the exam run shares no questions with base: no comparison
    assert plots_module.COLOURS[plots_module.direction_style(report.comparison("worse"))] == "tab:red"


@pytest.mark.parametrize("forbidden,unknown,cell", [(4, 0, "4 > 3 ✗"), (2, 0, "2 ≤ 3 ✓"), (2, 5, "2 ≤ 3 ?")])
def test_forbidden_cell_says_which_way(forbidden, unknown, cell):
    verdict = YearVerdict(run="r", year=2019, status="fail", forbidden=forbidden, forbidden_max=3,
                          forbidden_unknown=unknown)
    assert forbidden_cell(verdict) == cell


def logprob_view() -> SearchView:
    return SearchView(run="lp", study="s", direction="maximize", n_complete=2, n_pruned=0,
                      importances={"template": 1.0}, best_so_far=((0, -2.09, -2.09), (1, -1.698, -1.698)),
                      axes=(AxisValue("template", "plain", 2, -1.894, -1.698),),
                      best_format={"template": "plain"}, score="logprob")


def test_logprob_scores_keep_their_unit(monkeypatch):
    text = drawn(report_tables(build_report([], searches=[logprob_view()])), 200)
    assert "-1.698" in text and "-1.894" in text and "mean log-prob (nats)" in text
    assert "%" not in text.replace("100.0%", "")  # only the importance share is a percentage
    figures = capture_figures(monkeypatch)
    plots_module.best_so_far_png(logprob_view())
    ax = figures[0].axes[0]
    assert ax.get_ylabel() == "mean log-prob (nats)" and [t.get_text() for t in ax.texts] == ["-1.698"]


def capture_figures(monkeypatch) -> list:
    figures = []
    real = plots_module._png
    monkeypatch.setattr(plots_module, "_png", lambda fig: figures.append(fig) or real(fig))
    return figures


def test_plots_draw_japanese_with_value_labels_and_pass_lines(report, monkeypatch):
    figures = capture_figures(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph … missing from font(s)" for tofu
        plots = plots_module.report_plots(report)
    assert {"accuracy_by_category.png", "verdicts.png"} <= set(plots)
    by_title = {f.axes[0].get_title() or f.get_suptitle(): f for f in figures}
    bars = by_title["Accuracy by year"].axes[0]
    assert [t.get_text() for t in bars.texts if t.get_text()] == ["50%", "13%", "76%"]  # value labels
    category = by_title["Accuracy by category"].axes[0]
    assert {t.get_text() for t in category.get_xticklabels()} >= {"循環器"}
    verdict = next(f for f in figures if "pass line" in f.get_suptitle())
    compulsory, general = verdict.axes
    assert compulsory.get_title().startswith("必修") and "170/200" in [t.get_text() for t in compulsory.texts]
    assert [line.get_label() for line in compulsory.collections] == ["pass line"]
    assert compulsory.collections[0].get_segments()[0][0][1] == pytest.approx(0.8)  # 160 of 200
    assert general.collections[0].get_segments()[0][0][1] == pytest.approx(209 / 296, abs=1e-3)


def test_html_is_japanese_with_an_embedded_font(report):
    page = render_html("medjp report: base, worse", report_tables(report), {})
    assert '<html lang="ja">' in page and "<title>medjp report: base, worse</title>" in page
    assert "@font-face" in page and "font/woff;base64," in page and '"medjp-ja"' in page
    assert "Hiragino Sans" in page and "Noto Sans CJK JP" in page and "system-ui" not in page


def test_html_title_names_the_runs(report, tmp_path):
    runs = [tmp_path / "base", tmp_path / "worse"]
    res = runner.invoke(app, ["report", *map(str, runs), "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "<title>medjp report: base, worse</title>" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_plots_without_a_value_write_the_default_folder(report, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["report", "base", "worse", "--plots"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report-plots" / "accuracy_by_year.png").exists()
    res = runner.invoke(app, ["report", "base", "--plots", "figs"])  # the old form: a value after --plots
    assert res.exit_code == 2 and "--plots-dir figs" in res.output


def test_show_prints_prompt_completion_answer_and_why(tmp_path):
    run = write_run(tmp_path / "run", [dataclasses.replace(result("q1", correct=False), completion="答え: b",
                                                           method="marker")])
    lines = (run / "results.jsonl").read_text(encoding="utf-8").splitlines()
    prompt = [{"role": "user", "content": "次のうち正しいのはどれか。"}]
    record = {**json.loads(lines[0]), "prompt": prompt}
    (run / "results.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    res = runner.invoke(app, ["report", "--show", "q1", str(run)], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "次のうち正しいのはどれか。" in out and "[user]" in out and "答え: b" in out
    assert "wrong: answered b, gold a (parsed by marker)" in out
    res = runner.invoke(app, ["report", "--show", "q2", str(run)])
    assert res.exit_code == 2 and "no question 'q2'" in res.output and "did you mean 'q1'?" in res.output


def test_show_without_a_format_says_the_prompt_cannot_be_rebuilt(tmp_path):
    run = outcome_run(tmp_path / "run", [True])
    res = runner.invoke(app, ["report", "--show", "q0", str(run)], env={"COLUMNS": "120"})
    assert res.exit_code == 0 and "no prompt format recorded" in res.output and "correct: answered a" in res.output


def test_show_rebuilds_the_exact_prompt_of_an_eval_run(tmp_path, monkeypatch, scripted):
    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: scripted("考察\n答え：b"))
    run = tmp_path / "run"
    assert runner.invoke(app, ["eval", "--out", str(run), "--limit", "1"]).exit_code == 0
    qid = read_run(run).results[0].id
    res = runner.invoke(app, ["report", "--show", qid, str(run)], env={"COLUMNS": "200"})
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "its hash matches the prompt sent, so it is exact" in out
    assert "### 指示：" in out and "考察 │ │ 答え：b" in out, res.output
    (run / "manifest.json").write_text((run / "manifest.json").read_text(encoding="utf-8").replace(
        '"shots": 1', '"shots": 0'), encoding="utf-8")  # the recorded format no longer made this prompt
    res = runner.invoke(app, ["report", "--show", qid, str(run)], env={"COLUMNS": "200"})
    assert "its hash differs from the prompt sent" in " ".join(res.output.split())


def test_dashboard_command_opens_the_study_file(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="fmt", storage=url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    command = dashboard_command(url)
    assert command.split() == ["optuna-dashboard", url]
    from io import BytesIO
    from wsgiref.util import setup_testing_defaults

    environ: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET", "wsgi.input": BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(optuna_dashboard.wsgi(command.split()[1])(environ, lambda s, h, *a: status.append(s)))
    assert status[0].startswith("200") and [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["fmt"]


def test_report_of_a_search_suggests_the_dashboard(tmp_path):
    optuna = pytest.importorskip("optuna")
    from test_report_optuna import write_search

    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="fmt", storage=f"sqlite:///{db}", direction="maximize")
    study.optimize(lambda t: t.suggest_categorical("template", ["a", "b"]) == "a", n_trials=3)
    study.optimize(lambda t: 0.5, n_trials=1)  # even when every other trial scored the same, a value differs
    run = write_search(tmp_path / "search", db)
    res = runner.invoke(app, ["report", str(run)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert f"browse every trial in a web page: optuna-dashboard sqlite:///{run / 'study.db'}" in res.output


def test_log_prompts_keeps_the_exact_prompt_and_show_prints_it(tmp_path, monkeypatch, scripted):
    from medjp_agent.signatures.adapter import hash_prompt

    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: scripted("考察\n答え：b"))
    logged, plain = tmp_path / "logged", tmp_path / "plain"
    assert runner.invoke(app, ["eval", "--out", str(logged), "--limit", "2", "--log-prompts"]).exit_code == 0
    assert runner.invoke(app, ["eval", "--out", str(plain), "--limit", "2"]).exit_code == 0
    results = read_run(logged).results
    assert all(r.prompt and hash_prompt(r.prompt) == r.prompt_hash for r in results)  # exactly what was sent
    assert all(isinstance(r.prompt, str) and r.prompt.endswith("### 応答：\n") for r in results)  # raw: the text
    assert '"prompt"' not in (plain / "results.jsonl").read_text(encoding="utf-8")  # off by default
    res = runner.invoke(app, ["report", "--show", results[0].id, str(logged)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "prompt (stored by --log-prompts)" in res.output and "### 指示：" in res.output
    assert "[user]" not in res.output  # the text as the model read it, not a chat turn


def test_show_prints_an_ensembles_logged_prompts_each_as_text(tmp_path, monkeypatch, scripted):
    from medjp_agent.signatures.adapter import hash_prompt

    fmt = tmp_path / "ens.yaml"
    fmt.write_text("ens3:\n  template: harness\n  shots: 0\n  ensemble: 3\n", encoding="utf-8")
    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: scripted("b"))
    run = tmp_path / "ens"
    made = runner.invoke(app, ["eval", "--out", str(run), "--limit", "1", "--format", str(fmt), "--log-prompts"])
    assert made.exit_code == 0, made.output
    result = read_run(run).results[0]
    assert len(result.prompt) == 3 and all(isinstance(p, str) for p in result.prompt)
    assert hash_prompt(result.prompt) == result.prompt_hash  # the stored prompts are those sent
    res = runner.invoke(app, ["report", "--show", result.id, str(run)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert res.output.count("── next prompt ──") == 2 and "[user]" not in res.output
    # Without --log-prompts the three prompts are rebuilt, and their hash says they are exactly those sent.
    plain = tmp_path / "plain"
    assert runner.invoke(app, ["eval", "--out", str(plain), "--limit", "1", "--format", str(fmt)]).exit_code == 0
    res = runner.invoke(app, ["report", "--show", result.id, str(plain)], env={"COLUMNS": "200"})
    assert res.output.count("── next prompt ──") == 2 and "so it is exact" in res.output, res.output


def test_a_search_whose_trials_all_scored_the_same_has_no_importances():
    optuna = pytest.importorskip("optuna")
    from medjp_agent.report import summarise_study

    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_categorical("template", ["a", "b"]) and 0.2, n_trials=4)
    view = summarise_study(study, "flat")
    assert view.importances == {} and view.n_complete == 4  # fANOVA would raise: zero total variance
