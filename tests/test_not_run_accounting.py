"""Questions that could not be asked are neither right nor wrong: counted apart, and asked again on resume."""

from __future__ import annotations

from rich.console import Console

from medjp_agent.data import load_dataset
from medjp_agent.evaluate import not_run
from medjp_agent.results import RunManifest, RunSummary, RunWriter, read_results
from medjp_agent.scoring import Extraction, QuestionResult, aggregate
from medjp_agent.views import summary_table


def _answered(question, right: bool, truncated: bool = False) -> QuestionResult:
    answer = question.answers if right else tuple(c for c in "abcde" if c not in question.answers)[:1]
    return QuestionResult.scored(question, Extraction(answer), truncated=truncated)


def test_not_run_questions_are_outside_accuracy_and_parse_failures():
    q = [x for x in load_dataset("sample") if x.qtype == "single"][:4]
    results = [_answered(q[0], True), _answered(q[1], False, truncated=True), not_run(q[2], "prompt too long"),
               not_run(q[3], "out of memory")]
    agg = aggregate(results)
    assert (agg.n, agg.correct, agg.not_run, agg.truncated, agg.parse_failures) == (2, 1, 2, 1, 0)
    assert agg.accuracy == 0.5
    assert agg.points_possible == q[0].points + q[1].points


def test_a_summary_with_questions_not_run_is_incomplete_and_says_so():
    q = [x for x in load_dataset("sample") if x.qtype == "single"][:2]
    summary = RunSummary.from_results([_answered(q[0], True), not_run(q[1], "prompt too long")], n_expected=2)
    assert not summary.complete and summary.overall["not_run"] == 1
    console = Console(record=True, width=160)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "not run" in text and "parse fail" in text


def test_resume_asks_a_not_run_question_again_and_its_answer_replaces_the_record(tmp_path, recwarn):
    q = [x for x in load_dataset("sample") if x.qtype == "single"][:2]
    manifest = RunManifest.create(name="r", kind="eval", data="sample")
    writer = RunWriter(tmp_path, manifest)
    writer.write(_answered(q[0], True))
    writer.write(not_run(q[1], "server kept answering empty"))
    resumed = RunWriter(tmp_path, manifest)
    assert resumed.done_ids == {q[0].id}
    resumed.write(_answered(q[1], False))
    results = {r.id: r for r in read_results(tmp_path / "results.jsonl")}
    assert not results[q[1].id].not_run and len(results) == 2
    assert not [w for w in recwarn if "more than once" in str(w.message)]
