"""Loaders: the bundled sample, IgakuQA layout, MedQA and generic tables, and a corpus of bad files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medjp_agent.data import (
    DataError, Question, load_dataset, load_exemplars, load_igakuqa, load_medqa, load_table, select, split,
)

GOOD_Q = {"problem_id": "T1", "problem_text": "どれか。", "choices": ["あ", "い", "う", "え", "お"], "text_only": True,
          "answer": ["c"], "points": "1"}
GOOD_META = {"problem_id": "T1", "category": "循環器", "kinki": ["a"], "reason": "", "human_accuracy": "50.0",
             "breakdown": []}


def write_exam(root: Path, questions: list, metadata: list | None = None, name: str = "900-A") -> Path:
    year = root / "2030"
    year.mkdir(parents=True, exist_ok=True)
    lines = [q if isinstance(q, str) else json.dumps(q, ensure_ascii=False) for q in questions]
    (year / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if metadata is not None:
        (year / f"{name}_metadata.jsonl").write_text(
            "\n".join(json.dumps(m, ensure_ascii=False) for m in metadata) + "\n", encoding="utf-8")
    return year / f"{name}.jsonl"


def test_sample_exam_is_bundled_and_mixed():
    ds = load_dataset("sample")
    assert len(ds) == 30
    kinds = Counter(q.qtype for q in ds)
    assert kinds["single"] == 24 and kinds["multi"] == 5 and kinds["numeric"] == 1
    assert sum(bool(q.forbidden) for q in ds) == 4
    assert {q.section for q in ds} == {"S-A", "S-B"} and {q.year for q in ds} == {2025}
    assert any(q.points == 0 for q in ds) and any(q.points == 3 for q in ds)
    assert all(q.category for q in ds)


def test_exemplars_have_explanations():
    ex = load_exemplars()
    assert len(ex) == 5 and all(q.explanation for q in ex)


def test_igakuqa_record_fields(tmp_path: Path):
    write_exam(tmp_path, [GOOD_Q], [GOOD_META])
    (q,) = load_igakuqa(tmp_path).questions
    assert q == Question(id="T1", year=2030, section="900-A", text="どれか。", choices=("あ", "い", "う", "え", "お"),
                         answers=("c",), points=1, text_only=True, category="循環器", forbidden=("a",),
                         human_accuracy=50.0)
    assert Question.from_dict(json.loads(json.dumps(q.to_dict()))) == q


def test_gold_with_alternatives_and_numbers(tmp_path: Path):
    rows = [{**GOOD_Q, "answer": ["a or d"]}, {**GOOD_Q, "problem_id": "T2", "choices": [], "answer": ["7.20"]},
            {**GOOD_Q, "problem_id": "T3", "answer": ["e", "a"]}]
    qs = {q.id: q for q in load_igakuqa(write_exam(tmp_path, rows).parent)}
    assert qs["T1"].answers == ("a",) and qs["T1"].accepted == (("d",),)
    assert qs["T2"].answers == ("7.20",) and qs["T2"].qtype == "numeric"
    assert qs["T3"].answers == ("a", "e") and qs["T3"].qtype == "multi"


def test_kinki_spellings_are_normalised(tmp_path: Path):
    metas = [{**GOOD_META, "kinki": k} for k in (["cde"], ["ｃ"], ["d", " e"])]
    rows = [GOOD_Q] + [{**GOOD_Q, "problem_id": f"T{i}"} for i in (2, 3)]
    for m, r in zip(metas, rows):
        m["problem_id"] = r["problem_id"]
    qs = load_igakuqa(write_exam(tmp_path, rows, metas).parent).questions
    assert [q.forbidden for q in qs] == [("c", "d", "e"), ("c",), ("d", "e")]


# Each kind of bad record, with its located message and exit code through the CLI: tests/test_bad_input.py.


def test_lenient_mode_skips_and_counts(tmp_path: Path):
    rows = [GOOD_Q, {**GOOD_Q, "problem_id": "T2", "answer": ["z"]}, "not json", {**GOOD_Q, "problem_id": "T3"}]
    write_exam(tmp_path, rows)
    ds = load_igakuqa(tmp_path, lenient=True)
    assert [q.id for q in ds] == ["T1", "T3"]
    assert len(ds.skipped) == 2 and ":2: answer:" in ds.skipped[0] and ":3: " in ds.skipped[1]


def test_lenient_rejected_question_does_not_orphan_its_metadata(tmp_path: Path):
    rows = [GOOD_Q, {**GOOD_Q, "problem_id": "T2", "answer": ["z"]}]
    write_exam(tmp_path, rows, [GOOD_META, {**GOOD_META, "problem_id": "T2"}, {**GOOD_META, "problem_id": "T9"}])
    ds = load_igakuqa(tmp_path, lenient=True)
    assert [q.id for q in ds] == ["T1"]
    assert len(ds.skipped) == 2 and ":2: answer:" in ds.skipped[0]
    assert "metadata for 'T9' has no question" in ds.skipped[1]


def test_missing_folder_and_empty_folder(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no IgakuQA question files"):
        load_igakuqa(tmp_path)


def test_medqa_loader_dict_and_list_options(tmp_path: Path):
    path = tmp_path / "usmle.jsonl"
    rows = [
        {"question": "Q1", "options": {"A": "x", "B": "y", "C": "z"}, "answer_idx": "B", "explanation": "why"},
        {"question": "Q2", "options": ["x", "y"], "answer": "y"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    a, b = load_dataset(path)
    assert (a.id, a.answers, a.choices, a.explanation) == ("usmle-1", ("b",), ("x", "y", "z"), "why")
    assert (b.id, b.answers, b.choices) == ("usmle-2", ("b",), ("x", "y"))


def test_bundled_training_set_loads():
    ds = load_medqa(Path(__file__).resolve().parents[1] / "medjp_agent/data/sample/usmle_jp.jsonl")
    assert len(ds) == 60 and all(q.explanation for q in ds)


def test_csv_table_with_column_mapping(tmp_path: Path):
    path = tmp_path / "q.csv"
    path.write_text("qid,stem,A,B,C,gold,yr\nx1,問1,い,ろ,は,B,2024\nx2,問2,い,ろ,は,\"a,c\",2024\n", encoding="utf-8")
    cols = {"id": "qid", "text": "stem", "choices": "A,B,C", "answers": "gold", "year": "yr"}
    a, b = load_table(path, cols)
    assert (a.id, a.choices, a.answers, a.year) == ("x1", ("い", "ろ", "は"), ("b",), 2024)
    assert b.answers == ("a", "c")


def test_csv_errors_name_the_physical_line(tmp_path: Path):
    path = tmp_path / "q.csv"
    path.write_text("stem,opts,gold\n問1,\"[\"\"x\"\",\"\"y\"\"]\",a\n問2,\"[\"\"x\"\"]\",q\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_table(path, {"text": "stem", "choices": "opts", "answers": "gold"})
    assert (info.value.line, info.value.field) == (3, "gold")
    with pytest.raises(DataError, match="unknown field"):
        load_table(path, {"text": "stem", "answers": "gold", "colour": "x"})


def test_csv_with_bom_fewer_choices_than_columns_and_lenient_rows(tmp_path: Path):
    path = tmp_path / "q.csv"
    path.write_bytes("\ufeffid,stem,A,B,C,gold\nx1,問1,い,ろ,,b\nx2,問2,い,,は,c\nx3,問3,い,ろ,は,a\n".encode())
    cols = {"id": "id", "text": "stem", "choices": "A,B,C", "answers": "gold"}
    with pytest.raises(DataError, match=r"q.csv:3: B: empty choice"):
        load_table(path, cols)
    ds = load_table(path, cols, lenient=True)
    assert [(q.id, q.choices) for q in ds] == [("x1", ("い", "ろ")), ("x3", ("い", "ろ", "は"))]
    assert len(ds.skipped) == 1 and ":3: B:" in ds.skipped[0]


def test_missing_metadata_is_a_warning_and_leaves_forbidden_unknown(tmp_path: Path):
    write_exam(tmp_path, [GOOD_Q, {**GOOD_Q, "problem_id": "T2"}])
    ds = load_igakuqa(tmp_path)
    assert len(ds) == 2 and not any(q.forbidden_known for q in ds) and ds.skipped == ()
    (warning,) = ds.warnings
    assert "900-A_metadata.jsonl: missing" in warning and "2 questions" in warning
    write_exam(tmp_path, [GOOD_Q, {**GOOD_Q, "problem_id": "T2"}], [GOOD_META])
    ds = load_igakuqa(tmp_path)
    assert [q.forbidden_known for q in ds] == [True, False] and "no line for 1 questions (T2)" in ds.warnings[0]
    assert load_dataset("sample").warnings == ()


def test_whitespace_choices_are_kept(tmp_path: Path):
    """IgakuQA's 114C11 lists its choices in a table in the text; its choices are full-width spaces."""
    write_exam(tmp_path, [{**GOOD_Q, "choices": ["\u3000", "\u3000", "ｅ"], "answer": ["a"]}], [GOOD_META])
    (q,) = load_igakuqa(tmp_path)
    assert q.choices == ("\u3000", "\u3000", "ｅ")


def test_jsonl_table_and_numeric_answer(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"q": "計算せよ", "ans": "42"}) + "\n", encoding="utf-8")
    (q,) = load_table(path, {"text": "q", "answers": "ans"})
    assert q.qtype == "numeric" and q.answers == ("42",)


def test_filters_and_split():
    ds = load_dataset("sample")
    assert {q.section for q in select(ds, sections=["B"])} == {"S-B"}
    assert all(q.text_only for q in select(ds, text_only=True)) and len(select(ds, text_only=True)) == 28
    assert [q.qtype for q in select(ds, qtypes=["numeric"])] == ["numeric"]
    assert select(ds, years=[2024]) == []
    train, dev = split(ds.questions, [0.5, 0.5], seed=1)
    assert len(train) + len(dev) == 30 and not {q.id for q in train} & {q.id for q in dev}
    # Hash-based: removing other questions does not move a question to the other split.
    train2, _ = split(ds.questions[:20], [0.5, 0.5], seed=1)
    assert {q.id for q in train2} == {q.id for q in train} & {q.id for q in ds.questions[:20]}
    with pytest.raises(ValueError):
        split(ds.questions, [0.5, 0.4])
