"""Every kind of bad input in tests/data/bad/, through the command line: a located message and exit code 2.

The corpus holds one small case per kind (see tests/data/bad/README.md); a line longer than the loader's cap is
written at test time rather than committed.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medjp_agent.cli import app
from medjp_agent.data import load_igakuqa
from medjp_agent.data.textfile import MAX_LINE_BYTES
from medjp_agent.data import DataError
from medjp_agent.report.verdict import Cutoff, year_verdict
from medjp_agent.report.build import subset_reasons
from medjp_agent.results import (MAX_SKIPPED_LISTED, RunManifest, read_manifest, read_results, read_run,
                                 skipped_filter)
from medjp_agent.scoring import Extraction, QuestionResult

BAD = Path(__file__).parent / "data" / "bad"
runner = CliRunner()
CSV_COLUMNS = ("--column", "id=id", "--column", "text=stem", "--column", "choices=A,B,C", "--column", "answers=gold")


def exam(case: str) -> tuple[str, ...]:
    return ("score", "--data", f"{{bad}}/{case}", "--predictions", f"{{bad}}/{case}")


def table(case: str, *extra: str) -> tuple[str, ...]:
    return ("eval", "--data", f"{{bad}}/{case}", *CSV_COLUMNS, *extra, "--limit", "1")


Q, META = "2030/900-A.jsonl", "2030/900-A_metadata.jsonl"
# (command line, where the message must point: "<file>:<line>: <field>: " or "<file>: ", what it must say)
CASES = {
    # questions and metadata of the IgakuQA layout
    "invalid-json": (exam("invalid-json"), f"invalid-json/{Q}:1: ", "invalid JSON"),
    "array-line": (exam("array-line"), f"array-line/{Q}:1: ", "expected a JSON object, got an array"),
    "missing-answer": (exam("missing-answer"), f"missing-answer/{Q}:1: answer: ", "missing field"),
    "missing-text": (exam("missing-text"), f"missing-text/{Q}:1: problem_text: ", "missing field"),
    "answer-not-a-choice": (exam("answer-not-a-choice"), f"answer-not-a-choice/{Q}:1: answer: ", "not among the 5 choices"),
    "answer-empty-list": (exam("answer-empty-list"), f"answer-empty-list/{Q}:1: answer: ", "one or more"),
    "numeric-answer-not-a-number": (exam("numeric-answer-not-a-number"), f"numeric-answer-not-a-number/{Q}:1: answer: ",
                                    "numeric answer"),
    "points-word": (exam("points-word"), f"points-word/{Q}:1: points: ", "whole number"),
    "text-only-not-bool": (exam("text-only-not-bool"), f"text-only-not-bool/{Q}:1: text_only: ", "true or false"),
    "choices-not-a-list": (exam("choices-not-a-list"), f"choices-not-a-list/{Q}:1: choices: ", "expected list"),
    "duplicate-id": (exam("duplicate-id"), f"duplicate-id/{Q}:2: problem_id: ", "duplicate id 'T1'"),
    "orphan-metadata": (exam("orphan-metadata"), f"orphan-metadata/{META}:2: problem_id: ", "has no question"),
    "kinki-not-a-choice": (exam("kinki-not-a-choice"), f"kinki-not-a-choice/{META}:1: kinki: ", "not among T1's choices"),
    "kinki-not-a-list": (exam("kinki-not-a-list"), f"kinki-not-a-list/{META}:1: kinki: ", "list of labels"),
    "shift-jis-questions": (exam("shift-jis-questions"), f"shift-jis-questions/{Q}:1: ", "cp932"),
    "stray-byte-metadata": (exam("stray-byte-metadata"), f"stray-byte-metadata/{META}:2: ", "not UTF-8 (byte 0xff"),
    "long-question-text": (exam("long-question-text"), f"long-question-text/{Q}:1: problem_text: ",
                           "longer than 20,000 characters"),
    "long-choice": (exam("long-choice"), f"long-choice/{Q}:1: choices[2]: ", "longer than 2,000 characters"),
    "line-longer-than-the-cap": (("score", "--data", "{tmp}/long-line", "--predictions", "{tmp}"),
                                 f"{{tmp}}/long-line/{Q}:2: ", f"line longer than {MAX_LINE_BYTES:,} bytes"),
    "points-superscript": (exam("points-superscript"), f"points-superscript/{Q}:1: points: ", "whole number"),
    "points-5000-digits": (exam("points-5000-digits"), f"points-5000-digits/{Q}:1: ", "more than 4,300 digits"),
    "points-5000-digit-string": (exam("points-5000-digit-string"), f"points-5000-digit-string/{Q}:1: points: ",
                                 "whole number"),
    "kinki-number-list": (exam("kinki-number-list"), f"kinki-number-list/{META}:1: kinki: ", "list of labels"),
    "human-accuracy-word": (exam("human-accuracy-word"), f"human-accuracy-word/{META}:1: human_accuracy: ",
                            "expected a number"),
    "category-number": (exam("category-number"), f"category-number/{META}:1: category: ", "expected a string"),
    "gold-repeated": (exam("gold-repeated"), f"gold-repeated/{Q}:1: answer: ", "'a' is repeated"),
    "gold-repeated-in-one-string": (exam("gold-repeated-in-one-string"), f"gold-repeated-in-one-string/{Q}:1: answer: ",
                                    "'a' is repeated"),
    "empty-problem-id": (exam("empty-problem-id"), f"empty-problem-id/{Q}:1: problem_id: ", "empty"),
    "blank-question-text": (exam("blank-question-text"), f"blank-question-text/{Q}:1: problem_text: ", "empty"),
    "empty-choice": (exam("empty-choice"), f"empty-choice/{Q}:1: choices[1]: ", "empty"),
    "directory-as-section-file": (exam("directory-as-section-file"), f"directory-as-section-file/{Q}: ",
                                  "is a directory"),
    "misnamed-sections": (exam("misnamed-sections"), "misnamed-sections/2030/112-C.JSONL: ",
                          "not an IgakuQA section file name"),
    "metadata-without-section": (exam("metadata-without-section"), "metadata-without-section/2030/900-B_metadata.jsonl: ",
                                 "no section file 900-B.jsonl"),
    # USMLE-JP / MedQA rows
    "medqa-answer-idx-not-a-key": (exam("medqa-answer-idx-not-a-key.jsonl"), "medqa-answer-idx-not-a-key.jsonl:2: answer_idx: ",
                                   "not an option key"),
    "medqa-answer-not-an-option": (exam("medqa-answer-not-an-option.jsonl"), "medqa-answer-not-an-option.jsonl:2: answer: ",
                                   "not the text of any option"),
    "medqa-no-answer": (exam("medqa-no-answer.jsonl"), "medqa-no-answer.jsonl:2: answer_idx: ", "missing field"),
    "medqa-answer-conflicts-with-idx": (exam("medqa-answer-conflicts-with-idx.jsonl"),
                                        "medqa-answer-conflicts-with-idx.jsonl:2: answer: ",
                                        "is option B's text, but answer_idx is A"),
    "medqa-empty-options": (exam("medqa-empty-options.jsonl"), "medqa-empty-options.jsonl:2: options: ", "non-empty"),
    "medqa-no-question": (exam("medqa-no-question.jsonl"), "medqa-no-question.jsonl:2: question: ", "missing field"),
    "medqa-empty-option": (exam("medqa-empty-option.jsonl"), "medqa-empty-option.jsonl:2: options[1]: ", "empty"),
    # CSV tables through --column (the BOM must not hide the id column, so the misspelled one is reported)
    "csv-misspelled-column": (table("csv-bom.csv", "--column", "category=categry"), "csv-bom.csv:1: categry: ",
                              "no such column"),
    "csv-shift-jis": (table("csv-shift-jis.csv"), "csv-shift-jis.csv:2: ", "cp932"),
    "csv-hole": (table("csv-hole.csv"), "csv-hole.csv:2: B: ", "empty choice before a filled one"),
    "csv-extra-cells": (table("csv-extra-cells.csv"), "csv-extra-cells.csv:2: ", "7 cells, but the header has 6"),
    "csv-short-row": (table("csv-short-row.csv"), "csv-short-row.csv:2: ", "4 cells, but the header has 6"),
    "csv-bad-gold": (table("csv-bad-gold.csv"), "csv-bad-gold.csv:3: gold: ", "not among the 3 choices"),
    "csv-empty-id": (table("csv-empty-id.csv"), "csv-empty-id.csv:2: id: ", "missing field"),
    "csv-directory": (table("run-array-line"), "run-array-line: ", "is a directory"),
    # prediction files for `medjp score`
    "predictions-shift-jis": (("score", "--predictions", "{bad}/predictions-shift-jis.jsonl"),
                              "predictions-shift-jis.jsonl:1: ", "cp932"),
    "predictions-array-line": (("score", "--predictions", "{bad}/predictions-array-line.jsonl"),
                               "predictions-array-line.jsonl:2: ", "expected a JSON object, got an array"),
    "predictions-missing-field": (("score", "--predictions", "{bad}/predictions-missing-field.jsonl"),
                                  "predictions-missing-field.jsonl:1: prediction: ", "missing field"),
    "predictions-directory": (("score", "--predictions", "{bad}/predictions-folder", "--system", "sys"),
                              "predictions-folder/2025/S-A_sys.jsonl: ", "is a directory"),
    # run folders for `medjp report`
    "run-array-line": (("report", "{bad}/run-array-line"), "run-array-line/results.jsonl:2: ", "expected a JSON object"),
    "run-binary-bytes": (("report", "{bad}/run-binary-bytes"), "run-binary-bytes/results.jsonl:1: ", "not UTF-8"),
    "run-summary-brace": (("report", "{bad}/run-summary-brace"), "run-summary-brace/summary.json:1: ", "invalid JSON"),
    "run-result-wrong-type": (("report", "{bad}/run-result-wrong-type"), "run-result-wrong-type/results.jsonl:1: correct: ",
                              "expected bool"),
    "run-manifest-wrong-type": (("report", "{bad}/run-manifest-wrong-type"), "run-manifest-wrong-type/manifest.json: filters: ",
                                "expected dict"),
    # flags, refused while parsing: before any data or model loads
    "limit-negative": (("eval", "--limit", "-1"), "", "Invalid value for '--limit'"),
    # 0 only evaluates an existing study's best on the test split: a study with nothing finished is refused.
    "n-trials-zero": (("search", "--n-trials", "0", "--out", "{tmp}/search"), "", "has no finished trial"),
    "n-trials-negative": (("search", "--n-trials", "-1"), "", "Invalid value for '--n-trials'"),
    "n-workers-zero": (("search", "--n-workers", "0"), "", "Invalid value for '--n-workers'"),
    "max-new-tokens-zero": (("eval", "--max-new-tokens", "0"), "", "Invalid value for '--max-new-tokens'"),
    "temperature-negative": (("eval", "--temperature", "-0.5"), "", "Invalid value for '--temperature'"),
    "out-unwritable": (("eval", "--out", "{bad}/csv-bom.csv/run"), "", "cannot write a run folder here"),
}


def _write_long_line_exam(root: Path) -> None:
    year = root / "long-line" / "2030"
    year.mkdir(parents=True)
    good = json.dumps({"problem_id": "T1", "problem_text": "q", "choices": ["a", "b"], "answer": ["a"]})
    with (year / "900-A.jsonl").open("w", encoding="utf-8") as f:
        f.write(good + "\n" + '{"problem_text": "' + "x" * (MAX_LINE_BYTES + 10) + '"}\n')


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_located_and_exits_2(case: str, tmp_path: Path):
    args, where, says = CASES[case]
    if any("{tmp}" in a for a in args):
        _write_long_line_exam(tmp_path)
    fill = {"bad": str(BAD), "tmp": str(tmp_path)}
    res = runner.invoke(app, [a.format(**fill) for a in args])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # no traceback
    output = " ".join(res.output.replace("│", " ").split())  # typer draws flag errors in a box that may wrap
    prefix = where.format(**fill) if where.startswith("{tmp}") else (f"{BAD}/{where}" if where else "")
    assert prefix in res.output and says in output, res.output


def test_a_line_over_the_cap_is_not_held_in_memory(tmp_path: Path):
    """A 50 MB line is refused while holding at most the cap, not read whole (22.8 GB once)."""
    year = tmp_path / "2030"
    year.mkdir()
    with (year / "900-A.jsonl").open("w", encoding="utf-8") as f:
        f.write('{"problem_text": "' + "x" * (50 << 20) + '"}\n')
    tracemalloc.start()
    try:
        skipped = load_igakuqa(tmp_path, lenient=True).skipped
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert skipped and ":1: line longer than" in skipped[0]
    assert peak < 4 * MAX_LINE_BYTES


def test_lenient_counts_misnamed_sections_and_loads_the_rest(tmp_path: Path):
    ds = load_igakuqa(BAD / "misnamed-sections", lenient=True)
    assert [q.id for q in ds] == ["T1"]
    assert sorted(Path(s.split(":")[0]).name for s in ds.skipped) == ["112-C.JSONL", "112-D_v2.jsonl", "112B.jsonl"]
    (tmp_path / "p.jsonl").write_text('{"problem_id": "T1", "prediction": "c"}\n', encoding="utf-8")
    strict = runner.invoke(app, ["score", "--data", str(BAD / "misnamed-sections"), "--predictions",
                                 str(tmp_path / "p.jsonl")])
    assert strict.exit_code == 2 and "(--lenient would skip 3 bad records and load 1 question)" in " ".join(
        strict.output.split()), strict.output
    res = runner.invoke(app, ["score", "--data", str(BAD / "misnamed-sections"), "--predictions",
                              str(tmp_path / "p.jsonl"), "--lenient", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0 and "skipped 3 bad records (--lenient)" in " ".join(res.output.split()), res.output
    # The run folder keeps every skipped record with its located reason; the report says the run is a subset.
    skipped = read_manifest(tmp_path / "run" / "manifest.json").filters["skipped"]
    assert skipped["count"] == 3 and sorted(skipped["records"]) == sorted(ds.skipped)
    reasons = subset_reasons(read_run(tmp_path / "run"))
    assert "3 bad input records skipped (--lenient), listed in the manifest" in reasons
    shown = runner.invoke(app, ["report", str(tmp_path / "run")], env={"COLUMNS": "250"})
    assert "1 (3 bad skipped)" in shown.output, shown.output  # in the runs table, whatever the year


def test_a_manifest_lists_the_first_skipped_records_and_counts_all():
    rows = [f"data.jsonl:{i}: answer: bad" for i in range(MAX_SKIPPED_LISTED + 5)]
    entry = skipped_filter(rows)["skipped"]
    assert entry["count"] == len(rows) and entry["records"] == rows[:MAX_SKIPPED_LISTED]
    assert skipped_filter([]) == {}


def test_skipped_records_do_not_keep_a_mended_file_from_resuming():
    """A run resumed after its data file was mended asks the mended questions too; other filters still clash."""
    held = RunManifest(name="r", kind="eval", data="d.jsonl", filters={"years": [2018], **skipped_filter(["d:3: x"])})
    assert held.conflicts({"kind": "eval", "filters": {"years": [2018]}}, has_results=True) == []
    assert held.conflicts({"kind": "eval", "filters": {"years": [2019]}}, has_results=True) == ["filters"]
    # A CSV run recorded before filters held the column mapping resumes; once recorded, another mapping is another run.
    mapped = {"years": [2018], "columns": {"text": "stem"}}
    assert held.conflicts({"kind": "eval", "filters": mapped}, has_results=True) == []
    held = RunManifest(name="r", kind="eval", data="d.csv", filters=mapped)
    assert held.conflicts({"kind": "eval", "filters": {**mapped, "columns": {"text": "q"}}}, True) == ["filters"]


def test_formats_show_reads_past_bad_records_and_says_why_without_naming_a_flag_it_does_not_have():
    res = runner.invoke(app, ["formats", "show", "paper-instruction-in-header", "--id", "T1",
                              "--data", str(BAD / "misnamed-sections")])
    said = " ".join(res.stderr.split())
    assert res.exit_code == 0 and "正しいのはどれか。" in res.stdout, res.output
    assert "skipped 3 bad records (formats show needs only the asked question)" in said, said
    assert "--lenient" not in said


def test_missing_metadata_warns_and_makes_the_forbidden_verdict_unknown(tmp_path: Path):
    exam_dir = tmp_path / "2030"
    exam_dir.mkdir()
    rows = [{"problem_id": f"T{block}", "problem_text": "q", "choices": ["a", "b"], "answer": ["a"], "points": "1"}
            for block in "AB"]
    for row, block in zip(rows, "AB"):
        (exam_dir / f"900-{block}.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"problem_id": r["problem_id"], "prediction": "a"}) + "\n"
                                              for r in rows))
    res = runner.invoke(app, ["score", "--data", str(tmp_path), "--predictions", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    output = " ".join(res.output.split())
    assert "900-A_metadata.jsonl: missing" in output and "900-B_metadata.jsonl: missing" in output
    questions = load_igakuqa(tmp_path).questions
    assert [q.forbidden_known for q in questions] == [False, False]
    cutoff = Cutoff(year=2030, exam=124, source="test", compulsory_blocks=("B",), compulsory_required=1,
                    compulsory_total=1, general_required=1, general_total=1, forbidden_max=3)
    results = [QuestionResult.scored(q, Extraction(("a",))) for q in questions]
    verdict = year_verdict(results, cutoff, year=2030)
    assert verdict.status == "undetermined" and verdict.forbidden_unknown == 2
    assert any("禁忌肢 unknown for 2 questions" in n for n in verdict.notes)
    known = [QuestionResult.from_dict({**r.to_dict(), "forbidden_known": True}) for r in results]
    assert year_verdict(known, cutoff, year=2030).status == "pass"


def test_only_a_torn_last_line_of_results_is_ignored(tmp_path: Path):
    """A kill mid-write leaves a last line without its newline; a complete bad line is corruption, never skipped."""
    path = tmp_path / "results.jsonl"
    good = (BAD / "run-array-line" / "results.jsonl").read_bytes().split(b"\n")[0] + b"\n"
    path.write_bytes(good + b'{"id": "S-A2", "ye')
    assert [r.id for r in read_results(path)] == ["S-A1"]
    path.write_bytes(good + b"[1, 2]\n")
    with pytest.raises(DataError, match=r"results.jsonl:2: expected a JSON object"):
        read_results(path)


def test_markdown_report_escapes_raw_html(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"name": "<img src=x onerror=alert(1)>", "kind": "score", "data": "d"}))
    result = {"id": "A1", "year": 2030, "section": "900-A", "category": "<script>alert(1)</script>", "qtype": "single",
              "gold": ["a"], "answer": ["a"], "correct": True, "points": 1, "points_possible": 1}
    (run / "results.jsonl").write_text(json.dumps(result) + "\n")
    res = runner.invoke(app, ["report", str(run), "--md", "--by", "category"])
    assert res.exit_code == 0, res.output
    assert "<img" not in res.output and "<script>" not in res.output
    assert "&lt;img src=x onerror=alert(1)&gt;" in res.output and "&lt;script&gt;" in res.output


def test_a_bad_manifest_or_results_line_in_a_run_folder_is_located_not_a_traceback(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"name": "x", "kind": ', encoding="utf-8")
    res = runner.invoke(app, ["eval", "--out", str(run), "--limit", "1"])  # refused before a model loads
    assert res.exit_code == 2 and f"{run / 'manifest.json'}:" in res.output and "invalid JSON" in res.output
    (run / "manifest.json").write_text(json.dumps({"name": "x", "kind": "eval", "data": "sample"}), encoding="utf-8")
    (run / "results.jsonl").write_text('{"id": 5}\n', encoding="utf-8")
    res = runner.invoke(app, ["report", "--show", "112A11", str(run)])
    assert res.exit_code == 2 and f"{run / 'results.jsonl'}:1: id: expected str, got int 5" in " ".join(
        res.output.split()), res.output


def test_a_manifests_bad_filter_is_located(tmp_path: Path):
    from medjp_agent.data import DataError

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"name": "s", "kind": "search", "data": "sample", "filters": {"limit": "ten"}}))
    with pytest.raises(DataError, match=r"manifest.json: filters.limit: expected int, got str 'ten'"):
        read_manifest(path)


def test_a_torn_json_line_reads_as_english():
    from medjp_agent.data.textfile import parse_json

    with pytest.raises(DataError, match=r"^f.jsonl:3: invalid JSON \(Unterminated string starting at column 7\)$"):
        parse_json('{"a": "x', Path("f.jsonl"), 3)
