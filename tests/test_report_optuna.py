"""Optuna views of a search run: a small study in SQLite under a run folder, read back through the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from rich.console import Console
from test_report_factories import outcome_run

from medjp_agent.report import build_report, load_run_dirs, report_tables
from medjp_agent.results import MANIFEST, RunManifest

TEMPLATE = {"alpaca": 0.8, "plain": 0.5, "xml": 0.2}  # the axis that matters
SHOTS = {0: 0.0, 1: 0.02, 3: 0.04}  # a small effect
# chat: no effect at all


def objective(trial: optuna.Trial) -> float:
    template = trial.suggest_categorical("template", list(TEMPLATE))
    shots = trial.suggest_categorical("shots", list(SHOTS))
    chat = trial.suggest_categorical("chat", [False, True])
    trial.set_user_attr("format", {"name": f"t{trial.number}", "template": template, "shots": shots, "chat": chat})
    return TEMPLATE[template] + SHOTS[shots]


def write_search(run_dir: Path, study_db: Path, *, storage_url: str | None = None,
                 with_results: bool = False) -> Path:
    """A search run folder: a copy of ``study_db`` and a manifest naming its study (plus results if asked)."""
    run_dir.mkdir(parents=True)
    shutil.copy(study_db, run_dir / "study.db")
    extra = {"storage": storage_url or f"sqlite:///{run_dir / 'study.db'}", "study": "fmt"}
    if with_results:
        outcome_run(run_dir, [True, False, True], kind="search", extra=extra)
    else:
        manifest = RunManifest.create(name=run_dir.name, kind="search", data="test", model="m", extra=extra)
        (run_dir / MANIFEST).write_text(json.dumps(manifest.to_dict()), encoding="utf-8")
    return run_dir


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    # Optimised in memory and copied into SQLite once (SQLite trials are slow); tests copy the file.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = {"template": list(TEMPLATE), "shots": list(SHOTS), "chat": [False, True]}
    study = optuna.create_study(study_name="fmt", direction="maximize", sampler=optuna.samplers.GridSampler(grid))
    study.optimize(objective, n_trials=18)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    db = tmp_path_factory.mktemp("study") / "study.db"
    optuna.copy_study(from_study_name="fmt", from_storage=study._storage, to_storage=f"sqlite:///{db}")
    return db


@pytest.fixture(scope="module")
def search_dir(study_db, tmp_path_factory) -> Path:
    return write_search(tmp_path_factory.mktemp("runs") / "search", study_db)


def test_search_view_of_a_study_only_folder(search_dir):
    runs, (view,) = load_run_dirs([search_dir])
    assert runs == [] and view.run == "search" and view.study == "fmt"
    assert (view.n_complete, view.n_pruned, view.direction) == (18, 1, "maximize")
    ranked = sorted(view.importances, key=view.importances.get, reverse=True)
    assert ranked[0] == "template" and view.importances["template"] > 0.9
    assert sum(view.importances.values()) == pytest.approx(1.0)
    bests = [b for _, _, b in view.best_so_far]
    assert bests == sorted(bests) and bests[-1] == pytest.approx(0.84)
    assert view.best_format["template"] == "alpaca" and view.best_format["shots"] == 3
    axis = {(a.param, a.value): a for a in view.axes}
    assert axis[("template", "alpaca")].n == 6 and axis[("template", "alpaca")].mean == pytest.approx(0.82)
    assert axis[("chat", True)].mean == pytest.approx(axis[("chat", False)].mean)
    assert [a.value for a in view.axes if a.param == "template"] == ["alpaca", "plain", "xml"]


def test_moved_search_folder_reads_the_study_it_carries(study_db, tmp_path):
    run_dir = write_search(tmp_path / "moved", study_db, storage_url=f"sqlite:///{tmp_path / 'gone' / 'study.db'}",
                           with_results=True)
    runs, (view,) = load_run_dirs([run_dir])
    assert [r.label for r in runs] == ["moved"] and view.n_complete == 18
    assert not (tmp_path / "gone").exists()


def test_not_a_run_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run_dirs([tmp_path / "empty"])


def test_search_tables_render(search_dir):
    _, searches = load_run_dirs([search_dir])
    console = Console(record=True, width=200)
    for table in report_tables(build_report([], searches=searches)):
        console.print(table)
    text = " ".join(console.export_text().split())  # titles and captions wrap to the table's width
    assert "axis importance (fANOVA)" in text and "best so far (accuracy, maximize)" in text
    assert "accuracy by axis value" in text and "template=alpaca" in text
    importances = text[text.index("axis importance"):text.index("best so far")]
    assert importances.index("template") < importances.index("shots") < importances.index("chat")
