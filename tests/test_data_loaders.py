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


BAD_CASES = [
    # (question lines, metadata, expected line, expected field, message fragment)
    (['{"problem_id": "T1", ', json.dumps(GOOD_Q)], None, 1, None, "invalid JSON"),
    (["[1, 2]"], None, 1, None, "expected a JSON object"),
    ([{k: v for k, v in GOOD_Q.items() if k != "answer"}], None, 1, "answer", "missing field"),
    ([{k: v for k, v in GOOD_Q.items() if k != "problem_text"}], None, 1, "problem_text", "missing field"),
    ([{**GOOD_Q, "answer": ["f"]}], None, 1, "answer", "not among the 5 choices"),
    ([{**GOOD_Q, "answer": []}], None, 1, "answer", "one or more"),
    ([{**GOOD_Q, "choices": [], "answer": ["abc"]}], None, 1, "answer", "numeric answer"),
    ([{**GOOD_Q, "points": "x"}], None, 1, "points", "whole number"),
    ([{**GOOD_Q, "text_only": "yes"}], None, 1, "text_only", "true or false"),
    ([{**GOOD_Q, "choices": "abc"}], None, 1, "choices", "expected list"),
    ([GOOD_Q, GOOD_Q], None, 2, "problem_id", "duplicate id 'T1'"),
    ([GOOD_Q], [GOOD_META, {**GOOD_META, "problem_id": "T9"}], 2, "problem_id", "has no question"),
    ([GOOD_Q], [{**GOOD_META, "kinki": ["z"]}], 1, "kinki", "not among"),
    ([GOOD_Q], [{**GOOD_META, "kinki": "a"}], 1, "kinki", "list of labels"),
]


@pytest.mark.parametrize("questions,metadata,line,field,fragment", BAD_CASES)
def test_bad_igakuqa_input_names_file_line_field(tmp_path, questions, metadata, line, field, fragment):
    path = write_exam(tmp_path, questions, metadata)
    with pytest.raises(DataError) as info:
        load_igakuqa(tmp_path)
    err = info.value
    assert err.line == line and err.field == field and fragment in err.message
    assert Path(err.path).name in (path.name, path.name.replace(".jsonl", "_metadata.jsonl"))
    assert str(err).startswith(f"{err.path}:{line}: ")


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


@pytest.mark.parametrize("row,field,fragment", [
    ({"question": "Q", "options": {"A": "x"}, "answer_idx": "C"}, "answer_idx", "not an option key"),
    ({"question": "Q", "options": {"A": "x"}, "answer": "nope"}, "answer", "not the text of any option"),
    ({"question": "Q", "options": {"A": "x"}}, "answer_idx", "missing field"),
    ({"question": "Q", "options": {}}, "options", "non-empty"),
    ({"options": {"A": "x"}, "answer_idx": "A"}, "question", "missing field"),
])
def test_bad_medqa_rows(tmp_path: Path, row, field, fragment):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"question": "ok", "options": ["a"], "answer_idx": "A"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as info:
        load_medqa(path)
    assert (info.value.line, info.value.field) == (2, field) and fragment in info.value.message


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
