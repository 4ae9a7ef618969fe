"""Located input errors: every bad record names its file, line and field."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medjp_agent.errors import MedjpError

if TYPE_CHECKING:
    from .question import Dataset, Question


class DataError(MedjpError, ValueError):
    """A bad input record. ``str()`` reads ``path:line: field: message`` so editors can jump to it."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class Collector:
    """Raises the first error (strict), or records it and lets the caller skip the record (lenient).

    Warnings (input that loads but with something unknown, such as a missing metadata file) are always recorded.
    """

    def __init__(self, lenient: bool = False):
        self.lenient = lenient
        self.skipped: list[str] = []
        self.warnings: list[str] = []

    def report(self, error: DataError) -> None:
        if not self.lenient:
            raise error
        self.skipped.append(str(error))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def dataset(self, questions: Iterable["Question"], source: str | Path) -> "Dataset":
        from .question import Dataset

        return Dataset(tuple(questions), str(source), tuple(self.skipped), tuple(self.warnings))


def unique_questions(rows: Iterable[tuple[int, Any]], build: Callable[[Any, int], "Question"], path: Path,
                     id_field: str, errors: Collector) -> list["Question"]:
    """``build(row, line)`` for each row; a bad row or a repeated id is reported to ``errors``."""
    questions: list["Question"] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            q = build(row, line)
            if q.id in seen:
                raise DataError(path, line, id_field, f"duplicate id {q.id!r} (first on line {seen[q.id]})")
        except DataError as e:
            errors.report(e)
            continue
        seen[q.id] = line
        questions.append(q)
    return questions
