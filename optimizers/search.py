"""A format search: an Optuna study over a :class:`FormatSpace`, scored on dev questions, resumable by name.

The study records what makes its trials comparable (the space, the score, the dev questions) in its user attrs,
so resuming ``--study NAME`` with other settings is refused instead of mixing incomparable values. A new study
starts with the reference formats (the paper's two) enqueued, so every search measures them on the same dev
questions, in full (references are never pruned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medjp_agent.data import Question
from medjp_agent.results import MANIFEST, RunManifest, read_manifest
from medjp_agent.signatures import PAPER_FORMATS, PromptFormat, resolve_format

from medjp_agent.errors import SEED_RULE, SEEDS, ConfigError, MedjpWarning, check_settings
from medjp_agent.suggest import did_you_mean

from .liveness import Liveness
from .objective import DUPLICATE_OF, REFERENCE, TrialOutcome
from .pruning import MIN_STARTUP_STEPS, make_pruner
from .samplers import SAMPLERS, make_sampler, process_seed
from .sensitivity import FormatSensitivity
from .space import FormatSpace
from .storage import SQLITE_PREFIX, create_study, open_storage, search_storage_url
from .workers import Budget


#: The study's user attribute holding the generation settings its trials were run with.
GENERATION = "generation"


class StudyMismatch(ConfigError):
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

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"
                              f"{did_you_mean(self.sampler, SAMPLERS)}")
        check_settings(
            ("--p-threshold", self.p_threshold, 0 < self.p_threshold < 1, "must be in (0, 1)"),
            ("--seed", self.seed, self.seed in SEEDS, SEED_RULE),
            ("--n-startup-steps", self.n_startup_steps, self.n_startup_steps >= MIN_STARTUP_STEPS,
             f"must be at least {MIN_STARTUP_STEPS} (on fewer paired questions SciPy's Wilcoxon test is exhaustive: "
             "seconds per answered question)"),
            ("--n-startup-trials", self.n_startup_trials, self.n_startup_trials >= 0, "must not be negative"),
            ("--n-workers", self.n_workers, self.n_workers >= 1, "must be at least 1"),
            ("--threads", self.threads, self.threads >= 1, "must be at least 1"))


@dataclass(frozen=True)
class SearchResult:
    """Where a search stands: counts, LM calls used and saved by pruning, the best format and format sensitivity.

    ``n_complete`` counts finished (complete or pruned) trials as the trial budget does, repeats left out
    (``n_duplicates``). ``best`` is the best trial evaluated on the whole dev split (None before one finished);
    ``references`` the reference formats' trials; ``trials`` every finished trial in number order, repeated formats
    (``duplicate_of``) included; ``screen`` the first stage of a screened search; ``test`` the finalists on the
    test split.
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
    n_duplicates: int = 0
    screen: Any = None
    test: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def top(self, k: int) -> list[TrialOutcome]:
        """The ``k`` best trials evaluated on the whole dev split, best first."""
        full = (o for o in self.trials if not o.pruned and o.duplicate_of is None)
        return sorted(full, key=lambda o: (-o.value, o.number))[:k]

    @classmethod
    def from_study(cls, study: optuna.Study, stop_reason: str = "") -> "SearchResult":
        frozen = study.get_trials(deepcopy=False)
        outcomes = tuple(o for t in sorted(frozen, key=lambda t: t.number)
                         for o in [TrialOutcome.from_trial(t)] if o is not None)
        distinct = [o for o in outcomes if o.duplicate_of is None]  # what the trial budget counts
        full = [o for o in distinct if not o.pruned]
        return cls(
            study=study.study_name, score=str(study.user_attrs.get("score", "")), stop_reason=stop_reason,
            n_complete=len(distinct), n_pruned=sum(o.pruned for o in distinct),
            n_failed=sum(t.state == TrialState.FAIL and DUPLICATE_OF not in t.user_attrs for t in frozen),
            lm_calls=sum(int(t.user_attrs.get("lm_calls", 0)) for t in frozen),
            lm_calls_saved=sum(o.lm_calls_saved for o in outcomes),
            best=max(full, key=lambda o: (o.value, -o.number)) if full else None,
            references={o.reference: o for o in outcomes if o.reference and not o.pruned},
            sensitivity=FormatSensitivity.from_outcomes(full), trials=outcomes,
            n_duplicates=sum(o.duplicate_of is not None for o in outcomes),
        )


def load_search(run_dir: str | Path) -> tuple[SearchResult, RunManifest]:
    """The study of a `medjp search` run folder, read through its storage, and the folder's manifest."""
    path = Path(run_dir)
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        raise FileNotFoundError(f"{path}: not a run folder (no {MANIFEST})")
    manifest = read_manifest(manifest_file)
    if manifest.kind != "search" or "study" not in manifest.extra:
        raise ValueError(f"{path}: not a search run (kind {manifest.kind!r})")
    return SearchResult.from_study(search_study(path, manifest)[0]), manifest


