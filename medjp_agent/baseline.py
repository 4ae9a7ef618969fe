"""Score existing prediction files in IgakuQA's baseline format: ``{"problem_id", "prediction": "a,c"}``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medjp_agent.data import DataError, Question
from medjp_agent.data.errors import Collector
from medjp_agent.data.textfile import read_jsonl
from medjp_agent.scoring import Extraction, QuestionResult, extract_answer
from medjp_agent.scoring.aggregate import NO_PREDICTION
from medjp_agent.scoring.grade import LITERAL_METHOD
from medjp_agent.scoring.harness import HARNESS_MODES, HarnessMode, harness_extract

ParseMode = Literal["strict", "lenient", HarnessMode]
PARSE_MODES: tuple[ParseMode, ...] = ("strict", "lenient", *HARNESS_MODES)


@dataclass(frozen=True)
class Predictions:
    by_id: dict[str, tuple[str, str]]  # problem_id -> (prediction text, "file:line")
    files: tuple[str, ...]


def read_predictions(path: str | Path, system: str | None = None) -> Predictions:
    """Every prediction under ``path`` (a file or a folder searched recursively), keyed by problem_id.

    ``system`` keeps only IgakuQA's ``*_<system>.jsonl`` files. A duplicate id is an error naming both places.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(root, None, None, "no such file or directory")
    suffix = f"_{system}.jsonl" if system else ".jsonl"
    if root.is_file() and system and not root.name.endswith(suffix):
        # The run would be labelled with the system while scoring another's answers.
        raise DataError(root, None, None, f"--system {system} keeps IgakuQA's *{suffix} files, and this is not one")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.jsonl") if p.name.endswith(suffix))
    if not files:
        raise DataError(root, None, None, f"no prediction files matching *{suffix}")
    out: dict[str, tuple[str, str]] = {}
    for file in files:
        for lineno, obj in read_jsonl(file, Collector()):
            for key in ("problem_id", "prediction"):
                if not isinstance(obj.get(key), str):
                    raise DataError(file, lineno, key, "missing field" if key not in obj else "expected a string")
            where = f"{file}:{lineno}"
            if obj["problem_id"] in out:
                raise DataError(file, lineno, "problem_id",
                                f"duplicate prediction for {obj['problem_id']!r} (first at {out[obj['problem_id']][1]})")
            out[obj["problem_id"]] = (obj["prediction"], where)
    if not out:  # scored, every question would count as a wrong answer
        raise DataError(root, None, None, "holds no predictions")
    return Predictions(out, tuple(map(str, files)))


def _strict(prediction: str) -> Extraction:
    # IgakuQA's own rule: split on commas, compare the sorted list with the gold list, nothing normalised.
    parts = tuple(prediction.split(","))
    reason = None if all(p and p == p.strip() for p in parts) else "not IgakuQA's comma-separated answer list"
    return Extraction(parts, reason=reason, method=LITERAL_METHOD)


def score_predictions(questions: Sequence[Question], predictions: Predictions, mode: ParseMode = "strict"
                      ) -> tuple[list[QuestionResult], list[str], list[str]]:
    """(results for every question, ids with no prediction, prediction ids matching no question).

    A question without a prediction is scored wrong with the reason recorded; nothing is guessed.
    """
    results, missing = [], []
    for q in questions:
        found = predictions.by_id.get(q.id)
        if found is None:
            missing.append(q.id)
            results.append(QuestionResult.scored(q, Extraction(reason=NO_PREDICTION)))
            continue
        text = found[0]
        if mode in ("strict", "lenient"):
            extraction = _strict(text) if mode == "strict" else extract_answer(text, q)
        else:
            extraction = harness_extract(mode, q, text)
        results.append(QuestionResult.scored(q, extraction, completion=text, lm_calls=0))
    ids = {q.id for q in questions}
    extra = sorted(pid for pid in predictions.by_id if pid not in ids)
    return results, missing, extra
