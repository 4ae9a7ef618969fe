"""The lenient parser against a labelled corpus of real completions (IgakuQA's published predictions).

``tests/data/parser_corpus.jsonl`` holds only ids and expected answers; the texts are read from ``../shared/igakuqa``
at test time. A row names a ``system`` (the completion is that system's prediction for the question) or a
``choice`` (the completion is that choice's own text, for choice texts that begin with a letter: B型肝炎の合併 …).
``expected`` is the canonical answer ("a,c", "146"), ``!refusal`` (a refusal or hedge: a parse failure with reason
``refusal``) or ``!fail`` (no answer stated). Every row was labelled by reading the completion.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from medjp_agent.data import LABELS, load_dataset
from medjp_agent.scoring import Extraction, extract_answer

CORPUS = Path(__file__).parent / "data" / "parser_corpus.jsonl"
ROWS = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


@cache
def _questions(root: Path) -> dict:
    return {q.id: q for q in load_dataset(root / "data", lenient=True)}


@cache
def _predictions(root: Path, system: str) -> dict[str, str]:
    out = {}
    for path in sorted((root / "baseline_results").glob(f"*/*_{system}.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out[row["problem_id"]] = row["prediction"]
    return out


def _text(root: Path, row: dict) -> str:
    if "choice" in row:
        return _questions(root)[row["id"]].choices[LABELS.index(row["choice"])]
    return _predictions(root, row["system"])[row["id"]]


def _label(got: Extraction) -> str:
    if got.ok:
        return ",".join(got.answer)
    return "!refusal" if got.reason == "refusal" else "!fail"


def _parsed(root: Path) -> list[tuple[dict, str, Extraction]]:
    questions = _questions(root)
    return [(row, text, extract_answer(text, questions[row["id"]])) for row in ROWS
            for text in [_text(root, row)]]


def test_corpus_is_large_and_covers_every_reported_failure():
    assert len(ROWS) >= 300
    keys = {(r["id"], r.get("system") or r["choice"]): r["expected"] for r in ROWS}
    assert keys[("115D67", "gpt4")] == "!refusal"  # 心電図(a)及び心エコー図(b)が示されていません: not a,b
    assert keys[("113C36", "translate_chatgpt-en")] == "c"  # c (insufficient … a definitive …): not a,c
    assert keys[("115F75", "gpt4")] == "8.5"  # 解答:8.5 after 408人/40,000人: not 408
    assert keys[("116B50", "chatgpt")] == "0.94"  # ①0.94: not 10.94
    assert keys[("112B27", "c")] == "c" and keys[("113B4", "d")] == "d"  # B型肝炎の合併, C.difficile …
    assert sum(r["expected"] == "!refusal" for r in ROWS) >= 100


def test_parser_agrees_with_the_labels(igakuqa):
    parsed = _parsed(igakuqa)
    disagree = [(row, _label(got), text[:80]) for row, text, got in parsed if _label(got) != row["expected"]]
    assert len(disagree) <= len(parsed) // 100, disagree


def test_no_refusal_is_ever_scored_as_an_answer(igakuqa):
    for row, text, got in _parsed(igakuqa):
        if row["expected"] == "!refusal":
            assert not got.ok and got.reason == "refusal", (row, text[:80])


def test_every_answer_records_how_it_was_found(igakuqa):
    methods = {got.method for _, _, got in _parsed(igakuqa) if got.ok}
    assert {"marker", "label-line", "choice-text", "final-line"} <= methods
    assert all(got.method == "" for _, _, got in _parsed(igakuqa) if not got.ok)


@pytest.mark.parametrize("text,expected", [
    ("a definitive diagnosis cannot be made without the image.", "!refusal"),
    ("a, c", "a,c"),
    ("c (insufficient information to make a definitive diagnosis)", "c"),
    ("心電図(a)及び心エコー図(b)が示されていないため回答できません。", "!refusal"),
    ("ビタミンB12", "c"),
    ("β-D-グルカン", "b"),
    ("B型肝炎の合併", "a"),
    ("考察すると…\n答えは b です。", "b"),
    ("理由…\nd", "d"),
])
def test_labels_come_only_from_answer_lines(text, expected):
    from medjp_agent.data import Question

    q = Question("x", 2020, "114-A", "どれか。", ("B型肝炎の合併", "β-D-グルカン", "ビタミンB12", "葉酸", "鉄"), ("a",))
    assert _label(extract_answer(text, q)) == expected
