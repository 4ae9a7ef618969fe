"""Stopping a clearly worse format early: Optuna's WilcoxonPruner over per-question scores.

Why Wilcoxon: every trial answers the same dev questions, so a trial and the best trial so far form *paired*
observations (question ``i`` is easy or hard for both). The signed-rank test on the per-question differences removes
that shared difficulty, which a comparison of two running means (MedianPruner, successive halving) cannot; and it
needs no assumption about the scores' distribution, so it serves 0/1 correctness and log-probabilities alike.
The test is one-sided ("is this trial *worse*?"), because a trial that may be better must never be stopped.

Reading the knobs:
- ``p_threshold``: the pruner stops a trial once the one-sided p-value falls below it. The test is repeated after
  every question, which inflates the false-stop rate over a single test (a Pocock-style correction would lower
  the threshold); 0.1 trades a few wrongly stopped near-ties for many saved LM calls.
- ``n_startup_steps``: no stop before this many paired questions. With 0/1 scores only questions the two formats
  disagree on carry information, so very early stops would rest on a handful of pairs. It must be at least
  :data:`MIN_STARTUP_STEPS`: on up to 13 pairs with ties (always, with 0/1 scores) SciPy's ``wilcoxon`` switches to
  an exhaustive 2^n permutation test that takes seconds per call, i.e. per answered question.
"""

from __future__ import annotations

import warnings

import optuna

MIN_STARTUP_STEPS = 14


def make_pruner(*, enabled: bool = True, p_threshold: float = 0.1, n_startup_steps: int = 20) -> optuna.pruners.BasePruner:
    """WilcoxonPruner with explicit settings, or a pruner that never stops a trial (``enabled=False``)."""
    if n_startup_steps < MIN_STARTUP_STEPS:
        raise ValueError(f"n_startup_steps must be at least {MIN_STARTUP_STEPS}, got {n_startup_steps}")
    if not enabled:
        return optuna.pruners.NopPruner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner(p_threshold=p_threshold,
                                             n_startup_steps=n_startup_steps)
