"""Located input errors: every bad record names its file, line and field."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A bad input record. ``str()`` reads ``path:line: field: message`` so editors can jump to it."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class Collector:
    """Raises the first error (strict), or records it and lets the caller skip the record (lenient)."""

    def __init__(self, lenient: bool = False):
        self.lenient = lenient
        self.skipped: list[str] = []

    def report(self, error: DataError) -> None:
        if not self.lenient:
            raise error
        self.skipped.append(str(error))
