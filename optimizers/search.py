"""A format search: an Optuna study over a :class:`FormatSpace`, scored on dev questions, resumable by name.

The study records what makes its trials comparable (the space, the score, the dev questions) in its user attrs,
so resuming ``--study NAME`` with other settings is refused instead of mixing incomparable values. A new study
starts with the reference formats (the paper's two) enqueued, so every search measures them on the same dev
questions, in full (references are never pruned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medjp_agent.data import Question
from medjp_agent.results import MANIFEST, RunManifest
from medjp_agent.signatures import PAPER_FORMATS, PromptFormat, resolve_format

from .liveness import Liveness
from .objective import REFERENCE, FormatObjective, SearchObserver, TrialOutcome
from .pruning import make_pruner
from .samplers import make_sampler
from .scores import QuestionScore
from .sensitivity import FormatSensitivity
from .space import FormatSpace
from .storage import open_storage, search_storage_url
from .workers import Budget, Workers


class StudyMismatch(ValueError):
    """``--study NAME`` names a study made with another space, score or dev split."""


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (everything but the questions, the LM and the space).

    Args:
        study: Study name; running again with the same name and storage resumes it.
        storage: Storage URL (:func:`~medjp_agent.optimizers.storage.open_storage`); None keeps it in memory.
        sampler: ``tpe``, ``gp``, ``random`` or ``grid``.
        prune: Stop clearly worse formats early (WilcoxonPruner, :mod:`.pruning`).
        n_startup_trials: Random trials before TPE/GP model the space.
        n_workers: Worker threads in this process (more processes may join through the storage).
        threads: Questions in flight per trial.
        references: Formats (or format names) enqueued as the first trials of a new study.
    """

    study: str = "format-search"
    storage: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    prune: bool = True
    p_threshold: float = 0.1
    n_startup_steps: int = 20
    n_startup_trials: int = 10
    n_workers: int = 1
    threads: int = 8
    budget: Budget = Budget(n_trials=30)
    liveness: Liveness = Liveness()
    references: tuple[str | PromptFormat, ...] = PAPER_FORMATS


