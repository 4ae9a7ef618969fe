"""The samplers a format search can use, each configured for an all-categorical, conditional space.

- ``tpe`` (default): multivariate TPE with ``group=True``, so the conditional sub-spaces (e.g. demo settings only
  when there are shots) are modelled jointly within each group rather than as independent axes; ``constant_liar``
  keeps parallel workers from sampling the same point while trials are still running.
- ``gp``: Gaussian-process BO (needs torch, imported only when chosen). It fits the axes present in every trial and
  samples conditional ones at random.
- ``random``: the baseline every smarter sampler must beat.
- ``grid``: every combination (paper-style A/B on a small space), visited in a seeded order.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal, get_args

import optuna

from medjp_agent.suggest import did_you_mean

from .space import FormatSpace

SamplerName = Literal["tpe", "gp", "random", "grid"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)


def make_sampler(name: str, space: FormatSpace, seed: int | None = 0, n_startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name`` (:data:`SAMPLERS`), seeded; ``n_startup_trials`` random trials first."""
    with warnings.catch_warnings():
        # multivariate/group TPE and the GP sampler are flagged experimental; their behaviour is what we want.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=n_startup_trials)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials,
                                             warn_independent_sampling=False)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ValueError(f"unknown sampler {name!r}{did_you_mean(name, SAMPLERS)}; choose one of {', '.join(SAMPLERS)}")


def process_seed(seed: int | None) -> int:
    """A sampler seed of this process's own, for a process that joins or resumes a study: seeded like the process
    that created it, it would sample the very trials that one already ran."""
    return ((seed or 0) ^ int.from_bytes(os.urandom(4), "big")) % 2**32
