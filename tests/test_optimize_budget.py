"""`medjp optimize --max-lm-calls`: exact, compile and reflection calls included; the run ends cleanly with what
finished saved, and a re-run resumes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_optimize_dspy import QUESTIONS, SPLITS, ExamAndMetaLM
from typer.testing import CliRunner

import medjp_agent.lm as backends
from medjp_agent.cli import app
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.optimizers import BEST_PROGRAM, OptimizeConfig, OptimizerSettings, run_optimize
from medjp_agent.optimizers.budget_lm import BudgetLM, CallAllowance
from medjp_agent.signatures import PromptFormat

SMALL = OptimizerSettings(max_demos=1, candidates=2, steps=1, threads=2)


def _config(name: str, lm: ExamAndMetaLM, out: Path, budget: int | None,
            proposer: ExamAndMetaLM | None = None) -> OptimizeConfig:
    return OptimizeConfig(name, [PromptFormat(name="f")], SPLITS, lm, out, proposer=proposer, settings=SMALL,
                          max_lm_calls=budget)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))["extra"]["optimize"]


@pytest.mark.parametrize(("name", "budget", "phase"), [
    ("copro", 7, "compiling f (copro)"),  # the proposer's call, then the candidates' evaluations
    ("mipro", 30, "compiling f (mipro)"),  # MIPROv2 swallows the refusals and returns a program: not kept
])
def test_the_budget_stops_a_compile_and_no_call_past_it_is_sent(tmp_path, name, budget, phase):
    lm, proposer = ExamAndMetaLM(QUESTIONS, base=0.7), ExamAndMetaLM(QUESTIONS)
    result = run_optimize(_config(name, lm, tmp_path / "opt", budget, proposer))
    assert proposer.calls  # the reflection LM's calls are taken from the same budget
    assert len(lm.calls) + len(proposer.calls) == result.lm_calls == budget
    assert result.stopped == f"LM-call budget of {budget} spent during {phase}"
    assert not (tmp_path / "opt" / "programs" / "f.json").exists() and not result.test and not result.chosen
    assert _summary(tmp_path / "opt")["stopped"] == result.stopped


def test_what_finished_before_the_budget_ran_out_is_kept_and_resumed(tmp_path):
    out = tmp_path / "opt"
    lm = ExamAndMetaLM(QUESTIONS, base=0.7)
    stopped = run_optimize(_config("bootstrap", lm, out, 7))
    assert stopped.stopped == "LM-call budget of 7 spent during the test evaluation"
    assert len(lm.calls) == stopped.lm_calls == _summary(out)["lm_calls"] == 7
    assert (out / "programs" / "f.json").exists() and (out / BEST_PROGRAM).exists() and stopped.chosen == "f"
    resumed = run_optimize(_config("bootstrap", lm, out, None))
    assert resumed.resumed == ("f",) and not resumed.stopped and set(resumed.test) == {"bootstrap-f", "f"}
    assert all(run.n_questions == len(SPLITS.test) for run in resumed.test.values())


def test_optimize_command_ends_with_the_budget_message(tmp_path, monkeypatch):
    lm = ExamAndMetaLM(QUESTIONS, base=0.7)
    monkeypatch.setattr(backends, "build_lm", lambda opts: lm)
    result = CliRunner().invoke(app, ["optimize", "--optimizer", "bootstrap", "--out", str(tmp_path / "opt"),
                                      "--max-demos", "1", "--threads", "2", "--max-lm-calls", "7"])
    assert result.exit_code == 0, result.output  # as `medjp search` when its --max-lm-calls is spent
    assert "LM-call budget of 7 spent during the test evaluation" in result.output
    assert len(lm.calls) == 7


def test_a_copy_with_other_defaults_passes_them_to_the_wrapped_lm():
    """BootstrapFewShot's later rounds call ``lm.copy(temperature=1.0, rollout_id=n)``."""
    inner = ScriptedLM("答え：a")
    allowance = CallAllowance(2)
    hot = BudgetLM(inner, allowance).copy(temperature=1.0)
    assert hot("question") == ["答え：a"] and inner.calls[0]["kwargs"]["temperature"] == 1.0
    assert hot.describe() == inner.describe() and allowance.used == 1


def test_a_call_the_lm_could_not_answer_is_given_back():
    from medjp_agent.lm.errors import NotRun

    class TooLong(ScriptedLM):
        def forward(self, prompt=None, messages=None, **kwargs):
            raise NotRun("prompt too long")

    allowance = CallAllowance(1)
    with pytest.raises(NotRun):
        BudgetLM(TooLong("a"), allowance)(messages=[{"role": "user", "content": "q"}])
    assert allowance.used == 0  # as the run's call count, which counts answered calls only
    BudgetLM(ScriptedLM("a"), allowance)(messages=[{"role": "user", "content": "q"}])
    assert allowance.used == 1


def test_a_proposer_that_cannot_follow_dspys_format_fails_the_compile_clearly_and_is_recorded(tmp_path):
    from medjp_agent.optimizers.optimize import CompileFailed

    lm = ExamAndMetaLM(QUESTIONS, base=0.7)
    with pytest.raises(CompileFailed, match="copro could not compile f: .*--reflection-model"):
        run_optimize(_config("copro", lm, tmp_path / "opt", None, proposer=ScriptedLM("no fields here")))
    assert _summary(tmp_path / "opt")["stopped"].startswith("copro could not compile f")


def test_the_reflection_model_gets_its_own_options_not_the_students_adapters(tmp_path, monkeypatch):
    import medjp_agent.optimizers as optimizers
    from medjp_agent.cli import search_cmd

    built = []
    monkeypatch.setattr(search_cmd, "_build_lm", lambda options: built.append(options) or ScriptedLM("a"))

    def stop(config):
        raise SystemExit(0)

    monkeypatch.setattr(optimizers, "run_optimize", stop)
    CliRunner().invoke(app, ["optimize", "--optimizer", "mipro", "--adapter", "student=org/lora", "--max-new-tokens",
                             "8", "--reflection-model", "org/teacher", "--out", str(tmp_path / "o")])
    student, teacher = built
    assert student.adapters == ("student=org/lora",) and student.max_new_tokens == 8
    assert teacher.model == "org/teacher" and teacher.adapters == () and teacher.max_new_tokens == 512


def test_examples_refused_by_the_budget_are_not_logged_one_by_one(tmp_path, caplog):
    lm = ExamAndMetaLM(QUESTIONS, base=0.7)
    with caplog.at_level("ERROR", logger="dspy.utils.parallelizer"):
        result = run_optimize(_config("bootstrap-rs", lm, tmp_path / "opt", 5))
    assert result.stopped.startswith("LM-call budget of 5 spent")
    assert not [r for r in caplog.records if "LM-call budget" in r.getMessage()]


def test_an_optimize_folder_reports_as_its_test_runs(tmp_path):
    from medjp_agent.report import load_run_dirs

    run_optimize(_config("bootstrap", ExamAndMetaLM(QUESTIONS, base=0.7), tmp_path / "opt", None))
    runs, searches = load_run_dirs([tmp_path / "opt"])
    assert sorted(r.path.name for r in runs) == ["bootstrap-f", "f"] and not searches
