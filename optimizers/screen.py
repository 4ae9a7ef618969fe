"""A screened (multi-fidelity) search: a cheap log-probability stage picks the formats worth generating with.

Stage 1 is a study of its own (``<study>-screen``) over the format's *surface* (everything but the axes only
generation can tell apart, :data:`~.space.LOGPROB_FIXED`): each trial scores the direct-answer variant of a format by
the gold option's log-probability on a subset of the dev questions, one forward pass per question, with Wilcoxon
pruning. The top fraction of its formats (plus the reference formats) become the *candidates* of stage 2, the usual
generation objective on the whole dev split, whose space is ``candidate × generation axes``
(:class:`CandidateSpace`): reasoning, self-consistency, ensembles and Medprompt are searched there, on the surfaces
that survived. Both stages are ordinary Optuna studies in the same storage, so each resumes on its own.

Whether the cheap signal can be trusted depends on the model: :class:`ScreenResult` reports Spearman's ρ between
the candidates' stage-1 values and their best stage-2 values.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medjp_agent.errors import ConfigError
from medjp_agent.signatures import PromptFormat

from .objective import TrialOutcome
from .space import LOGPROB_FIXED, FormatSpace

if TYPE_CHECKING:
    import optuna

CANDIDATE = "candidate"


@dataclass(frozen=True)
class ScreenSettings:
    """Stage 1 of a screened search.

    Args:
        n_trials: Formats scored by log-probability (finished trials of the screening study).
        n_questions: Dev questions they are scored on (a seeded sample; all when the dev split is smaller).
        promote: Share of the screened formats (best first) that go on to stage 2; at least ``min_promoted``.
        min_promoted: Fewest formats promoted.
    """

    n_trials: int = 60
    n_questions: int = 30
    promote: float = 0.1
    min_promoted: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.promote <= 1:
            raise ConfigError(f"--promote must be in (0, 1], got {self.promote}")
        if self.n_trials < 1 or self.n_questions < 1 or self.min_promoted < 1:
            raise ConfigError("screening needs at least one trial, one question and one promoted format")

    def questions(self, dev: Sequence[Any], seed: int) -> list[Any]:
        """The screening subset: a seeded sample of the dev questions, in dev order."""
        if len(dev) <= self.n_questions:
            return list(dev)
        keep = set(random.Random(f"screen:{seed}").sample(range(len(dev)), self.n_questions))
        return [q for i, q in enumerate(dev) if i in keep]

    def promoted(self, outcomes: Sequence[TrialOutcome]) -> list[TrialOutcome]:
        """The best fully scored, distinct formats of stage 1 (references are promoted separately)."""
        full = sorted((o for o in outcomes if not o.pruned and o.duplicate_of is None and not o.reference),
                      key=lambda o: (-o.value, o.number))
        k = max(self.min_promoted, math.ceil(self.promote * len(full)))
        return full[:k]


def surface_space(space: FormatSpace) -> FormatSpace:
    """The space stage 1 searches: ``space`` with the generation-only axes fixed."""
    return space.for_logprob()


def generation_axes(space: FormatSpace) -> dict[str, tuple[Any, ...]]:
    """The axes of ``space`` only generation can tell apart: what stage 2 searches for each candidate."""
    return {name: values for name, values in space.axes.items() if name in LOGPROB_FIXED}


@dataclass(frozen=True)
class CandidateSpace:
    """Stage 2's space: a categorical ``candidate`` (a promoted surface format, by name) × the generation axes.

    It offers what the search needs of a :class:`FormatSpace`: ``sample``, ``params_for``, ``axes``, ``to_dict``.
    """

    candidates: Mapping[str, PromptFormat]
    generation: Mapping[str, tuple[Any, ...]]

    @property
    def axes(self) -> dict[str, tuple[Any, ...]]:
        return {CANDIDATE: tuple(self.candidates), **self.generation}

    def _space(self, name: str) -> FormatSpace:
        return FormatSpace(dict(self.generation), self.candidates[name])

    def sample(self, trial: "optuna.Trial") -> PromptFormat:
        name = trial.suggest_categorical(CANDIDATE, tuple(self.candidates))
        return self._space(str(name)).sample(trial)

    def params_for(self, fmt: PromptFormat) -> dict[str, Any] | None:
        """Params that rebuild ``fmt`` from the candidate with the same surface; None when no candidate has it."""
        for name in self.candidates:
            params = self._space(name).params_for(fmt)  # None unless fmt's surface is this candidate's
            if params is not None:
                return {CANDIDATE: name, **params}
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": {name: {k: v for k, v in f.to_dict().items() if k != "name"}
                               for name, f in self.candidates.items()},
                "axes": {name: list(values) for name, values in self.generation.items()}}


def candidates(promoted: Sequence[TrialOutcome], references: Sequence[PromptFormat],
               base: PromptFormat) -> dict[str, PromptFormat]:
    """Stage 2's candidates: the references (named after them) and the promoted formats (``screen-<trial>``, their
    generation-only fields back at ``base``'s values); a promoted surface equal to a reference's is kept once."""
    out: dict[str, PromptFormat] = {ref.name: ref for ref in references}
    seen = [_surface(f) for f in out.values()]
    for o in promoted:
        fmt = PromptFormat.from_dict(o.format).replace(**{k: getattr(base, k) for k in LOGPROB_FIXED})
        if _surface(fmt) not in seen:
            out[f"screen-{o.number}"] = fmt.replace(name=f"screen-{o.number}")
            seen.append(_surface(fmt))
    return out


def _surface(fmt: PromptFormat) -> PromptFormat:
    return fmt.replace(**LOGPROB_FIXED, name="surface")


@dataclass(frozen=True)
class ScreenResult:
    """Stage 1 in numbers, and how well it predicted stage 2.

    ``spearman`` is Spearman's ρ between each candidate's stage-1 value and its best stage-2 value (over the
    candidates fully evaluated in both; None with fewer than three), ``p_value`` its two-sided p-value;
    ``n_pruned`` the stage-1 formats the Wilcoxon pruner stopped.
    """

    study: str
    n_trials: int
    n_questions: int
    lm_calls: int
    promoted: tuple[str, ...]
    stage1: dict[str, float]
    stage2: dict[str, float]
    spearman: float | None = None
    p_value: float | None = None
    n_pruned: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_stage2(self, outcomes: Sequence[TrialOutcome], candidate_of: Mapping[int, str]) -> "ScreenResult":
        """This result with stage 2's best value per candidate (``candidate_of``: trial number -> candidate) and
        the rank correlation."""
        best: dict[str, float] = {}
        for o in outcomes:
            name = candidate_of.get(o.number, "")
            if not o.pruned and o.duplicate_of is None and name:
                best[name] = max(best.get(name, -math.inf), o.value)
        both = [name for name in self.stage1 if name in best]
        rho = p = None
        # A rank correlation needs three formats, and is undefined when either stage ranks them all equal.
        if len(both) >= 3 and len({self.stage1[n] for n in both}) > 1 and len({best[n] for n in both}) > 1:
            from scipy.stats import spearmanr

            test = spearmanr([self.stage1[n] for n in both], [best[n] for n in both])
            rho, p = _finite(test.statistic), _finite(test.pvalue)
        return dataclasses.replace(self, stage2=best, spearman=rho, p_value=p)


def _finite(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None
