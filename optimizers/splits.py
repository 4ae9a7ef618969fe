"""Train / dev / test splits shared by `medjp search` and `medjp optimize`.

Train questions are few-shot demos (and DSPy optimizers' trainset), dev questions decide between formats or
programs, and test questions are touched once at the end: a format chosen on dev and reported on dev would carry
the selection's optimism (the winner of many noisy comparisons looks better than it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medjp_agent.data import Question, split
from medjp_agent.signatures import default_pool, demo_from_question

DEFAULT_FRACTIONS = (0.2, 0.4, 0.4)


@dataclass(frozen=True)
class Splits:
    """Hash-based splits (a question keeps its split when others are added or filtered out)."""

    train: tuple[Question, ...]
    dev: tuple[Question, ...]
    test: tuple[Question, ...]
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    seed: int = 0

    @classmethod
    def make(cls, questions: Sequence[Question], fractions: Sequence[float] = DEFAULT_FRACTIONS,
             seed: int = 0) -> "Splits":
        if len(fractions) != 3:
            raise ValueError(f"split: expected three fractions TRAIN,DEV,TEST, got {list(fractions)}")
        train, dev, test = split(questions, fractions, seed=seed)
        if not dev or not test:
            raise ValueError(f"split {list(fractions)} of {len(questions)} questions leaves the dev or test split empty")
        return cls(tuple(train), tuple(dev), tuple(test), (fractions[0], fractions[1], fractions[2]), seed)

    def demo_pool(self) -> list[dict[str, Any]]:
        """The bundled exemplars (first, so ``fixed`` 1-shot keeps the paper's exemplar) plus the train questions."""
        return [*default_pool(), *(demo_from_question(q) for q in self.train if q.choices)]

    def to_dict(self) -> dict[str, Any]:
        return {"fractions": list(self.fractions), "seed": self.seed, "n_train": len(self.train),
                "n_dev": len(self.dev), "n_test": len(self.test)}
