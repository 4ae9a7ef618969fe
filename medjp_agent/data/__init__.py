"""Questions and their loaders. Nothing here imports an LM.

Every loader is strict by default: the first bad record raises :class:`DataError` naming file, line and field.
``lenient=True`` skips bad records instead and lists each one in ``Dataset.skipped``; ``Dataset.warnings`` says what
loaded with something unknown (a missing ``_metadata.jsonl``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .errors import Collector, DataError
from .igakuqa import SAMPLE_DIR, load_exemplars, load_igakuqa
from .medqa import load_medqa
from .question import LABELS, Dataset, Question, QuestionType
from .select import select, split
from .table import TABLE_FIELDS, load_table
from .textfile import read_lines

SAMPLE = "sample"


def load_dataset(path: str | Path = SAMPLE, *, columns: Mapping[str, str] | None = None, lenient: bool = False) -> Dataset:
    """Load questions from ``path``, choosing the loader by what is there.

    - ``"sample"``: the exam bundled with the package (original questions in IgakuQA's schema);
    - a directory: the IgakuQA layout;
    - a file with a column mapping: :func:`load_table`;
    - a ``.jsonl`` file: IgakuQA rows if they carry ``problem_id``, otherwise USMLE-JP/MedQA rows.
    """
    if str(path) == SAMPLE:
        if columns:
            raise DataError(Path(SAMPLE), None, None, "is the bundled exam, but column mappings need a JSONL or CSV "
                                                      "file given with --data")
        return load_igakuqa(SAMPLE_DIR, lenient=lenient)
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, None, "no such file or directory")
    if p.is_dir():
        if columns:
            raise DataError(p, None, None, "is a directory, but --column mappings need a JSONL or CSV file")
        return load_igakuqa(p, lenient=lenient)
    if columns:
        return load_table(p, columns, lenient=lenient)
    if p.suffix.lower() == ".csv":
        raise DataError(p, None, None, "a CSV file needs FIELD=COLUMN column mappings (fields: "
                                       f"{', '.join(TABLE_FIELDS)})")
    first = next((line for _, line in read_lines(p, Collector(lenient)) if line.strip()), "")
    if '"problem_id"' in first:
        return load_igakuqa(p, lenient=lenient)
    return load_medqa(p, lenient=lenient)


__all__ = [
    "LABELS", "SAMPLE", "SAMPLE_DIR", "TABLE_FIELDS", "DataError", "Dataset", "Question", "QuestionType",
    "load_dataset", "load_exemplars", "load_igakuqa", "load_medqa", "load_table", "select", "split",
]
