"""Reading input text safely: bounded lines, UTF-8 with a located error, no directory mistaken for a file.

Every input file (questions, metadata, CSV tables, predictions, run results) is read through :func:`read_lines`, so a
50 MB line or a Shift-JIS file is a clear ``file:line`` error instead of a memory blow-up or a bare
``UnicodeDecodeError``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import Collector, DataError

#: Longest line accepted in a question, metadata, table or prediction file (IgakuQA's longest is about 4 KB).
MAX_LINE_BYTES = 1 << 20
#: Run results carry whole completions and samples, so their lines may be longer.
MAX_RESULT_LINE_BYTES = 64 << 20
_DRAIN_CHUNK = 1 << 16


def check_file(path: Path) -> None:
    """Raise a located error unless ``path`` is an existing regular file."""
    if path.is_dir():
        raise DataError(path, None, None, "is a directory, expected a file")
    if not path.exists():
        raise DataError(path, None, None, "no such file or directory")


def encoding_hint(raw: bytes) -> str:
    """Why ``raw`` is not UTF-8 and what to do; Japanese files are most often Shift-JIS (cp932)."""
    try:
        raw.decode("cp932")
    except UnicodeDecodeError:
        return "save the file as UTF-8"
    return "the file looks like Shift-JIS (cp932), common for Japanese files: convert it with `iconv -f cp932 -t utf-8`"


def decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """One line's bytes as text; not UTF-8 is a located error suggesting the likely encoding."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, lineno, None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                            f"{encoding_hint(raw)}") from None
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text  # a BOM is not content


def raw_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line_number, bytes with the line ending)``, holding at most ``max_bytes`` of a line: a longer line gives
    ``None`` and is skipped without being read into memory. ``path`` must be a file (see :func:`check_file`)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(max_bytes + 1), b""), start=1):
            if len(raw) <= max_bytes:
                yield lineno, raw
                continue
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(_DRAIN_CHUNK)
            yield lineno, None


def too_long(path: Path, lineno: int, max_bytes: int) -> DataError:
    return DataError(path, lineno, None, f"line longer than {max_bytes:,} bytes")


def read_lines(path: Path, errors: Collector, *, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with line endings kept, reading at most ``max_bytes`` of any line at once.

    A longer line or one that is not UTF-8 is reported to ``errors`` (raised, or skipped when lenient) and the
    following lines keep their numbers.
    """
    try:
        check_file(path)
    except DataError as e:
        errors.report(e)
        return
    for lineno, raw in raw_lines(path, max_bytes):
        try:
            if raw is None:
                raise too_long(path, lineno, max_bytes)
            yield lineno, decode_line(raw, path, lineno)
        except DataError as e:
            errors.report(e)


def parse_json(text: str, path: Path, line: int) -> Any:
    """``json.loads`` whose every failure is a :class:`DataError` located at ``path:line`` (the text's first line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # json's own messages may end in "at" ("Unterminated string starting at"): the column follows it.
        where = f"{e.msg.removesuffix(' at')} at column {e.colno}"
        raise DataError(path, line + e.lineno - 1, None, f"invalid JSON ({where})") from None
    except ValueError:  # json turns integer literals into int, which refuses more than sys.get_int_max_str_digits()
        raise DataError(path, line, None, f"invalid JSON (a number of more than {sys.get_int_max_str_digits():,} "
                                          "digits)") from None
    except RecursionError:
        raise DataError(path, line, None, "invalid JSON (nested too deeply)") from None


def read_jsonl(path: Path, errors: Collector, *, max_bytes: int = MAX_LINE_BYTES
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are allowed, anything else that is not a JSON object is an error."""
    for lineno, line in read_lines(path, errors, max_bytes=max_bytes):
        if not line.strip():
            continue
        try:
            obj = parse_json(line.rstrip("\r\n"), path, lineno)
        except DataError as e:
            errors.report(e)
            continue
        if not isinstance(obj, dict):
            errors.report(DataError(path, lineno, None, f"expected a JSON object, got {_kind(obj)}"))
            continue
        yield lineno, obj


def read_text(path: Path, *, max_bytes: int | None = None) -> str:
    """A whole text file; a folder, a missing file, one over ``max_bytes`` and text that is not UTF-8 are located
    errors."""
    check_file(path)
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise DataError(path, None, None, f"larger than {max_bytes:,} bytes")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(path, line, None, f"not UTF-8 (byte 0x{raw[e.start]:02x}); {encoding_hint(raw)}") from None


def read_json_object(path: Path, *, max_bytes: int = MAX_RESULT_LINE_BYTES) -> dict[str, Any]:
    """A whole JSON file holding one object (``summary.json``, ``manifest.json``), with located errors."""
    obj = parse_json(read_text(path, max_bytes=max_bytes), path, 1)
    if not isinstance(obj, dict):
        raise DataError(path, 1, None, f"expected a JSON object, got {_kind(obj)}")
    return obj


def _kind(obj: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
