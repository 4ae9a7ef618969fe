"""Names people can read: a searched format by what it changes, axis values with their axis, run folders.

- :func:`format_name`: ``markdown.upper.specialist.cot.5shot``, the values that differ from the search's base
  format, in axis order, instead of ``trial-5`` (a slug: a format's name also names its folders);
- :func:`axis_values`: ``template=json · casing=upper``, wherever values are shown;
- :func:`default_run_name`: ``<model>__<format>__<time>`` under ``runs/``, so two models never share a folder;
- :func:`counted`: ``1 trial``, ``3 trials``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Integer axes whose value reads best with a unit after it.
_SUFFIX = {"shots": "shot", "self_consistency": "vote", "ensemble": "ens"}
#: Whitespace and punctuation values (separators, joiners, an empty answer word) in words.
_SYMBOLS = {"：": "zenkaku-colon", ": ": "colon", " - ": "dash", "\n": "newline", "\n\n": "blank-line",
            "": "default"}
_WORD = re.compile(r"[^\w]+")
#: Between the words of a name: names are slugs (they name folders), and words hold only \w and '-'.
JOIN = "."
MAX_NAME = 100


def value_word(axis: str, value: Any) -> str:
    """One axis value as a word of a name, safe in a folder name: ``cot``, ``5shot``, ``full-width`` /
    ``no-full-width``, ``separator-newline``, ``custom-instruction`` for long free text."""
    flag = axis.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no-{flag}"
    if value is None:
        return f"no-{flag}"
    if isinstance(value, int):
        return f"{value}{_SUFFIX[axis]}" if axis in _SUFFIX else f"{flag}{value}"
    text = str(value)
    if text in _SYMBOLS:
        return f"{flag}-{_SYMBOLS[text]}"
    word = _WORD.sub("-", text).strip("-")
    return word if 0 < len(word) <= 16 else f"custom-{flag}"


def format_name(values: Mapping[str, Any], base: Mapping[str, Any], axes: Iterable[str] | None = None,
                empty: str = "base") -> str:
    """The values of ``values`` that differ from ``base`` (only ``axes`` if given), in order, joined by ``.``:
    ``markdown.upper.specialist.cot.5shot``. Past 100 characters the rest is counted (``….3more``)."""
    keys = list(axes) if axes is not None else [k for k in values if k != "name"]
    words = [value_word(k, values[k]) for k in keys if k in values and values[k] != base.get(k)]
    name = JOIN.join(words) or empty
    for kept in range(len(words) - 1, 0, -1):
        if len(name) <= MAX_NAME:
            break
        name = JOIN.join(words[:kept]) + f"{JOIN}{len(words) - kept}more"
    return name


def shown_value(value: Any) -> str:
    """A value as a table shows it: whitespace-only or padded strings as reprs, so separators stay visible."""
    padded = isinstance(value, str) and (not value or value != value.strip() or "\n" in value)
    return repr(value) if padded else str(value)


def axis_values(values: Mapping[str, Any], axes: Iterable[str]) -> str:
    """``axis=value`` for each of ``axes`` that ``values`` holds, separated by `` · ``."""
    return " · ".join(f"{a}={shown_value(values[a])}" for a in axes if a in values)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", Path(text.rstrip("/")).name or text).strip("-.") or "model"


def default_run_name(model: str | None, fmt: str, when: float | None = None) -> str:
    """``<model>__<format>__<YYYYmmdd-HHMMSS>``: the model's folder or hub name, the format, the local time."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"{_slug(model or 'tiny')}__{_slug(fmt)}__{stamp}"


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (``noun`` is an English word taking -s, or a phrase ending in
    one: ``bad record``)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