def search_study(run_dir: Path, manifest: RunManifest) -> tuple[optuna.Study, str]:
    """The study a search folder's manifest names, and its storage URL (:func:`search_storage_url`). Raises
    KeyError when the storage holds no study of that name."""
    url = search_storage_url(run_dir, str(manifest.extra.get("storage") or ""))
    if url.startswith(SQLITE_PREFIX) and not Path(url.removeprefix(SQLITE_PREFIX)).exists():
        # Opening it would create an empty database there, and then find no study in it.
        raise ConfigError(f"{run_dir}: the search's study database {url.removeprefix(SQLITE_PREFIX)} is missing")
    return optuna.load_study(study_name=str(manifest.extra["study"]), storage=open_storage(url)), url


def identity(space: FormatSpace, score: str, dev: Sequence[Question]) -> dict[str, Any]:
    """What must match for trials to be comparable: stored in the study's user attrs."""
    ids = "\n".join(q.id for q in dev)
    return {"space": space.to_dict(), "score": score, "n_dev": len(dev),
            "dev_sha256": hashlib.sha256(ids.encode()).hexdigest()}


def open_study(settings: SearchSettings, space: FormatSpace, score: str, dev: Sequence[Question],
               generation: dict[str, Any] | None = None) -> tuple[optuna.Study, Any]:
    """Create the study, or load it when it exists; returns ``(study, storage)``.

    The process that creates the study samples with ``settings.seed`` (a fresh search is reproducible); every
    process that joins or resumes it gets a seed of its own, so it does not replay the trials already sampled.
    Raises :class:`StudyMismatch` when an existing study was made with another space, score or dev split, or with
    other ``generation`` settings (:func:`~medjp_agent.lm.generation_settings`; None where answers do not depend on
    them).
    """
    storage = open_storage(settings.storage)
    study, created = create_study(
        storage, settings.study, direction="maximize",
        sampler=make_sampler(settings.sampler, space, settings.seed, settings.n_startup_trials),
        pruner=make_pruner(enabled=settings.prune, p_threshold=settings.p_threshold,
                           n_startup_steps=settings.n_startup_steps),
    )
    if not created:
        study.sampler = make_sampler(settings.sampler, space, process_seed(settings.seed), settings.n_startup_trials)
    wanted = identity(space, score, dev)
    stored = {} if created else _stored_identity(study, wanted)
    if stored and stored != wanted:
        differ = ", ".join(k for k in wanted if stored.get(k) != wanted[k])
        raise StudyMismatch(f"study {settings.study!r} was made with another {differ}; resume it with the same "
                            "settings or use another --study")
    if not stored:
        # References first: the identity is what tells processes that joined at creation the study is ready.
        enqueue_references(study, space, settings.references)
        for key, value in wanted.items():
            study.set_user_attr(key, value)
    if generation is not None:
        # Apart from the identity: studies made before it was recorded resume, and record it now.
        held = study.user_attrs.get(GENERATION)
        if held is not None and held != generation:
            raise StudyMismatch(f"study {settings.study!r} was made with other generation settings ({held}, now "
                                f"{generation}); resume it with the same settings or use another --study")
        if held is None:
            study.set_user_attr(GENERATION, generation)
    return study, storage


def _stored_identity(study: optuna.Study, wanted: dict[str, Any], wait_s: float = 30.0) -> dict[str, Any]:
    """The identity a study was stamped with; waits for it while the process that just created the study (on
    another machine, maybe) is still stamping it, and is empty when nobody does within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        attrs = study.user_attrs  # read from the storage on every access
        if all(k in attrs for k in wanted) or time.monotonic() > deadline:
            return {k: attrs[k] for k in wanted if k in attrs}
        time.sleep(0.1)


def enqueue_references(study: optuna.Study, space: FormatSpace, formats: Sequence[str | PromptFormat]) -> list[str]:
    """Enqueue the reference formats that lie in ``space``, named after them; returns the names enqueued (the
    others are skipped with a warning)."""
    done = []
    for spec in formats:
        fmt = resolve_format(spec)
        params = space.params_for(fmt)
        if params is None:
            warnings.warn(MedjpWarning(f"reference format {fmt.name!r} is outside the format space: it is not run on "
                                       "dev (add its axis values to the space to run it there first); the test split "
                                       "still compares the best format with it"), stacklevel=2)
            continue
        study.enqueue_trial(params, user_attrs={REFERENCE: fmt.name}, skip_if_exists=True)
        done.append(fmt.name)
    return done
