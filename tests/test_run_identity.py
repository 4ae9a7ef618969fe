"""A run folder is resumed only by the same run: another kind of run (a search folder given to eval) is refused
even before it holds results, and so are other generation settings (issue: a resume with --max-new-tokens 16 kept
the 8-token answers and recorded the new flag)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.lm import LMOptions, generation_settings
from medjp_agent.optimizers.search import GENERATION, SearchSettings, StudyMismatch, open_study
from medjp_agent.optimizers.space import FormatSpace
from medjp_agent.results import RunManifest, RunMismatch, RunWriter

runner = CliRunner()
EVAL = RunManifest(name="run", kind="eval", data="sample", generation={"temperature": 0.0, "max_tokens": 8})


def test_a_folder_of_another_kind_is_refused_even_without_results(tmp_path):
    RunWriter(tmp_path, RunManifest(name="s", kind="search", data="sample")).close()
    with pytest.raises(RunMismatch, match="kind"):
        RunWriter(tmp_path, EVAL)
    res = runner.invoke(app, ["eval", "--limit", "2", "--max-new-tokens", "4", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "kind: 'search' there, 'eval' now" in " ".join(res.output.split())


def test_other_generation_settings_are_refused_once_results_exist(tmp_path):
    RunWriter(tmp_path, EVAL).close()
    RunWriter(tmp_path, RunManifest(name="run", kind="eval", data="sample", generation={"max_tokens": 16})).close()
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(RunMismatch, match="generation differ"):
        RunWriter(tmp_path, EVAL)
    # A run recorded before generation settings were is resumed by any.
    old = tmp_path / "old"
    RunWriter(old, RunManifest(name="run", kind="eval", data="sample")).close()
    (old / "results.jsonl").write_text("")
    RunWriter(old, EVAL).close()


def test_eval_resume_with_another_length_is_refused_before_loading(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["eval", "--limit", "2", "--max-new-tokens", "4", "--out", str(out)]).exit_code == 0
    res = runner.invoke(app, ["eval", "--limit", "2", "--max-new-tokens", "8", "--out", str(out)])
    assert res.exit_code == 2 and "'max_tokens': 4} there" in res.output
    # Greedy decoding ignores top_p: the same run.
    res = runner.invoke(app, ["eval", "--limit", "2", "--max-new-tokens", "4", "--top-p", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output


def test_generation_settings_keep_what_changes_answers():
    assert generation_settings(LMOptions(max_new_tokens=64, top_p=0.9).request()) == {"temperature": 0.0,
                                                                                      "max_tokens": 64}
    assert generation_settings({"temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "cache": True}) == {
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 8}


def test_a_study_resumed_with_other_generation_settings_is_refused(tmp_path):
    from medjp_agent.data import SAMPLE_DIR, load_igakuqa

    dev = list(load_igakuqa(SAMPLE_DIR))[:5]
    settings = SearchSettings(study="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    space = FormatSpace.default()
    study, _ = open_study(settings, space, "correct", dev)  # made before the settings were recorded
    assert GENERATION not in study.user_attrs
    study, _ = open_study(settings, space, "correct", dev, {"max_tokens": 8})
    assert study.user_attrs[GENERATION] == {"max_tokens": 8}
    with pytest.raises(StudyMismatch, match="other generation settings"):
        open_study(settings, space, "correct", dev, {"max_tokens": 16})
    open_study(settings, space, "correct", dev, {"max_tokens": 8})


class CtrlC:
    """Presses Ctrl-C (raises KeyboardInterrupt in the evaluating thread, as SIGINT would) at the third result."""

    def __init__(self) -> None:
        self.seen = 0

    def on_result(self, result) -> None:
        self.seen += 1
        if self.seen == 3:
            raise KeyboardInterrupt

    def should_stop(self) -> bool:
        return False


def test_an_interrupted_eval_says_what_it_kept_and_reports_as_unfinished(tmp_path):
    from rich.console import Console

    from medjp_agent.data import SAMPLE_DIR, load_igakuqa
    from medjp_agent.lm.scripted import ScriptedLM
    from medjp_agent.report import build_report, load_run_dirs, report_tables
    from medjp_agent.runs import EvalConfig, run_eval
    from medjp_agent.signatures import MedicalQA

    console = Console(record=True, width=200)
    questions = list(load_igakuqa(SAMPLE_DIR))
    config = EvalConfig(questions, MedicalQA("paper-instruction-in-header"), ScriptedLM("a"), tmp_path / "run",
                        threads=1, observers=[CtrlC()], console=console)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config)
    assert f"interrupted: 3 of {len(questions)} questions answered are saved in {tmp_path / 'run'}" in " ".join(
        console.export_text().split())
    loaded, searches = load_run_dirs([tmp_path / "run"])
    runs = report_tables(build_report(loaded, searches=searches))[0]
    assert runs.rows[0][runs.columns.index("n")] == f"3 of {len(questions)}"
