"""`medjp search` end to end on a scripted LM: the run folder the report reads, and resuming by study name."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import medjp_agent.lm as backends
from medjp_agent.cli import app
from medjp_agent.data import LABELS, load_dataset
from medjp_agent.optimizers import BEST_FORMAT, BEST_PROGRAM, DUPLICATE_OF, REFERENCE, open_storage
from medjp_agent.results import read_run
from medjp_agent.signatures import PAPER_FORMATS, MedicalQA, PromptFormat, resolve_format

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedLM  # noqa: E402

FIELDS = {f.name for f in dataclasses.fields(PromptFormat)}
SMALL_SPACE = "axes:\n  template: [harness, alpaca, xml, chat]\n  labels: [latin, upper]\n  instruction_position: [header, preamble]\n"


@pytest.fixture()
def planted(monkeypatch):
    lm = PlantedLM(list(load_dataset("sample")), {"template": {"xml": 0.4}}, base=0.4)
    monkeypatch.setattr(backends, "build_lm", lambda opts: lm)
    return lm


def search(tmp_path: Path, *args: str) -> tuple[int, str]:
    space = tmp_path / "space.yaml"
    space.write_text(SMALL_SPACE, encoding="utf-8")
    result = CliRunner().invoke(app, ["search", "--out", str(tmp_path / "run"), "--space", str(space), "--limit", "20",
                                      "--threads", "2", *args])
    return result.exit_code, result.output


def test_search_writes_the_run_folder_the_report_reads(tmp_path, planted):
    code, output = search(tmp_path, "--n-trials", "4", "--n-workers", "2", "--no-tui")
    assert code == 0, output
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["kind"] == "search"
    assert manifest["extra"]["storage"] == f"sqlite:///{(run / 'study.db').resolve()}"
    assert manifest["extra"]["study"] == "run" and (run / "study.db").exists()

    study = optuna.load_study(study_name="run", storage=manifest["extra"]["storage"])
    trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    # A trial that samples a format already run copies its outcome and does not count against --n-trials.
    assert len([t for t in trials if DUPLICATE_OF not in t.user_attrs]) == 4
    assert [t.user_attrs.get(REFERENCE) for t in trials[:2]] == list(PAPER_FORMATS)
    for t in trials:
        assert set(t.params) <= FIELDS
        fmt = PromptFormat.from_dict(t.user_attrs["format"])
        assert all(getattr(fmt, name) == value for name, value in t.params.items())

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    best = summary["extra"]["search"]["best"]
    assert summary["extra"]["search"]["n_complete"] == 4
    assert set(summary["extra"]["test"]) == {"best", *PAPER_FORMATS}
    for name in ("best", *PAPER_FORMATS):
        test_run = read_run(run / "test" / name)
        assert test_run.manifest.kind == "search-test" and test_run.summary.n_questions > 0
    assert read_run(run / "test" / "best").manifest.format == best["format"]

    program = MedicalQA(resolve_format(str(run / BEST_FORMAT)))
    program.load(str(run / BEST_PROGRAM))
    assert program.format.to_dict() == best["format"]
    assert yaml.safe_load((run / BEST_FORMAT).read_text(encoding="utf-8"))[best["format"]["name"]] == best["format"]


def test_search_resumes_by_study_name_and_refuses_another_space(tmp_path, planted):
    journal = f"journal:{tmp_path / 'study.log'}"
    assert search(tmp_path, "--n-trials", "2", "--no-final", "--storage", journal, "--study", "s")[0] == 0
    code, output = search(tmp_path, "--n-trials", "3", "--no-final", "--storage", journal, "--study", "s")
    assert code == 0 and "2 finished trials" in output
    study = optuna.load_study(study_name="s", storage=open_storage(journal))
    # A resumed process samples with its own seed: a format it repeats copies the finished trial and does not count.
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sum(DUPLICATE_OF not in t.user_attrs for t in complete) == 3

    other = tmp_path / "other.yaml"
    other.write_text("axes:\n  template: [plain, json]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["search", "--out", str(tmp_path / "run"), "--space", str(other), "--limit", "20",
                                      "--storage", journal, "--study", "s", "--no-tui"])
    assert result.exit_code == 2 and "another space" in result.output


def test_live_view_runs_and_shows_the_best(tmp_path, planted, monkeypatch):
    import io

    from rich.console import Console

    import medjp_agent.cli.search_cmd as search_cmd

    terminal = io.StringIO()
    monkeypatch.setattr(search_cmd, "console", Console(file=terminal, force_terminal=True, width=120))
    code, output = search(tmp_path, "--n-trials", "3", "--no-final")
    assert code == 0, output
    assert "best so far" in terminal.getvalue() and "top 8 trials" in terminal.getvalue()


def test_piped_output_falls_back_to_log_lines(tmp_path, planted):
    code, output = search(tmp_path, "--n-trials", "3", "--no-final")  # CliRunner's stdout is not a terminal
    assert code == 0, output
    assert "top 8 trials" not in output and "trial 0 " in output and "LM calls" in output
    assert "browse every trial in a web page: optuna-dashboard sqlite:///" in " ".join(output.split())


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler", "anneal"], "--sampler must be one of"),
    (["--score", "bleu"], "--score must be"),
    (["--split", "0.5,0.5"], "three fractions"),
])
def test_bad_flags_fail_with_a_message(tmp_path, planted, args, message):
    code, output = search(tmp_path, *args)
    assert code == 2 and message in output


class ScoringLM(PlantedLM):
    """A stand-in for a local model: it can score continuations, and prefers the gold option."""

    def score_continuations(self, messages, continuations):
        text = "\n".join(m["content"] for m in messages)
        q = max(self.bank, key=lambda q: text.rfind(q.text))
        gold = {LABELS.index(a) for a in q.answers}
        return [0.0 if i in gold else -2.0 for i in range(len(continuations))]


def test_a_default_search_on_a_local_model_explores_generation_axes(tmp_path, monkeypatch):
    """The default objective is generation accuracy of the format as run, even where log-probabilities exist: the
    reasoning and voting axes are searched, and the test split compares like with like."""
    lm = ScoringLM(list(load_dataset("sample")), {"template": {"xml": 0.4}}, base=0.4)
    monkeypatch.setattr(backends, "build_lm", lambda opts: lm)
    space = tmp_path / "gen.yaml"
    space.write_text("axes:\n  template: [harness, xml]\n  reasoning: [direct, summarize]\n  self_consistency: [1, 3]\n"
                     "  instruction_position: [header, preamble]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["search", "--out", str(tmp_path / "run"), "--space", str(space), "--limit", "20",
                                      "--n-trials", "6", "--no-tui", "--n-startup-trials", "6"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["extra"]["score"] == "correct"
    study = optuna.load_study(study_name="run", storage=manifest["extra"]["storage"])
    formats = [t.user_attrs["format"] for t in study.trials if "format" in t.user_attrs]
    assert {f["reasoning"] for f in formats} == {"direct", "summarize"} and {f["self_consistency"] for f in formats} == {1, 3}
    tested = {p.name: read_run(p).manifest.format for p in (tmp_path / "run" / "test").iterdir()}
    assert set(tested) == {"best", *PAPER_FORMATS}
    assert all(tested[name] == resolve_format(name).to_dict() for name in PAPER_FORMATS)  # as the paper ran them


def test_logprob_score_searches_direct_variants_against_direct_references(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "build_lm", lambda opts: ScoringLM(list(load_dataset("sample"))))
    code, output = search(tmp_path, "--n-trials", "3", "--no-tui", "--score", "logprob")
    assert code == 0, output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["extra"]["score"] == "logprob"
    study = optuna.load_study(study_name="run", storage=manifest["extra"]["storage"])
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs[REFERENCE] for t in trials[:2]] == [f"{name}-direct" for name in PAPER_FORMATS]
    assert all(t.user_attrs["format"]["reasoning"] == "direct" for t in trials)
    single = -math.log(1 + 4 * math.exp(-2.0))  # the gold option's log-softmax when it leads by 2 nats
    assert all(t.value == pytest.approx(single, abs=0.2) and t.user_attrs["accuracy"] < 1 for t in trials)
    assert all(t.user_attrs["lm_calls"] == t.user_attrs["answered"] for t in trials)  # one scoring call a question
    # Like with like on test: the direct-answer references, named so, never presented as the paper's formats.
    assert {p.name for p in (tmp_path / "run" / "test").iterdir()} == {"best", *(f"{n}-direct" for n in PAPER_FORMATS)}


def test_every_trial_is_a_run_folder_the_report_diffs(tmp_path, planted):
    from medjp_agent.report import diff_runs

    code, output = search(tmp_path, "--n-trials", "3", "--no-final", "--no-tui")
    assert code == 0, output
    trials = sorted((tmp_path / "run" / "trials").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in trials] == ["0", "1", "2"]
    runs = [read_run(p) for p in trials]
    assert all(r.manifest.kind == "search-trial" and r.results for r in runs)
    assert runs[0].manifest.format["name"] == PAPER_FORMATS[0]
    diff = diff_runs(runs[0], runs[2])
    assert diff.shared == min(len(runs[0].results), len(runs[2].results)) > 0
    report = CliRunner().invoke(app, ["report", str(trials[0]), str(trials[2]), "--diff", str(trials[0]), str(trials[2])])
    assert report.exit_code == 0, report.output


def test_screen_flags_run_a_two_stage_search(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "build_lm", lambda opts: ScoringLM(list(load_dataset("sample"))))
    code, output = search(tmp_path, "--n-trials", "3", "--no-final", "--no-tui", "--screen", "logprob",
                          "--screen-trials", "3", "--screen-questions", "5", "--promote", "0.5")
    assert code == 0, output
    assert "study run-screen" in output and "screening: 3 formats by log-probability on 5 questions" in output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["extra"]["search"]["screen"]["study"] == "run-screen"
