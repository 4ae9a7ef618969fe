"""Did-you-mean suggestions for a mistyped name (a format, sampler, optimizer or question id)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_names(word: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` that look like ``word``, closest first (case-insensitive)."""
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=0.5)]


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` (or ``'x' or 'y'``) to follow the mistyped name in an error message; empty
    when nothing is close."""
    close = close_names(word, names)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
