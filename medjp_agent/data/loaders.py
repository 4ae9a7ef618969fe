"""Loaders for IgakuQA folders, USMLE-JP/MedQA-style JSONL and generic JSONL/CSV tables.

Every loader is strict by default: the first bad record raises :class:`DataError` naming file, line and field.
``lenient=True`` skips bad records instead and lists each one in ``Dataset.skipped``.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import Collector, DataError
from .question import LABELS, Dataset, Question

_SECTION_FILE = re.compile(r"^(?P<exam>[^_]+)-(?P<section>[^_]+)\.jsonl$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
SAMPLE_DIR = Path(__file__).parent / "sample"


def read_jsonl(path: Path, errors: Collector) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are allowed, anything else that is not a JSON object is an error."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.report(DataError(path, lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(obj, dict):
                errors.report(DataError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}"))
                continue
            yield lineno, obj


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path, line: int) -> Any:
    if key not in obj:
        raise DataError(path, line, key, "missing field")
    value = obj[key]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(path, line, key, f"expected {want}, got {type(value).__name__} {value!r}")
    return value


def parse_gold(raw: list[str] | str, n_choices: int, path: Path, line: int, field: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Gold answers -> (answers, alternative accepted sets). Handles "a or d" and numeric strings."""
    items = [raw] if isinstance(raw, str) else list(raw)
    if not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise DataError(path, line, field, f"expected one or more non-empty answer strings, got {raw!r}")
    items = [unicodedata.normalize("NFKC", x).strip() for x in items]
    if n_choices == 0:
        if len(items) != 1 or not _NUMBER.match(items[0]):
            raise DataError(path, line, field, f"a question without choices needs one numeric answer, got {raw!r}")
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
    return alternatives[0], tuple(alternatives[1:])


def _igakuqa_question(obj: dict[str, Any], meta: dict[str, Any] | None, year: int, section: str, path: Path, line: int) -> Question:
    qid = _require(obj, "problem_id", str, path, line)
    text = _require(obj, "problem_text", str, path, line)
    choices = _require(obj, "choices", list, path, line)
    if len(choices) > len(LABELS) or not all(isinstance(c, str) for c in choices):
        raise DataError(path, line, "choices", f"expected at most {len(LABELS)} strings, got {choices!r}")
    answers, accepted = parse_gold(_require(obj, "answer", (list, str), path, line), len(choices), path, line, "answer")
    points_raw = str(obj.get("points", "1"))
    if not points_raw.isdigit():
        raise DataError(path, line, "points", f"expected a whole number, got {obj.get('points')!r}")
    text_only = obj.get("text_only", True)
    if not isinstance(text_only, bool):
        raise DataError(path, line, "text_only", f"expected true or false, got {text_only!r}")
    meta = meta or {}
    human = meta.get("human_accuracy")
    return Question(
        id=qid, year=year, section=section, text=text, choices=tuple(choices), answers=answers, accepted=accepted,
        points=int(points_raw), text_only=text_only, category=meta.get("category", ""),
        forbidden=_parse_kinki(meta.get("kinki", ())), human_accuracy=float(human) if human not in (None, "") else None,
        explanation=obj.get("explanation", ""),
    )


def _parse_kinki(raw: list[str]) -> tuple[str, ...]:
    """IgakuQA writes forbidden choices as ["c"], ["ｃ"], ["cde"] or ["d", " e"]: normalise to sorted labels."""
    letters = "".join(unicodedata.normalize("NFKC", x) for x in raw).replace(",", "").replace(" ", "").lower()
    return tuple(sorted(set(letters)))


def _load_metadata(path: Path, errors: Collector) -> dict[str, tuple[int, dict[str, Any]]]:
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    if not path.exists():
        return out
    for line, obj in read_jsonl(path, errors):
        try:
            qid = _require(obj, "problem_id", str, path, line)
            kinki = obj.get("kinki", [])
            if not isinstance(kinki, list):
                raise DataError(path, line, "kinki", f"expected a list of labels, got {kinki!r}")
            if qid in out:
                raise DataError(path, line, "problem_id", f"duplicate id {qid!r} (first on line {out[qid][0]})")
        except DataError as e:
            errors.report(e)
            continue
        out[qid] = (line, obj)
    return out


