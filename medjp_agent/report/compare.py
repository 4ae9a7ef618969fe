"""Paired comparisons of runs against a baseline run: accuracy delta, bootstrap CI, exact McNemar, Holm."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from medjp_agent.results import Run

from .serialize import Serializable
from .stats import holm, mcnemar_exact, paired_bootstrap_ci


@dataclass(frozen=True)
class Comparison(Serializable):
    """One run against the baseline on the questions both answered.

    ``lost`` and ``gained`` are McNemar's discordant counts (baseline right and run wrong; the reverse). ``p_holm`` is
    the p-value after Holm's adjustment over every comparison in the same report, and ``significant`` says whether
    the delta survives it at the report's α.
    """

    baseline: str
    run: str
    n: int
    baseline_accuracy: float
    run_accuracy: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    lost: int
    gained: int
    p_value: float
    p_holm: float
    significant: bool


def paired_outcomes(first: Run, second: Run) -> tuple[list[bool], list[bool]]:
    """Correctness of both runs on the questions they share, in the first run's order."""
    by_id = {r.id: r.correct for r in second.results}
    shared = [r for r in first.results if r.id in by_id]
    return [r.correct for r in shared], [by_id[r.id] for r in shared]


def compare_runs(baseline: Run, runs: Sequence[Run], *, labels: Sequence[str] | None = None,
                 baseline_label: str | None = None, alpha: float = 0.05, confidence: float = 0.95,
                 n_boot: int = 10_000, seed: int = 0) -> tuple[Comparison, ...]:
    """Compare every run with ``baseline``; Holm-adjust the p-values over all of them.

    A run that shares no question with the baseline gets no comparison (there is nothing to pair). ``labels`` name
    the runs in the results (default: each run's own label).
    """
    labels = list(labels) if labels is not None else [run.label for run in runs]
    raw = []
    for run, label in zip(runs, labels):
        base, other = paired_outcomes(baseline, run)
        if not base:
            continue
        lost = sum(b and not o for b, o in zip(base, other))
        gained = sum(o and not b for b, o in zip(base, other))
        n = len(base)
        low, high = paired_bootstrap_ci(base, other, n_boot=n_boot, confidence=confidence, seed=seed)
        raw.append(Comparison(
            baseline=baseline_label or baseline.label, run=label, n=n, baseline_accuracy=sum(base) / n,
            run_accuracy=sum(other) / n, delta=(sum(other) - sum(base)) / n, ci_low=low, ci_high=high,
            confidence=confidence, lost=lost, gained=gained, p_value=mcnemar_exact(lost, gained), p_holm=1.0,
            significant=False,
        ))
    adjusted = holm([c.p_value for c in raw])
    return tuple(dataclasses.replace(c, p_holm=p, significant=p <= alpha) for c, p in zip(raw, adjusted))
