"""`run_search(SearchConfig) -> SearchResult`: a whole format search, what `medjp search` runs.

1. (``screen`` set) stage 1: a log-probability study over the formats' surfaces picks the candidates (:mod:`.screen`);
2. the study of the generation objective on the dev split, resumable by name (:mod:`.search`), with every trial
   written as a run folder ``<out>/trials/<n>``;
3. the winner and the reference formats, like with like, on the test split (:mod:`.heldout`).

The default objective is what is reported: generation accuracy of the format exactly as it will be run, so
reasoning, self-consistency, ensembles and Medprompt are searched. ``score="logprob"`` searches direct-answer
variants by log-probability alone; its references are then the ``-direct`` variants, on dev and on test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
import optuna
from rich.console import Console

from medjp_agent.data import Question
from medjp_agent.errors import ConfigError
from medjp_agent.lm import describe_lm, generation_settings
from medjp_agent.results import RunManifest, RunWriter
from medjp_agent.runs import RunInfo
from medjp_agent.signatures import PromptFormat, resolve_format

from .heldout import finish_search
from .objective import FormatObjective, SearchObserver, TrialOutcome
from .scores import ScoreKind, check_score, scores_question
from .screen import CANDIDATE, CandidateSpace, ScreenResult, ScreenSettings, candidates, generation_axes, surface_space
from .search import SearchResult, SearchSettings, open_study
from .space import FormatSpace
from .splits import Splits
from .workers import Budget, CallBudget, Workers

SCREEN_DIR = "screen"


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs; `medjp search` builds one from its flags.

    Args:
        splits: Train (demos), dev (choosing) and test (reporting) questions.
        lm: The LM answering.
        space: The formats searched.
        settings: Study, storage, sampler, pruning, workers, budget.
        score: ``correct`` (generation accuracy, the default) or ``logprob`` (:mod:`.scores`).
        screen: Screen formats by log-probability first (:mod:`.screen`); None searches directly.
        out: Run folder (manifest, summary, ``trials/<n>``, ``test/<name>``, best program); None writes nothing.
        final: Evaluate the best and the references on the test split at the end.
        data, filters: What the manifests record about the questions.
        observer: Live progress (the TUI or a log).
        console: Where the test evaluation's progress and tables go (None: silent).
    """

    splits: Splits
    lm: dspy.BaseLM
    space: FormatSpace = field(default_factory=FormatSpace.default)
    settings: SearchSettings = SearchSettings()
    score: ScoreKind = "correct"
    screen: ScreenSettings | None = None
    out: Path | None = None
    final: bool = True
    data: str = ""
    filters: Mapping[str, Any] = field(default_factory=dict)
    observer: SearchObserver | None = None
    console: Console | None = None

    def __post_init__(self) -> None:
        check_score(self.score)

    def references(self) -> tuple[PromptFormat, ...]:
        """The reference formats as this search runs them: as written, or their ``-direct`` variants when the
        score is the log-probability."""
        formats = tuple(resolve_format(f) for f in self.settings.references)
        return tuple(FormatSpace.logprob_variant(f) for f in formats) if self.score == "logprob" else formats


def run_search(config: SearchConfig) -> SearchResult:
    """Run (or resume) the search ``config`` describes to the end of its budget; see the module doc."""
    dev = [q for q in config.splits.dev if scores_question(config.score, q)]
    if not dev:
        raise ConfigError(f"no dev question can be scored by {config.score!r}")
    writer = RunWriter(config.out, _manifest(config, dev)) if config.out else None
    space: Any = config.space.for_logprob() if config.score == "logprob" else config.space
    references, screen, offset = config.references(), None, 0
    if config.screen is not None:
        screen, promoted = _screen(config, dev)
        space = CandidateSpace(candidates(promoted, references, config.space.base), generation_axes(config.space))
        offset = screen.lm_calls
    settings = dataclasses.replace(config.settings, references=references)
    result, study = _run_stage(config, settings, space, dev, config.score, config.out, offset)
    if screen is not None:
        candidate_of = {t.number: str(t.params.get(CANDIDATE, "")) for t in study.get_trials(deepcopy=False)}
        result = dataclasses.replace(result, screen=screen.with_stage2(result.trials, candidate_of))
    if config.final and config.out is not None and result.best is not None and config.splits.test:
        test = finish_search(PromptFormat.from_dict(result.best.format), references, config.splits.test,
                             config.lm, config.out, demo_pool=config.splits.demo_pool(), seed=settings.seed,
                             data=config.data, filters=dict(config.filters), threads=settings.threads,
                             console=config.console)
        result = dataclasses.replace(result, test=test)
    if writer is not None:
        writer.finalize(search=result.to_dict(), test={k: v.to_dict() for k, v in result.test.items()})
    return result


