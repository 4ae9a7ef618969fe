"""The IgakuQA layout: ``[data/]<year>/<exam>-<section>.jsonl`` with ``<exam>-<section>_metadata.jsonl`` beside it.

Every ``.jsonl`` file in a year folder is a section file, its metadata or translation, or an error: a misnamed
section (``112B.jsonl``, ``112-C.JSONL``, ``112-D_v2.jsonl``) is never silently left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fields
from .errors import Collector, DataError
from .question import Dataset, Question
from .textfile import read_jsonl

_SECTION_FILE = re.compile(r"^(?P<exam>[^_]+)-(?P<section>[^_]+)\.jsonl$")
_COMPANION_FILE = re.compile(r"^(?P<stem>[^_]+-[^_]+)_(metadata|translate)\.jsonl$")
SAMPLE_DIR = Path(__file__).parent / "sample"
_NAMING = "IgakuQA names section files <exam>-<section>.jsonl (e.g. 112-A.jsonl)"


@dataclass(frozen=True)
class Metadata:
    """One ``_metadata.jsonl`` line, checked."""

    line: int
    category: str
    forbidden: tuple[str, ...]
    human_accuracy: float | None


def parse_metadata(obj: dict[str, Any], path: Path, line: int) -> tuple[str, Metadata]:
    """Check every known metadata field's type; returns ``(problem_id, metadata)``."""
    qid = fields.identifier(fields.require(obj, "problem_id", str, path, line), path, line, "problem_id")
    for key in ("category", "reason"):
        if not isinstance(obj.get(key, ""), str):
            raise DataError(path, line, key, f"expected a string, got {type(obj[key]).__name__}")
    breakdown = obj.get("breakdown", [])
    if not isinstance(breakdown, list):
        raise DataError(path, line, "breakdown", f"expected a list of numbers, got {type(breakdown).__name__}")
    for i, share in enumerate(breakdown):  # not range-checked: IgakuQA's own data holds a typo ("500.3")
        fields.number(share, path, line, f"breakdown[{i}]")
    return qid, Metadata(line=line, category=obj.get("category", ""),
                         forbidden=fields.forbidden_labels(obj.get("kinki", []), path, line),
                         human_accuracy=fields.percentage(obj.get("human_accuracy"), path, line, "human_accuracy"))


def load_metadata(path: Path, errors: Collector) -> dict[str, Metadata]:
    out: dict[str, Metadata] = {}
    for line, obj in read_jsonl(path, errors):
        try:
            qid, meta = parse_metadata(obj, path, line)
            if qid in out:
                raise DataError(path, line, "problem_id", f"duplicate id {qid!r} (first on line {out[qid].line})")
        except DataError as e:
            errors.report(e)
            continue
        out[qid] = meta
    return out


def igakuqa_question(obj: dict[str, Any], meta: Metadata | None, year: int, section: str, path: Path, line: int
                     ) -> Question:
    """One question line; ``meta`` None means its 禁忌肢 (forbidden choices) are unknown."""
    qid = fields.identifier(fields.require(obj, "problem_id", str, path, line), path, line, "problem_id")
    body = fields.text(fields.require(obj, "problem_text", str, path, line), path, line, "problem_text")
    options = fields.choices(fields.require(obj, "choices", list, path, line), path, line, "choices")
    answers, accepted = fields.gold(fields.require(obj, "answer", (list, str), path, line), len(options), path, line,
                                    "answer")
    text_only = obj.get("text_only", True)
    if not isinstance(text_only, bool):
        raise DataError(path, line, "text_only", f"expected true or false, got {text_only!r}")
    explanation = obj.get("explanation", "")
    if not isinstance(explanation, str):
        raise DataError(path, line, "explanation", f"expected a string, got {type(explanation).__name__}")
    return Question(
        id=qid, year=year, section=section, text=body, choices=options, answers=answers, accepted=accepted,
        points=fields.whole_number(obj.get("points"), path, line, "points", 1), text_only=text_only,
        category=meta.category if meta else "", forbidden=meta.forbidden if meta else (),
        forbidden_known=meta is not None, human_accuracy=meta.human_accuracy if meta else None,
        explanation=explanation,
    )