@dataclass(frozen=True)
class SearchResult:
    """Where a search stands: counts, LM calls used and saved by pruning, the best format and format sensitivity.

    ``best`` is the best trial evaluated on the whole dev split (None before one finished); ``references`` the
    reference formats' trials; ``trials`` every finished trial in number order.
    """

    study: str
    score: str
    stop_reason: str
    n_complete: int
    n_pruned: int
    n_failed: int
    lm_calls: int
    lm_calls_saved: int
    best: TrialOutcome | None
    references: dict[str, TrialOutcome]
    sensitivity: FormatSensitivity
    trials: tuple[TrialOutcome, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def top(self, k: int) -> list[TrialOutcome]:
        """The ``k`` best trials evaluated on the whole dev split, best first."""
        return sorted((o for o in self.trials if not o.pruned), key=lambda o: (-o.value, o.number))[:k]

    @classmethod
    def from_study(cls, study: optuna.Study, stop_reason: str = "") -> "SearchResult":
        frozen = study.get_trials(deepcopy=False)
        outcomes = tuple(o for t in sorted(frozen, key=lambda t: t.number) if t.state == TrialState.COMPLETE
                         for o in [TrialOutcome.from_trial(t)] if o is not None)
        full = [o for o in outcomes if not o.pruned]
        return cls(
            study=study.study_name, score=str(study.user_attrs.get("score", "")), stop_reason=stop_reason,
            n_complete=len(outcomes), n_pruned=sum(o.pruned for o in outcomes),
            n_failed=sum(t.state == TrialState.FAIL for t in frozen), lm_calls=sum(o.lm_calls for o in outcomes),
            lm_calls_saved=sum(o.lm_calls_saved for o in outcomes),
            best=max(full, key=lambda o: (o.value, -o.number)) if full else None,
            references={o.reference: o for o in outcomes if o.reference and not o.pruned},
            sensitivity=FormatSensitivity.from_outcomes(outcomes), trials=outcomes,
        )


def load_search(run_dir: str | Path) -> tuple[SearchResult, RunManifest]:
    """The study of a `medjp search` run folder, read through its storage, and the folder's manifest."""
    path = Path(run_dir)
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        raise FileNotFoundError(f"{path}: not a run folder (no {MANIFEST})")
    manifest = RunManifest.from_dict(json.loads(manifest_file.read_text(encoding="utf-8")))
    if manifest.kind != "search" or "study" not in manifest.extra:
        raise ValueError(f"{path}: not a search run (kind {manifest.kind!r})")
    url = search_storage_url(path, manifest.extra.get("storage"))
    study = optuna.load_study(study_name=str(manifest.extra["study"]), storage=open_storage(url))
    return SearchResult.from_study(study), manifest


def identity(space: FormatSpace, score: QuestionScore, dev: Sequence[Question]) -> dict[str, Any]:
    """What must match for trials to be comparable: stored in the study's user attrs."""
    ids = "\n".join(q.id for q in dev)
    return {"space": space.to_dict(), "score": score.name, "n_dev": len(dev),
            "dev_sha256": hashlib.sha256(ids.encode()).hexdigest()}


def open_study(settings: SearchSettings, space: FormatSpace, score: QuestionScore,
               dev: Sequence[Question]) -> tuple[optuna.Study, Any]:
    """Create the study, or load it when it exists; returns ``(study, storage)``.

    Raises :class:`StudyMismatch` when an existing study was made with another space, score or dev split.
    """
    storage = open_storage(settings.storage)
    study = optuna.create_study(
        study_name=settings.study, storage=storage, direction="maximize", load_if_exists=True,
        sampler=make_sampler(settings.sampler, space, settings.seed, settings.n_startup_trials),
        pruner=make_pruner(enabled=settings.prune, p_threshold=settings.p_threshold,
                           n_startup_steps=settings.n_startup_steps),
    )
    wanted = identity(space, score, dev)
    stored = {k: study.user_attrs[k] for k in wanted if k in study.user_attrs}
    if stored and stored != wanted:
        differ = ", ".join(k for k in wanted if stored.get(k) != wanted[k])
        raise StudyMismatch(f"study {settings.study!r} was made with another {differ}; resume it with the same "
                            "settings or use another --study")
    if not stored:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        enqueue_references(study, space, settings.references)
    return study, storage


def enqueue_references(study: optuna.Study, space: FormatSpace, formats: Sequence[str | PromptFormat]) -> list[str]:
    """Enqueue the reference formats that lie in ``space``, named after them; returns the names enqueued (the
    others are skipped with a warning)."""
    done = []
    for spec in formats:
        fmt = resolve_format(spec)
        params = space.params_for(fmt)
        if params is None:
            warnings.warn(f"reference format {fmt.name!r} is outside the format space; it is not evaluated", stacklevel=2)
            continue
        study.enqueue_trial(params, user_attrs={REFERENCE: fmt.name}, skip_if_exists=True)
        done.append(fmt.name)
    return done


def run_search(settings: SearchSettings, space: FormatSpace, dev: Sequence[Question], score: QuestionScore,
               observer: SearchObserver | None = None) -> SearchResult:
    """Open (or resume) the study and run it until its budget is spent (:func:`open_study` + :func:`run_study`)."""
    study, storage = open_study(settings, space, score, dev)
    return run_study(study, storage, settings, space, dev, score, observer)


def run_study(study: optuna.Study, storage: Any, settings: SearchSettings, space: FormatSpace,
              dev: Sequence[Question], score: QuestionScore, observer: SearchObserver | None = None) -> SearchResult:
    """Run workers on an opened study until the budget is spent; Ctrl-C stops it with running trials re-queued."""
    objective = FormatObjective(dev, space, score, threads=settings.threads, seed=settings.seed, observer=observer)
    workers = Workers(study, storage, objective, settings.budget, settings.liveness, settings.n_workers)
    objective.should_stop = lambda: workers.stopping
    reason = workers.run()
    return SearchResult.from_study(study, reason)
