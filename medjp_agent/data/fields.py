"""Typed checks of single input fields; each failure is a :class:`DataError` naming file, line and field."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from .errors import DataError
from .question import LABELS

#: Longest question text and choice accepted (IgakuQA's longest are about 1,200 and 70 characters).
MAX_TEXT_CHARS = 20_000
MAX_CHOICE_CHARS = 2_000
MAX_ID_CHARS = 200
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$", re.ASCII)
_WHOLE = re.compile(r"^\d{1,4}$", re.ASCII)  # ASCII only: "²".isdigit() is True but int("²") fails


def require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path, line: int | None) -> Any:
    """``obj[key]``, which must be present and of ``kind``."""
    if key not in obj:
        raise DataError(path, line, key, "missing field")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(path, line, key, f"expected {want}, got {type(value).__name__} {_short(value)}")
    return value


def check_types(obj: Mapping[str, Any], required: Mapping[str, type | tuple[type, ...]],
                optional: Mapping[str, type | tuple[type, ...]], path: Path, line: int | None) -> None:
    """Every ``required`` key present with its type, every ``optional`` one of its type when present and not null."""
    for key, kind in required.items():
        require(obj, key, kind, path, line)  # type: ignore[arg-type]
    for key, kind in optional.items():
        if obj.get(key) is not None:
            require(obj, key, kind, path, line)  # type: ignore[arg-type]


def text(value: Any, path: Path, line: int, field: str, *, limit: int = MAX_TEXT_CHARS, blank: bool = False) -> str:
    """A non-empty string of at most ``limit`` characters; only whitespace is empty too unless ``blank``."""
    if not isinstance(value, str):
        raise DataError(path, line, field, f"expected a string, got {type(value).__name__} {_short(value)}")
    if not (value if blank else value.strip()):
        raise DataError(path, line, field, "empty")
    if len(value) > limit:
        raise DataError(path, line, field, f"longer than {limit:,} characters ({len(value):,})")
    return value


def identifier(value: Any, path: Path, line: int, field: str) -> str:
    return text(value, path, line, field, limit=MAX_ID_CHARS)


def choices(values: Any, path: Path, line: int, field: str) -> tuple[str, ...]:
    """Up to nine non-empty choice strings. Whitespace is allowed: IgakuQA's 114C11 has full-width spaces for
    choices whose content is a table in the question text."""
    if not isinstance(values, (list, tuple)) or len(values) > len(LABELS):
        raise DataError(path, line, field, f"expected a list of at most {len(LABELS)} strings, got {_short(values)}")
    for i, value in enumerate(values):
        text(value, path, line, f"{field}[{i}]", limit=MAX_CHOICE_CHARS, blank=True)
    return tuple(values)


def whole_number(value: Any, path: Path, line: int, field: str, default: int) -> int:
    """A whole number written as an int or ASCII digits (at most 4); ``None`` or ``""`` gives ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000:
        return value
    if isinstance(value, str) and _WHOLE.match(value.strip()):
        return int(value)
    raise DataError(path, line, field, f"expected a whole number from 0 to 9999, got {_short(value)}")


def number(value: Any, path: Path, line: int, field: str) -> float | None:
    """A finite number written as a JSON number or a decimal string; ``None`` or ``""`` means unknown."""
    if value is None or value == "":
        return None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric or isinstance(value, str) and _NUMBER.match(value.strip()):
        try:
            result = float(value)
        except OverflowError:  # an int beyond float's range
            result = math.inf
        if math.isfinite(result):
            return result
    raise DataError(path, line, field, f"expected a number, got {_short(value)}")


def percentage(value: Any, path: Path, line: int, field: str) -> float | None:
    """A share in percent (IgakuQA writes ``"39.3"``); ``None`` or ``""`` means unknown."""
    share = number(value, path, line, field)
    if share is not None and not 0 <= share <= 100:
        raise DataError(path, line, field, f"expected a percentage from 0 to 100, got {_short(value)}")
    return share


def forbidden_labels(raw: Any, path: Path, line: int, field: str = "kinki") -> tuple[str, ...]:
    """IgakuQA writes forbidden choices as ["c"], ["ｃ"], ["cde"] or ["d", " e"]: normalise to sorted labels."""
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise DataError(path, line, field, f"expected a list of labels (strings), got {_short(raw)}")
    letters = "".join(unicodedata.normalize("NFKC", x) for x in raw).replace(",", "").replace(" ", "").lower()
    stray = next((c for c in letters if c not in LABELS), None)
    if stray is not None:
        raise DataError(path, line, field, f"{stray!r} is not among the labels {LABELS[0]}-{LABELS[-1]} in {_short(raw)}")
    return tuple(sorted(set(letters)))


def gold(raw: Any, n_choices: int, path: Path, line: int, field: str
         ) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Gold answers -> (answers, alternative accepted sets). Handles "a or d", ["a", "c"] and numeric strings."""
    items = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
    if not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise DataError(path, line, field, f"expected one or more non-empty answer strings, got {_short(raw)}")
    items = [unicodedata.normalize("NFKC", x).strip() for x in items]
    if n_choices == 0:
        if len(items) != 1 or not _NUMBER.match(items[0]):
            raise DataError(path, line, field, f"a question without choices needs one numeric answer, got {_short(raw)}")
        return (items[0],), ()
    alternatives: list[tuple[str, ...]] = []
    for item in items:
        alternatives.extend(tuple(p.strip().lower() for p in re.split(r"[,、]", alt)) for alt in item.split(" or "))
    if len(items) > 1:  # ["a", "c"]: one multi-label answer, not alternatives
        alternatives = [tuple(sorted(x for alt in alternatives for x in alt))]
    valid = LABELS[:n_choices]
    for alt in alternatives:
        for label in alt:
            if label not in valid:
                raise DataError(path, line, field, f"answer {label!r} is not among the {n_choices} choices ({', '.join(valid)})")
        repeated = sorted({label for label in alt if alt.count(label) > 1})
        if repeated:  # ("a", "a") could never be matched by a set of picked labels
            raise DataError(path, line, field, f"answer {repeated[0]!r} is repeated in {_short(raw)}")
    return alternatives[0], tuple(alternatives[1:])


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: a 5,000-digit number or a 50 MB string is not echoed whole."""
    if isinstance(value, int) and value.bit_length() > 3 * limit:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 1] + "…"


#: What a value of each plain type of a settings field (PromptFormat's, TrainConfig's) must be, and how a message
#: names it. YAML files give a quoted "false" or 1.7 as readily as the real thing, and Python would take either (a
#: non-empty string is true, a float passes ``0 <= shots <= 8`` and then cannot slice); ``bool`` is an ``int`` to
#: ``isinstance``.
_FIELD_TYPES: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, float) and math.isfinite(v)),
            "a finite number"),
    str: (lambda v: isinstance(v, str), "text"),
}


def type_problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` cannot be the value of a field annotated ``hint`` (a Literal, a plain type, or ``X | None``)."""
    options = get_args(hint)
    if get_origin(hint) is Literal:
        return None if value in options else f"{value!r} is not one of {', '.join(options)}"
    if value is None and type(None) in options:
        return None
    kinds = [t for t in options or (hint,) if t is not type(None)]
    if any(_FIELD_TYPES[t][0](value) for t in kinds):
        return None
    return f"expected {' or '.join(_FIELD_TYPES[t][1] for t in kinds)}, got {value!r}"
