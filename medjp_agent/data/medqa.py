"""USMLE-JP / MedQA-style JSONL: ``question``, ``options`` (dict or list), ``answer_idx`` and/or ``answer``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import fields
from .errors import Collector, DataError, unique_questions
from .question import LABELS, Dataset, Question
from .textfile import read_jsonl


def _option_list(options: Any, path: Path, line: int) -> tuple[tuple[str, ...], list[str]]:
    """MedQA options as a dict {"A": text} or a list -> (texts, original keys in order)."""
    if isinstance(options, dict) and options:
        keys, values = [str(k) for k in options], list(options.values())
    elif isinstance(options, list) and options:
        keys, values = [LABELS[i].upper() for i in range(min(len(options), len(LABELS)))], options
    else:
        raise DataError(path, line, "options", f"expected a non-empty dict or list, got {type(options).__name__}")
    return fields.choices(values, path, line, "options"), keys


def _answer_index(obj: dict[str, Any], choices: tuple[str, ...], keys: list[str], path: Path, line: int) -> int:
    if "answer_idx" in obj:
        key = str(obj["answer_idx"]).strip()
        if key not in keys:
            raise DataError(path, line, "answer_idx", f"{key[:80]!r} is not an option key ({', '.join(keys)})")
        index = keys.index(key)
        # An answer text that is another option's, word for word, leaves the gold answer in doubt (one that is no
        # option's text is left alone: translated sets word the answer and the options apart).
        if obj.get("answer") in choices and choices.index(obj["answer"]) != index:
            raise DataError(path, line, "answer", f"is option {keys[choices.index(obj['answer'])]}'s text, but "
                                                  f"answer_idx is {key}")
        return index
    if "answer" in obj:
        if obj["answer"] not in choices:
            raise DataError(path, line, "answer", f"{str(obj['answer'])[:80]!r} is not the text of any option")
        return choices.index(obj["answer"])
    raise DataError(path, line, "answer_idx", "missing field (neither answer_idx nor answer given)")


def _medqa_question(obj: dict[str, Any], path: Path, line: int, section: str) -> Question:
    body = fields.text(fields.require(obj, "question", str, path, line), path, line, "question")
    choices, keys = _option_list(obj.get("options"), path, line)
    index = _answer_index(obj, choices, keys, path, line)
    raw_id = obj.get("id", f"{path.stem}-{line}")
    numeric_id = isinstance(raw_id, int) and not isinstance(raw_id, bool)
    qid = str(raw_id) if numeric_id else fields.identifier(raw_id, path, line, "id")
    return Question(id=qid, year=0, section=section, text=body, choices=choices, answers=(LABELS[index],),
                    explanation=str(obj.get("explanation", "")))


def load_medqa(path: str | Path, *, lenient: bool = False, section: str = "usmle-jp") -> Dataset:
    """Load USMLE-JP / MedQA-style JSONL; ids default to ``<file stem>-<line>``."""
    path = Path(path)
    errors = Collector(lenient)
    questions = unique_questions(read_jsonl(path, errors), lambda obj, line: _medqa_question(obj, path, line, section),
                                 path, "id", errors)
    return errors.dataset(questions, path)
