"""Would a run have passed the exam? NMLE (医師国家試験) verdicts per year from a run's question results.

A candidate passes a year's exam only when all three criteria hold (cut-offs in ``cutoffs.yaml``, with their source):

1. compulsory (必修) questions: at least the required share of their points (160 of 200, i.e. 80 %);
2. the other general and clinical questions (一般 + 臨床実地): at least that year's cut-off;
3. forbidden choices (禁忌肢): 4 or more questions with a forbidden choice picked (禁忌肢問題選択数) fail regardless
   of points; two forbidden choices picked in one question count once.

Which questions are compulsory is read from the block, the letter after the dash in ``QuestionResult.section``
(``112-B`` is block B); questions worth 0 points (excluded from marking) count for nothing.

**Scaling rule.** The official cut-offs are points out of the official totals, but the points actually present in a
run can differ: a data set may lack or add questions the official totals count,
and a run may be filtered (``--text-only``, some sections). Each points cut-off is therefore scaled to the points
present, keeping its share: ``required = official_required × present_total / official_total``, and the run passes
the criterion when ``points ≥ required``. Where the present totals equal the official ones this is exactly the
official rule. Otherwise the verdict is marked **approximate**, and so is any verdict on a filtered or incomplete
run: the compulsory rate is fixed, but the general+clinical cut-off is set on all candidates' scores after marking,
so a share of a different question set is only an estimate. The forbidden-choice limit is never scaled: picks on
a subset are a lower bound on picks over the whole exam, so 4 picks fail on any subset.

A year without a known cut-off (such as the bundled 2025 sample exam) gets the status ``no cut-off known``.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Literal

from medjp_agent.scoring import QuestionResult

from .serialize import Serializable

Status = Literal["pass", "fail", "undetermined", "no cut-off known"]
CUTOFFS_FILE = "cutoffs.yaml"


@dataclass(frozen=True)
class Cutoff(Serializable):
    """One exam's official pass criteria; ``required``/``total`` pairs are points."""

    year: int
    exam: int
    source: str
    compulsory_blocks: tuple[str, ...]
    compulsory_required: int
    compulsory_total: int
    general_required: int
    general_total: int
    forbidden_max: int


@functools.cache
def load_cutoffs() -> Mapping[int, Cutoff]:
    """The shipped cut-offs (``cutoffs.yaml``), keyed by the exam's calendar year (read once, read-only)."""
    import yaml

    text = resources.files(__package__).joinpath(CUTOFFS_FILE).read_text(encoding="utf-8")
    return MappingProxyType({
        int(year): Cutoff(
            year=int(year), exam=int(e["exam"]), source=str(e["source"]),
            compulsory_blocks=tuple(e["compulsory_blocks"]),
            compulsory_required=int(e["compulsory"]["required"]), compulsory_total=int(e["compulsory"]["total"]),
            general_required=int(e["general_clinical"]["required"]),
            general_total=int(e["general_clinical"]["total"]), forbidden_max=int(e["forbidden_max"]),
        )
        for year, e in yaml.safe_load(text).items()
    })


@dataclass(frozen=True)
class Criterion(Serializable):
    """A points criterion as applied to a run: ``required`` is the official cut-off scaled to ``possible``.

    ``passed`` is None when the run holds no scored question of this part, so it cannot be judged.
    """

    points: int
    possible: int
    required: float
    official_required: int
    official_total: int

    @property
    def passed(self) -> bool | None:
        return None if self.possible == 0 else self.points >= self.required

    @property
    def scaled(self) -> bool:
        return self.possible != self.official_total


@dataclass(frozen=True)
class YearVerdict(Serializable):
    """The verdict on one year's exam for one run, with the figures behind it and why it may be approximate."""

    run: str
    year: int
    status: Status
    forbidden: int
    approximate: bool = False
    exam: int | None = None
    compulsory: Criterion | None = None
    general: Criterion | None = None
    forbidden_max: int | None = None
    notes: tuple[str, ...] = ()
    source: str = ""
    #: Questions whose 禁忌肢 are unknown (no metadata): then ``forbidden`` is a lower bound and, below the limit,
    #: the 禁忌肢 criterion is unknown.
    forbidden_unknown: int = 0


