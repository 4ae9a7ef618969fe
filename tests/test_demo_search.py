"""`medjp demo`'s search, run with the demo's own settings on a planted LM instead of the tiny model.

The demo searches the bundled 30-question sample; with the former sizing (12 dev questions, fewer than the pruner's
14 start-up steps) no trial could ever be pruned. These tests run the demo command itself, so they check the flags
it passes to `medjp search`, not a copy of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import medjp_agent.lm as backends
import medjp_agent.lm.tiny as tiny
import medjp_agent.training.demo as training_demo
from medjp_agent.cli import app
from medjp_agent.cli.demo_cmd import REFERENCE_FORMAT, SEARCH_SETTINGS, WHY_SETTINGS
from medjp_agent.data import load_dataset
from medjp_agent.results import read_run
from medjp_agent.signatures import PAPER_FORMATS, resolve_format

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedScorer  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """The demo's run folder and output, with a planted LM that answers best in the alpaca layout (as the demo's
    adapter, trained in it, does) and scores options by log-probability like a local model."""
    tmp = tmp_path_factory.mktemp("demo")
    model, adapter = tmp / "model", tmp / "adapter"
    model.mkdir()
    adapter.mkdir()
    lm = PlantedScorer(list(load_dataset("sample")), {"template": {"alpaca": 0.5}}, base=0.2, spread=0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny, "ensure_tiny_model", lambda: model)
        mp.setattr(training_demo, "ensure_demo_adapter", lambda *a, **k: adapter)
        mp.setattr(backends, "build_lm", lambda opts: lm)
        result = CliRunner().invoke(app, ["demo", "--no-tui", "--out", str(tmp / "out"), "--threads", "4"])
    assert result.exit_code == 0, result.output
    return tmp / "out", result.output


def _states(run: Path) -> dict[str, list[optuna.trial.TrialState]]:
    url = f"sqlite:///{run / 'study.db'}"
    return {s.study_name: [t.state for t in optuna.load_study(study_name=s.study_name, storage=url).trials]
            for s in optuna.get_all_study_summaries(url)}


def test_the_demo_settings_let_the_pruner_stop_formats(demo):
    out, output = demo
    text = " ".join(output.split())
    assert " ".join(WHY_SETTINGS.split()) in text  # the demo says why it searches this way
    assert " ".join(SEARCH_SETTINGS) in text  # and the search command it shows runs with those flags
    summary = json.loads((out / "search" / "summary.json").read_text(encoding="utf-8"))["extra"]["search"]
    assert summary["screen"]["n_questions"] == 20  # the dev split the --split gives the sample exam
    states = _states(out / "search")
    pruned = states["search-screen"].count(optuna.trial.TrialState.PRUNED)
    assert pruned >= 1 and summary["screen"]["n_pruned"] == pruned
    assert f"promoted, {pruned} pruned;" in text  # the count the search prints


def test_the_report_baseline_is_the_paper_format_as_the_search_ran_it(demo):
    out, output = demo
    test_dir = out / "search" / "test"
    assert {p.name for p in test_dir.iterdir()} == {"best", *PAPER_FORMATS}  # no -direct variant
    baseline = read_run(test_dir / REFERENCE_FORMAT).manifest.format
    assert baseline == resolve_format(REFERENCE_FORMAT).to_dict()
    url = f"sqlite:///{out / 'search' / 'study.db'}"
    reference = optuna.load_study(study_name="search", storage=url).trials[0]
    assert reference.user_attrs["reference"] == REFERENCE_FORMAT  # generated with on dev as on test
    assert (out / "report.html").exists() and "--baseline " + str(test_dir / REFERENCE_FORMAT) in output
