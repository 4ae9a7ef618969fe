"""Generic JSONL or CSV question tables read through a column mapping ``{question field: column}``.

CSV files are read as UTF-8 with an optional BOM; the mapping is checked against the header, and a row with more or
fewer cells than the header, or an empty choice cell followed by a filled one (which would shift every later label),
is an error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import fields
from .errors import Collector, DataError, unique_questions
from .question import Dataset, Question
from .textfile import read_jsonl, read_lines

#: Question fields a generic table may map columns to.
TABLE_FIELDS = ("id", "text", "choices", "answers", "year", "section", "points", "category", "explanation")


def mapped_columns(columns: Mapping[str, str]) -> dict[str, str]:
    """Every column the mapping names -> the field it feeds (``choices`` may name several, comma-separated)."""
    return {c.strip(): name for name, spec in columns.items() for c in (spec.split(",") if name == "choices" else [spec])}


def _check_mapping(path: Path, columns: Mapping[str, str]) -> None:
    unknown = set(columns) - set(TABLE_FIELDS)
    if unknown:
        raise DataError(path, None, sorted(unknown)[0], f"unknown field; mappable fields are {', '.join(TABLE_FIELDS)}")
    for required in ("text", "answers"):
        if required not in columns:
            raise DataError(path, None, required, "the column mapping must name this field")
    for column, name in mapped_columns(columns).items():
        if not column:
            raise DataError(path, None, name, "empty column name in the mapping")


def load_table(path: str | Path, columns: Mapping[str, str], *, lenient: bool = False) -> Dataset:
    """Load a generic JSONL or CSV file with a column mapping ``{question field: column}``.

    ``choices`` maps to one column holding a JSON list (or ``|``-separated text), or to several columns separated by
    commas (``"choice_a,choice_b,choice_c"``). ``answers`` holds labels (``"a,c"``, ``"B"``) or a number.
    """
    path = Path(path)
    _check_mapping(path, columns)
    errors = Collector(lenient)
    rows = _csv_rows(path, columns, errors) if path.suffix.lower() == ".csv" else read_jsonl(path, errors)
    questions = unique_questions(rows, lambda row, line: _table_question(row, columns, path, line), path,
                                 columns.get("id", "id"), errors)
    return errors.dataset(questions, path)


def _check_header(header: list[str], columns: Mapping[str, str], path: Path) -> None:
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(path, 1, repeated[0], "column name repeated in the header")
    for column, name in mapped_columns(columns).items():
        if column not in header:
            raise DataError(path, 1, column, f"no such column (--column {name}=...); the header has: {', '.join(header)}")


def _csv_rows(path: Path, columns: Mapping[str, str], errors: Collector) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(physical line where the record ends, {column: cell})`` for each CSV record after the header."""
    at = [0]

    def texts() -> Iterator[str]:
        for lineno, text in read_lines(path, errors):
            at[0] = lineno
            yield text

    reader = csv.reader(texts(), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(path, None, None, "empty file, expected a header row")
        _check_header(header, columns, path)
        for cells in reader:
            if not cells or cells == [""]:
                continue
            if len(cells) != len(header):
                errors.report(DataError(path, at[0], None, f"{len(cells)} cells, but the header has {len(header)}"))
                continue
            yield at[0], dict(zip(header, cells))
    except csv.Error as e:  # the reader cannot resynchronise after a broken quote, so the file stops here
        errors.report(DataError(path, at[0], None, f"bad CSV ({e})"))


def _cell(row: Mapping[str, Any], column: str, path: Path, line: int) -> Any:
    if column not in row or row[column] in (None, ""):
        raise DataError(path, line, column, "missing field")
    return row[column]


def _optional(row: Mapping[str, Any], columns: Mapping[str, str], name: str, path: Path, line: int) -> Any:
    """A mapped optional field's value (None when its cell is empty); a mapped column absent from a row is an error."""
    column = columns.get(name)
    if column is None:
        return None
    if column not in row:
        raise DataError(path, line, column, "missing field")
    return None if row[column] in (None, "") else row[column]


def _choices(row: Mapping[str, Any], spec: str, path: Path, line: int) -> tuple[str, ...]:
    if "," in spec:
        cells = [(c.strip(), row.get(c.strip())) for c in spec.split(",")]
        while cells and cells[-1][1] in (None, ""):  # fewer choices than columns: trailing cells stay empty
            cells.pop()
        for column, value in cells:
            if value in (None, ""):
                raise DataError(path, line, column, "empty choice before a filled one (every later label would shift)")
        return fields.choices([_as_text(v) for _, v in cells], path, line, spec)
    raw = _cell(row, spec, path, line)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.lstrip().startswith("[") else raw.split("|")
        except json.JSONDecodeError as e:
            raise DataError(path, line, spec, f"invalid JSON list ({e.msg})") from None
    return fields.choices([_as_text(c) for c in raw] if isinstance(raw, list) else raw, path, line, spec)


def _as_text(value: Any) -> Any:
    """Choice cells as text: numbers (JSONL tables) are written out, strings stripped, anything else left to fail."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else value


def _table_question(row: Mapping[str, Any], columns: Mapping[str, str], path: Path, line: int) -> Question:
    spec = columns.get("choices", "")
    choices = _choices(row, spec, path, line) if spec else ()
    raw = str(_cell(row, columns["answers"], path, line))
    answers, accepted = fields.gold(raw.split(",") if choices else raw, len(choices), path, line, columns["answers"])

    def opt(name: str) -> Any:
        return _optional(row, columns, name, path, line)

    qid = str(_cell(row, columns["id"], path, line)) if "id" in columns else f"{path.stem}-{line}"
    return Question(
        id=fields.identifier(qid, path, line, columns.get("id", "id")),
        year=fields.whole_number(opt("year"), path, line, columns.get("year", "year"), 0),
        section=str(opt("section") or path.stem),
        text=fields.text(_cell(row, columns["text"], path, line), path, line, columns["text"]),
        choices=choices, answers=answers, accepted=accepted,
        points=fields.whole_number(opt("points"), path, line, columns.get("points", "points"), 1),
        category=str(opt("category") or ""), explanation=str(opt("explanation") or ""),
    )
