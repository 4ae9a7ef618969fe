"""What a format search found: parameter importances, the best-so-far curve and accuracy by axis value.

A `medjp search` run folder stores its Optuna study (``study.db`` by default) and names it in the manifest's
``extra`` (``storage``: an RDB URL, ``study``: the study name). Trials carry the format axes as params and the dev
accuracy as their value. Everything here reads the study through ``optuna.load_study`` on the search's own storage opener, so SQLite, any RDB
and journal files work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medjp_agent.results import RunManifest

from .serialize import Serializable

if TYPE_CHECKING:
    import optuna



@dataclass(frozen=True)
class AxisValue(Serializable):
    """Trials that used ``value`` for the format axis ``param``: how many, their mean and best objective."""

    param: str
    value: Any
    n: int
    mean: float
    best: float


@dataclass(frozen=True)
class SearchView(Serializable):
    """A search run's study, summarised for tables and plots.

    ``importances`` are fANOVA importances (share of the objective's variance each axis explains, summing to 1);
    empty with fewer than two finished trials. ``best_so_far`` holds ``(trial number, value, best value so far)``
    for every finished trial. ``axes`` is the "which axis matters" ablation: every axis value with the trials that
    used it, best value first within each axis.
    """

    run: str
    study: str
    direction: str
    n_complete: int
    n_pruned: int
    importances: dict[str, float]
    best_so_far: tuple[tuple[int, float, float], ...]
    axes: tuple[AxisValue, ...]
    best_format: dict[str, Any]
    #: What a trial's value is: ``correct`` (dev accuracy, a share) or ``logprob`` (the gold option's mean
    #: log-probability, in nats); tables and plots print each in its own unit.
    score: str = "correct"
    #: The storage URL the study was read from (for :func:`dashboard_command`); empty for an in-memory study.
    storage: str = ""


def summarise_study(study: "optuna.Study", run: str = "") -> SearchView:
    """Importances, best-so-far curve and per-axis-value statistics of a single-objective study."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    maximize = study.direction == StudyDirection.MAXIMIZE
    pick = max if maximize else min
    trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    curve, best = [], None
    for t in trials:
        best = t.value if best is None else pick(best, t.value)
        curve.append((t.number, float(t.value), float(best)))
    # fANOVA fits a forest to the trials; below two it reports a meaningless 100 % for whatever axis there is, and
    # when every trial scored the same there is no variance to share out (it raises).
    varied = len({t.value for t in trials}) > 1
    importances = ({k: float(v) for k, v in get_param_importances(
        study, evaluator=FanovaImportanceEvaluator(seed=0)).items()} if varied else {})
    by_value: dict[tuple[str, Any], list[float]] = defaultdict(list)
    for t in trials:
        for param, value in t.params.items():
            by_value[(param, value)].append(float(t.value))
    axes = sorted((AxisValue(param=p, value=v, n=len(vals), mean=sum(vals) / len(vals), best=pick(vals))
                   for (p, v), vals in by_value.items()),
                  key=lambda a: (a.param, -a.mean if maximize else a.mean))
    best_trial = study.best_trial if trials else None
    return SearchView(
        run=run, study=study.study_name, direction="maximize" if maximize else "minimize", n_complete=len(trials),
        # medjp's search returns a pruned trial's partial mean (so TPE learns from it): it is COMPLETE, marked.
        n_pruned=sum(bool(t.user_attrs.get("pruned")) for t in trials)
        + len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))), importances=importances,
        best_so_far=tuple(curve), axes=tuple(axes),
        best_format=dict(best_trial.user_attrs.get("format") or best_trial.params) if best_trial else {},
        score=str(study.user_attrs.get("score") or "correct"),
    )


def load_search_view(run_dir: Path, manifest: RunManifest, run: str = "") -> SearchView | None:
    """The :class:`SearchView` of a search run folder; None for other runs.

    Raises KeyError when the storage holds no study of the manifest's name.
    """
    if manifest.kind != "search" or "study" not in manifest.extra:
        return None
    from medjp_agent.optimizers.search import search_study

    study, url = search_study(run_dir, manifest)
    return dataclasses.replace(summarise_study(study, run or manifest.name or run_dir.name), storage=url)


def dashboard_command(storage: str) -> str:
    """The shell command that browses every trial of a study in ``optuna-dashboard`` (extra ``[dashboard]``)."""
    from medjp_agent.optimizers.storage import JOURNAL_PREFIX

    # optuna-dashboard takes a journal file as its plain path and a database as its URL.
    return f"optuna-dashboard {shlex.quote(storage.removeprefix(JOURNAL_PREFIX))}"


def dashboard_hint(storage: str) -> str:
    """One line telling how to browse the study, and how to install the dashboard where it is missing."""
    install = ("" if importlib.util.find_spec("optuna_dashboard")
               else " (install it with: pip install 'medjp-agent[dashboard]')")
    return f"browse every trial in a web page: {dashboard_command(storage)}{install}"