def _year_of(path: Path) -> int:
    return int(path.parent.name) if path.parent.name.isdigit() else 0


def load_igakuqa(root: str | Path, *, lenient: bool = False) -> Dataset:
    """Load an IgakuQA-layout folder (``[data/]<year>/<exam>-<section>.jsonl`` plus ``_metadata.jsonl`` files),
    or one section file."""
    root = Path(root)
    if (root / "data").is_dir():
        root = root / "data"
    errors = Collector(lenient)
    candidates = [root] if root.is_file() else root.rglob("*.jsonl")
    files = sorted(p for p in candidates if _SECTION_FILE.match(p.name))
    if not files:
        raise DataError(root, None, None, "no IgakuQA question files (<year>/<exam>-<section>.jsonl) found")
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for path in files:
        section = path.stem
        meta = _load_metadata(path.with_name(f"{section}_metadata.jsonl"), errors)
        present: set[str] = set()  # ids the file holds, even of questions rejected in lenient mode
        for line, obj in read_jsonl(path, errors):
            try:
                qid = _require(obj, "problem_id", str, path, line)
                present.add(qid)
                if qid in seen:
                    raise DataError(path, line, "problem_id", f"duplicate id {qid!r} (first at {seen[qid]})")
                q = _igakuqa_question(obj, meta.get(qid, (0, None))[1], _year_of(path), section, path, line)
                _check_forbidden(q, path.with_name(f"{section}_metadata.jsonl"), meta.get(qid, (0, {}))[0])
            except DataError as e:
                errors.report(e)
                continue
            seen[qid] = f"{path}:{line}"
            questions.append(q)
        for qid, (line, _) in meta.items():
            if qid not in present:
                errors.report(DataError(path.with_name(f"{section}_metadata.jsonl"), line, "problem_id",
                                        f"metadata for {qid!r} has no question in {path.name}"))
    return Dataset(tuple(questions), str(root), tuple(errors.skipped))


def load_exemplars(path: str | Path | None = None, *, lenient: bool = False) -> Dataset:
    """Solved exemplars for few-shot demos (IgakuQA's ``prompts/prompt.jsonl`` schema, with ``explanation``)."""
    path = Path(path) if path else SAMPLE_DIR / "exemplars.jsonl"
    errors = Collector(lenient)
    questions: list[Question] = []
    for line, obj in read_jsonl(path, errors):
        try:
            questions.append(_igakuqa_question(obj, None, 0, "exemplar", path, line))
        except DataError as e:
            errors.report(e)
    return Dataset(tuple(questions), str(path), tuple(errors.skipped))


def _check_forbidden(q: Question, meta_path: Path, line: int) -> None:
    for label in q.forbidden:
        if label not in q.labels:
            raise DataError(meta_path, line, "kinki", f"forbidden choice {label!r} is not among {q.id}'s choices")


def _option_list(options: Any, path: Path, line: int) -> tuple[tuple[str, ...], list[str]]:
    """MedQA options as a dict {"A": text} or a list -> (texts, original keys in order)."""
    if isinstance(options, dict) and options:
        keys = list(options)
        values = list(options.values())
    elif isinstance(options, list) and options:
        keys, values = [LABELS[i].upper() for i in range(len(options))], options
    else:
        raise DataError(path, line, "options", f"expected a non-empty dict or list, got {options!r}")
    if len(values) > len(LABELS) or not all(isinstance(v, str) for v in values):
        raise DataError(path, line, "options", f"expected at most {len(LABELS)} option strings")
    return tuple(values), keys


