"""Why completions ended, carried from a backend to the result of a question through DSPy's usage tracking.

A backend adds ``{"finish_reasons": {"stop": 2, "length": 1}}`` to each call's ``usage``. DSPy's usage tracker
sums nested counts, so a question's merged usage counts the finish reasons of every completion it asked for
(self-consistency samples and ensemble votes included), and :func:`finish_summary` turns that into the
``finish_reason`` and ``truncated`` fields of its result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

#: OpenAI's finish reason of a completion cut off at ``max_tokens``.
TRUNCATED = "length"
KEY = "finish_reasons"


def finish_counts(reasons: Iterable[str | None]) -> dict[str, int]:
    """Counts by finish reason (a server that sends none counts as ``"unknown"``)."""
    return dict(Counter(str(r or "unknown") for r in reasons))


def finish_summary(usage_by_lm: Mapping[str, Mapping[str, Any]]) -> tuple[str, bool]:
    """``(finish_reason, truncated)`` of a question from ``prediction.get_lm_usage()``.

    ``finish_reason`` is ``"length"`` when any completion was cut off at the token limit (its answer may be
    missing), else the most common reason; ``""`` when no backend reported any.
    """
    counts: Counter[str] = Counter()
    for usage in usage_by_lm.values():
        counts.update(usage.get(KEY) or {})
    if not counts:
        return "", False
    truncated = counts[TRUNCATED] > 0
    return (TRUNCATED if truncated else counts.most_common(1)[0][0]), truncated
