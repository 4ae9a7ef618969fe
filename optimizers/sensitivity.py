"""Format sensitivity, a result in its own right: how far accuracy moves when only the prompt format changes.

Following FormatSpread (Sclar et al. 2023), it is reported as the spread (best − worst) and the distribution of
accuracy over the formats tried. Only formats evaluated on the whole dev split count: a pruned trial's accuracy
rests on a few questions and would stretch the spread with noise.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .objective import TrialOutcome

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class FormatSensitivity:
    """Dev accuracy over the fully evaluated formats of a search.

    ``quantiles`` maps ``"p10"`` .. ``"p90"`` to accuracy; ``accuracies`` holds every format's accuracy, sorted, for
    histograms. With fewer than two formats the spread is 0.
    """

    n_formats: int
    best: float
    worst: float
    spread: float
    mean: float
    stdev: float
    best_format: str
    worst_format: str
    quantiles: dict[str, float] = field(default_factory=dict)
    accuracies: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[TrialOutcome]) -> "FormatSensitivity":
        full = sorted((o for o in outcomes if not o.pruned), key=lambda o: (o.accuracy, -o.number))
        if not full:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, "", "")
        acc = [o.accuracy for o in full]
        return cls(
            n_formats=len(full), best=acc[-1], worst=acc[0], spread=acc[-1] - acc[0], mean=statistics.fmean(acc),
            stdev=statistics.stdev(acc) if len(acc) > 1 else 0.0, best_format=full[-1].name,
            worst_format=full[0].name, quantiles={f"p{round(q * 100)}": float(np.quantile(acc, q)) for q in _QUANTILES},
            accuracies=tuple(acc),
        )