def load_medqa(path: str | Path, *, lenient: bool = False, section: str = "usmle-jp") -> Dataset:
    """Load USMLE-JP / MedQA-style JSONL: ``question``, ``options`` (dict or list), ``answer_idx`` and/or ``answer``."""
    path = Path(path)
    errors = Collector(lenient)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path, errors):
        try:
            text = _require(obj, "question", str, path, line)
            choices, keys = _option_list(obj.get("options"), path, line)
            if "answer_idx" in obj:
                key = str(obj["answer_idx"]).strip()
                if key not in keys:
                    raise DataError(path, line, "answer_idx", f"{key!r} is not an option key ({', '.join(keys)})")
                index = keys.index(key)
            elif "answer" in obj:
                if obj["answer"] not in choices:
                    raise DataError(path, line, "answer", f"{obj['answer']!r} is not the text of any option")
                index = choices.index(obj["answer"])
            else:
                raise DataError(path, line, "answer_idx", "missing field (neither answer_idx nor answer given)")
            qid = str(obj.get("id", f"{path.stem}-{line}"))
            if qid in seen:
                raise DataError(path, line, "id", f"duplicate id {qid!r} (first on line {seen[qid]})")
        except DataError as e:
            errors.report(e)
            continue
        seen[qid] = line
        questions.append(Question(id=qid, year=0, section=section, text=text, choices=choices,
                                  answers=(LABELS[index],), explanation=str(obj.get("explanation", ""))))
    return Dataset(tuple(questions), str(path), tuple(errors.skipped))


#: Question fields a generic table may map columns to.
TABLE_FIELDS = ("id", "text", "choices", "answers", "year", "section", "points", "category", "explanation")


def load_table(path: str | Path, columns: Mapping[str, str], *, lenient: bool = False) -> Dataset:
    """Load a generic JSONL or CSV file with a column mapping ``{question field: column}``.

    ``choices`` maps to one column holding a JSON list (or ``|``-separated text), or to several columns separated by
    commas (``"choice_a,choice_b,choice_c"``). ``answers`` holds labels (``"a,c"``, ``"B"``) or a number.
    """
    path = Path(path)
    unknown = set(columns) - set(TABLE_FIELDS)
    if unknown:
        raise DataError(path, None, sorted(unknown)[0], f"unknown field; mappable fields are {', '.join(TABLE_FIELDS)}")
    for required in ("text", "answers"):
        if required not in columns:
            raise DataError(path, None, required, "the column mapping must name this field")
    errors = Collector(lenient)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for line, row in _table_rows(path, errors):
        try:
            q = _table_question(row, columns, path, line)
            if q.id in seen:
                raise DataError(path, line, columns.get("id", "id"), f"duplicate id {q.id!r} (first on line {seen[q.id]})")
        except DataError as e:
            errors.report(e)
            continue
        seen[q.id] = line
        questions.append(q)
    return Dataset(tuple(questions), str(path), tuple(errors.skipped))


def _table_rows(path: Path, errors: Collector) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() != ".csv":
        yield from read_jsonl(path, errors)
        return
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row


def _cell(row: Mapping[str, Any], column: str, path: Path, line: int) -> Any:
    if column not in row or row[column] in (None, ""):
        raise DataError(path, line, column, "missing field")
    return row[column]


def _table_question(row: Mapping[str, Any], columns: Mapping[str, str], path: Path, line: int) -> Question:
    spec = columns.get("choices", "")
    if "," in spec:
        choices = tuple(str(row[c]) for c in spec.split(",") if row.get(c) not in (None, ""))
    elif spec:
        raw = _cell(row, spec, path, line)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.lstrip().startswith("[") else raw.split("|")
            except json.JSONDecodeError as e:
                raise DataError(path, line, spec, f"invalid JSON list ({e.msg})") from None
        choices = tuple(str(c).strip() for c in raw)
    else:
        choices = ()
    answers, accepted = parse_gold(str(_cell(row, columns["answers"], path, line)).lower().split(",")
                                   if choices else str(_cell(row, columns["answers"], path, line)),
                                   len(choices), path, line, columns["answers"])
    def opt(name: str, default: Any) -> Any:
        col = columns.get(name)
        return row.get(col, default) if col else default
    try:
        year, points = int(opt("year", 0) or 0), int(opt("points", 1) or 1)
    except ValueError as e:
        raise DataError(path, line, columns.get("year") or columns.get("points"), f"expected a whole number ({e})") from None
    return Question(
        id=str(opt("id", f"{path.stem}-{line}")), year=year, section=str(opt("section", path.stem)),
        text=str(_cell(row, columns["text"], path, line)), choices=choices, answers=answers, accepted=accepted,
        points=points, category=str(opt("category", "")), explanation=str(opt("explanation", "")),
    )