def section_files(root: Path, errors: Collector) -> list[Path]:
    """The section files under ``root`` (a file, a year folder, or a folder of year folders), in order.

    Misnamed ``.jsonl`` files, and metadata without its section file, are reported to ``errors``.
    """
    if not root.exists():
        raise DataError(root, None, None, "no such file or directory")
    if root.is_file():
        if not _SECTION_FILE.match(root.name):
            raise DataError(root, None, None, f"not an IgakuQA section file name; {_NAMING}")
        return [root]
    years = [d for d in root.iterdir() if d.is_dir() and d.name.isdigit()] or [root]
    found = sorted(p for d in years for p in d.rglob("*") if p.suffix.lower() == ".jsonl")
    files = [p for p in found if _SECTION_FILE.match(p.name)]
    for p in found:
        companion = _COMPANION_FILE.match(p.name)
        if companion and not p.with_name(f"{companion['stem']}.jsonl").exists():
            errors.report(DataError(p, None, None, f"no section file {companion['stem']}.jsonl beside it"))
        elif not companion and p not in files:
            errors.report(DataError(p, None, None, f"not an IgakuQA section file name; {_NAMING}"))
    if not files:
        raise DataError(root, None, None, "no IgakuQA question files (<year>/<exam>-<section>.jsonl) found")
    return files


def _year_of(path: Path) -> int:
    return int(path.parent.name) if path.parent.name.isdigit() else 0


def _section_metadata(path: Path, errors: Collector) -> tuple[Path, dict[str, Metadata] | None]:
    meta_path = path.with_name(f"{path.stem}_metadata.jsonl")
    return meta_path, (load_metadata(meta_path, errors) if meta_path.exists() else None)


def load_section(path: Path, seen: dict[str, str], errors: Collector) -> list[Question]:
    """One section file with its metadata; ``seen`` maps ids already loaded to where, across sections."""
    meta_path, meta = _section_metadata(path, errors)
    questions: list[Question] = []
    present: set[str] = set()  # ids the file holds, even of questions rejected in lenient mode
    for line, obj in read_jsonl(path, errors):
        try:
            qid = fields.identifier(fields.require(obj, "problem_id", str, path, line), path, line, "problem_id")
            present.add(qid)
            if qid in seen:
                raise DataError(path, line, "problem_id", f"duplicate id {qid!r} (first at {seen[qid]})")
            m = meta.get(qid) if meta is not None else None
            q = igakuqa_question(obj, m, _year_of(path), path.stem, path, line)
            _check_forbidden(q, meta_path, m.line if m else 0)
        except DataError as e:
            errors.report(e)
            continue
        seen[qid] = f"{path}:{line}"
        questions.append(q)
    _report_unmatched(path, meta_path, meta, present, questions, errors)
    return questions


def _report_unmatched(path: Path, meta_path: Path, meta: dict[str, Metadata] | None, present: set[str],
                      questions: list[Question], errors: Collector) -> None:
    """Metadata with no question is an error; questions with no metadata are counted in a warning."""
    if meta is None:
        errors.warn(f"{meta_path}: missing; categories and 禁忌肢 (forbidden choices) of {len(questions)} questions "
                    "are unknown, so the 禁忌肢 criterion of the exam verdict is unknown")
        return
    for qid, m in meta.items():
        if qid not in present:
            errors.report(DataError(meta_path, m.line, "problem_id", f"metadata for {qid!r} has no question in {path.name}"))
    unknown = [q.id for q in questions if not q.forbidden_known]
    if unknown:
        errors.warn(f"{meta_path}: no line for {len(unknown)} questions ({', '.join(unknown[:5])}"
                    f"{' …' if len(unknown) > 5 else ''}); their 禁忌肢 (forbidden choices) are unknown")


def _check_forbidden(q: Question, meta_path: Path, line: int) -> None:
    for label in q.forbidden:
        if label not in q.labels:
            raise DataError(meta_path, line, "kinki", f"forbidden choice {label!r} is not among {q.id}'s choices")


def load_igakuqa(root: str | Path, *, lenient: bool = False) -> Dataset:
    """Load an IgakuQA-layout folder (``[data/]<year>/<exam>-<section>.jsonl`` plus ``_metadata.jsonl`` files),
    or one section file."""
    root = Path(root)
    if (root / "data").is_dir():
        root = root / "data"
    errors = Collector(lenient)
    seen: dict[str, str] = {}
    questions = [q for path in section_files(root, errors) for q in load_section(path, seen, errors)]
    return errors.dataset(questions, root)


def load_exemplars(path: str | Path | None = None, *, lenient: bool = False) -> Dataset:
    """Solved exemplars for few-shot demos (IgakuQA's ``prompts/prompt.jsonl`` schema, with ``explanation``)."""
    path = Path(path) if path else SAMPLE_DIR / "exemplars.jsonl"
    errors = Collector(lenient)
    questions: list[Question] = []
    for line, obj in read_jsonl(path, errors):
        try:
            questions.append(igakuqa_question(obj, None, 0, "exemplar", path, line))
        except DataError as e:
            errors.report(e)
    return errors.dataset(questions, path)