def _run_stage(config: SearchConfig, settings: SearchSettings, space: Any, dev: Sequence[Question],
               score: ScoreKind, out: Path | None, offset: int = 0) -> tuple[SearchResult, optuna.Study]:
    """Open (or resume) one study and run workers on it until its budget is spent."""
    # A logprob score asks for no completion: its trials do not depend on the generation settings.
    generation = None if score == "logprob" else generation_settings(config.lm.kwargs)
    study, storage = open_study(settings, space, score, dev, generation)
    if config.observer is not None:
        config.observer.search_started(settings.study, str(settings.storage or "memory"),
                                       SearchResult.from_study(study).trials, len(dev))
    objective = FormatObjective(dev, space, config.lm, score, config.splits.demo_pool(), threads=settings.threads,
                                seed=settings.seed, observer=config.observer, out=out,
                                info=RunInfo(kind="search-trial", data=config.data, filters=dict(config.filters),
                                             extra={"study": settings.study}))
    calls = CallBudget(settings.budget.max_lm_calls, offset)
    workers = Workers(study, storage, objective, settings.budget, settings.liveness, settings.n_workers, calls)
    objective.meter, objective.stop_reason = calls.meter, workers.stop_reason
    reason = workers.run()
    return SearchResult.from_study(study, reason), study


def _screen(config: SearchConfig, dev: Sequence[Question]) -> tuple[ScreenResult, list[TrialOutcome]]:
    """Stage 1: the log-probability study over the surfaces, on a sample of the dev questions; returns its result
    and the trials it promotes."""
    screen = config.screen
    assert screen is not None
    questions = screen.questions(dev, config.settings.seed)
    base = config.settings
    settings = dataclasses.replace(
        base, study=f"{base.study}-{SCREEN_DIR}", budget=Budget(screen.n_trials, base.budget.timeout_s,
                                                                base.budget.max_lm_calls),
        references=tuple(FormatSpace.logprob_variant(resolve_format(f)) for f in base.references))
    out = config.out / SCREEN_DIR if config.out else None
    result, _ = _run_stage(config, settings, surface_space(config.space), questions, "logprob", out)
    promoted = screen.promoted(result.trials)
    stage1 = {o.reference.removesuffix("-direct"): o.value for o in result.references.values()}
    stage1.update({f"screen-{o.number}": o.value for o in promoted})
    screened = ScreenResult(settings.study, result.n_complete, len(questions), result.lm_calls,
                            tuple(f"screen-{o.number}" for o in promoted), stage1, {}, n_pruned=result.n_pruned)
    return screened, promoted


def _manifest(config: SearchConfig, dev: Sequence[Question]) -> RunManifest:
    info = describe_lm(config.lm)
    assert config.out is not None
    s = config.settings
    return RunManifest.create(
        name=config.out.name, kind="search", data=config.data, model=info["model"], adapter=info["adapter"],
        backend=info["backend"], filters=dict(config.filters), generation=generation_settings(config.lm.kwargs),
        n_questions=len(dev),
        extra={"storage": s.storage, "study": s.study, "sampler": s.sampler, "score": config.score,
               "screen": dataclasses.asdict(config.screen) if config.screen else None,
               "split": config.splits.to_dict(), "space": config.space.to_dict()},
    )