def _block(section: str) -> str:
    return section.rsplit("-", 1)[-1]


def _criterion(results: Sequence[QuestionResult], required: int, total: int) -> Criterion:
    possible = sum(r.points_possible for r in results)
    return Criterion(points=sum(r.points for r in results), possible=possible,
                     required=required * possible / total, official_required=required, official_total=total)


def _status(compulsory: Criterion, general: Criterion, forbidden_ok: bool | None) -> Status:
    outcomes = (compulsory.passed, general.passed, forbidden_ok)
    if False in outcomes:
        return "fail"
    return "undetermined" if None in outcomes else "pass"


def year_verdict(results: Sequence[QuestionResult], cutoff: Cutoff | None, *, run: str = "", year: int = 0,
                 subset: Sequence[str] = ()) -> YearVerdict:
    """Judge one year's results against ``cutoff``; ``subset`` lists why the run is not the whole exam.

    Returns status ``no cut-off known`` when ``cutoff`` is None.
    """
    # 禁忌肢問題選択数: the criterion counts questions in which a forbidden choice was picked, not the choices.
    forbidden = sum(bool(r.forbidden_picked) for r in results)
    unknown = sum(not r.forbidden_known for r in results)
    unknown_note = ([f"禁忌肢 unknown for {unknown} questions (no metadata): {forbidden} picked is a lower bound"]
                    if unknown else [])
    if cutoff is None:
        return YearVerdict(run=run, year=year, status="no cut-off known", forbidden=forbidden,
                           notes=tuple(unknown_note), forbidden_unknown=unknown)
    is_compulsory = [_block(r.section) in cutoff.compulsory_blocks for r in results]
    compulsory = _criterion([r for r, c in zip(results, is_compulsory) if c],
                            cutoff.compulsory_required, cutoff.compulsory_total)
    general = _criterion([r for r, c in zip(results, is_compulsory) if not c],
                         cutoff.general_required, cutoff.general_total)
    notes = list(subset) + unknown_note
    notes += [f"{name}: {c.possible} of {c.official_total} points present, cut-off scaled to {c.required:.1f}"
              for name, c in (("必修", compulsory), ("一般+臨床", general)) if c.scaled]
    forbidden_ok = False if forbidden > cutoff.forbidden_max else None if unknown else True
    return YearVerdict(
        run=run, year=year, exam=cutoff.exam, status=_status(compulsory, general, forbidden_ok),
        compulsory=compulsory, general=general, forbidden=forbidden, forbidden_max=cutoff.forbidden_max,
        approximate=bool(notes), notes=tuple(notes), source=cutoff.source, forbidden_unknown=unknown,
    )


def exam_verdicts(results: Iterable[QuestionResult], *, run: str = "", subset: Sequence[str] = (),
                  cutoffs: Mapping[int, Cutoff] | None = None) -> tuple[YearVerdict, ...]:
    """One :class:`YearVerdict` per year present in ``results``, in year order.

    Args:
        results: a run's question results (any years, any subset).
        run: the run's label, carried into each verdict.
        subset: reasons the run does not cover the whole exam (e.g. ``"filtered: text_only"``); each marks every
            verdict approximate.
        cutoffs: cut-offs by year; default the shipped :func:`load_cutoffs`.
    """
    cutoffs = load_cutoffs() if cutoffs is None else cutoffs
    by_year: dict[int, list[QuestionResult]] = defaultdict(list)
    for r in results:
        by_year[r.year].append(r)
    return tuple(year_verdict(rows, cutoffs.get(year), run=run, year=year, subset=subset)
                 for year, rows in sorted(by_year.items()))
