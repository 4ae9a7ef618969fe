"""`medjp eval` and `medjp score` through typer's runner, plus the lazy-import promise of `medjp --help`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rich.console import Console

from medjp_agent.cli import app
from medjp_agent.data import load_dataset
from medjp_agent.results import read_run
from medjp_agent.scoring import Extraction, QuestionResult
from medjp_agent.views import RunProgress

runner = CliRunner()


@pytest.fixture()
def lm_factory(monkeypatch, scripted):
    """Make `medjp eval` use a scripted LM instead of loading a model; returns the list of LMs built."""
    built = []

    def install(reply):
        def build(_opts):
            built.append(scripted(reply))
            return built[-1]

        monkeypatch.setattr("medjp_agent.runs.build_lm", build)
        return built

    return install


def test_eval_writes_the_run_folder(tmp_path, lm_factory):
    lm_factory("考察\n答え：b")
    out = tmp_path / "run"
    res = runner.invoke(app, ["eval", "--out", str(out), "--threads", "4"])
    assert res.exit_code == 0, res.output
    run = read_run(out)
    assert run.manifest.kind == "eval" and run.manifest.format["name"] == "paper-instruction-in-header"
    assert len(run.results) == 30 and run.summary.n_questions == 30 and run.summary.complete
    by_id = {r.id: r for r in run.results}
    assert by_id["SA1"].correct == (by_id["SA1"].gold == ("b",))
    numeric = next(r for r in run.results if r.qtype == "numeric")
    assert not numeric.correct and numeric.parse_error and "no number" in numeric.parse_error  # kept, with reason
    assert all(r.prompt_hash and r.completion for r in run.results)
    assert run.summary.prompt_tokens > 0 and run.summary.lm_calls == 30
    assert (out / "program.json").exists() and (out / "format.yaml").exists()
    assert "accuracy" in res.output and "2025" in res.output


def test_rerun_resumes_without_asking_again(tmp_path, lm_factory):
    built = lm_factory("考察\n答え：a")
    out = tmp_path / "run"
    args = ["eval", "--out", str(out), "--limit", "6", "--threads", "2"]
    assert runner.invoke(app, args).exit_code == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # a kill mid-write
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(built[1].calls) == 2
    ids = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6


def test_other_format_into_the_same_folder_is_refused(tmp_path, lm_factory):
    lm_factory("答え：a")
    out = tmp_path / "run"
    assert runner.invoke(app, ["eval", "--out", str(out), "--limit", "2"]).exit_code == 0
    res = runner.invoke(app, ["eval", "--out", str(out), "--limit", "2", "--format", "plain-ja-cot"])
    assert res.exit_code == 2 and "holds a different run (format differs)" in res.output


def test_lm_failure_saves_progress_and_rerun_completes(tmp_path, lm_factory):
    state = {"calls": 0, "down": True}
    lock = threading.Lock()

    def flaky(_prompt, _kw):
        with lock:
            state["calls"] += 1
            if state["down"] and state["calls"] > 3:
                raise ConnectionError("server went away")
        return "答え：c"

    lm_factory(flaky)
    out = tmp_path / "run"
    args = ["eval", "--out", str(out), "--limit", "10", "--threads", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "re-run the same command to resume" in res.output
    assert len(read_run(out).results) == 3
    state["down"] = False
    assert runner.invoke(app, args).exit_code == 0
    assert len(read_run(out).results) == 10


def test_bad_data_exits_with_located_error(tmp_path):
    bad = tmp_path / "2030" / "900-A.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"problem_id": "X1", "problem_text": "t", "choices": ["a"], "answer": ["q"]}\n')
    res = runner.invoke(app, ["eval", "--data", str(tmp_path)])
    assert res.exit_code == 2
    assert "900-A.jsonl:1: answer: answer 'q' is not among the 1 choices" in " ".join(res.output.split())


def igakuqa_reference(root: Path, system: str) -> dict[str, tuple[float, int, int]]:
    """IgakuQA's published evaluation rule, re-implemented independently: per-file zip, sorted comma split."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for gold_file in sorted((root / "data").glob("*/*.jsonl")):
        if "_" in gold_file.name:
            continue
        pred_file = root / "baseline_results" / gold_file.parent.name / f"{gold_file.stem}_{system}.jsonl"
        golds = [json.loads(line) for line in gold_file.read_text().splitlines()]
        preds = [json.loads(line) for line in pred_file.read_text().splitlines()]
        for p, g in zip(preds, golds, strict=True):
            pred, pts = sorted(p["prediction"].split(",")), int(g["points"])
            ok = (g["problem_id"] == "116A71" or (g["problem_id"] == "112B30" and pred in (["a"], ["d"]))
                  or pred == sorted(g["answer"]))
            t = totals[gold_file.parent.name]
            t[0], t[1], t[2], t[3] = t[0] + ok, t[1] + 1, t[2] + pts * ok, t[3] + pts
    return {y: (c / n, s, tot) for y, (c, n, s, tot) in totals.items()}


@pytest.mark.parametrize("system", ["gpt4", "chatgpt"])
def test_score_reproduces_igakuqa_per_year(igakuqa, tmp_path, system):
    out = tmp_path / system
    res = runner.invoke(app, ["score", "--data", str(igakuqa), "--predictions", str(igakuqa / "baseline_results"),
                              "--system", system, "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = read_run(out)
    assert run.manifest.kind == "score" and run.manifest.system == system and len(run.results) == 2000
    expected = igakuqa_reference(igakuqa, system)
    for year, agg in run.summary.groups["year"].items():
        assert (agg["accuracy"], agg["points"], agg["points_possible"]) == pytest.approx(expected[year]), year
    if system == "gpt4":
        assert run.summary.overall["correct"] == 1534


def test_score_reports_missing_and_duplicate_predictions(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "a_sys.jsonl").write_text(json.dumps({"problem_id": "SA1", "prediction": "b"}) + "\n")
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--system", "sys", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0 and "29 questions have no prediction" in " ".join(res.output.split())
    run = read_run(tmp_path / "r")
    assert sum(r.parse_error == "no prediction for this question" for r in run.results) == 29
    (preds / "b_sys.jsonl").write_text(json.dumps({"problem_id": "SA1", "prediction": "c"}) + "\n")
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--system", "sys"])
    assert res.exit_code == 2 and "duplicate prediction for 'SA1'" in res.output


def test_scoring_again_into_the_same_folder_scores_the_files_as_they_are_now(tmp_path):
    preds = tmp_path / "a_sys.jsonl"
    gold = {q.id: ",".join(q.answers) for q in load_dataset("sample").questions}
    preds.write_text(json.dumps({"problem_id": "SA1", "prediction": gold["SA1"]}) + "\n")
    args = ["score", "--predictions", str(preds), "--system", "sys", "--out", str(tmp_path / "r")]
    assert runner.invoke(app, args).exit_code == 0
    assert read_run(tmp_path / "r").summary.overall["correct"] == 1
    preds.write_text("".join(json.dumps({"problem_id": qid, "prediction": answer}) + "\n" for qid, answer in gold.items()))
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    run = read_run(tmp_path / "r")
    assert run.summary.overall["correct"] == len(gold) and len(run.results) == len(gold)


def test_score_reads_a_csv_exam_through_column_mappings(tmp_path):
    (tmp_path / "exam.csv").write_text("id,stem,A,B,gold\nq1,Q one,x,y,a\nq2,Q two,u,v,b\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"problem_id":"q1","prediction":"a"}\n{"problem_id":"q2","prediction":"a"}\n')
    res = runner.invoke(app, ["score", "--data", str(tmp_path / "exam.csv"), "--predictions", str(tmp_path / "p.jsonl"),
                              "--column", "id=id", "--column", "text=stem", "--column", "choices=A,B",
                              "--column", "answers=gold", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert read_run(tmp_path / "r").summary.overall["correct"] == 1
    # The mapping is part of what the run selected: recorded, and read back by `optimize --from-search`.
    from medjp_agent.cli.options import load_questions, recorded_selection

    filters = read_run(tmp_path / "r").manifest.filters
    assert filters["columns"] == {"id": "id", "text": "stem", "choices": "A,B", "answers": "gold"}
    assert load_questions(str(tmp_path / "exam.csv"), **recorded_selection(filters))[2] == filters


def test_an_empty_prediction_file_is_refused(tmp_path):
    (tmp_path / "a_sys.jsonl").write_text("\n")
    res = runner.invoke(app, ["score", "--predictions", str(tmp_path / "a_sys.jsonl")])
    assert res.exit_code == 2 and "a_sys.jsonl: holds no predictions" in " ".join(res.output.split())


def test_system_given_with_one_file_of_another_system_is_refused(tmp_path):
    preds = tmp_path / "x_gpt4.jsonl"
    preds.write_text(json.dumps({"problem_id": "SA1", "prediction": "a"}) + "\n")
    res = runner.invoke(app, ["score", "--predictions", str(preds), "--system", "chatgpt"])
    assert res.exit_code == 2 and "--system chatgpt keeps IgakuQA's *_chatgpt.jsonl files" in " ".join(res.output.split())


def test_help_imports_no_heavy_libraries():
    code = ("import sys; from medjp_agent.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'bitsandbytes', 'peft', 'trl', 'dspy', 'litellm') "
            "if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_progress_rate_counts_only_this_run():
    q = load_dataset("sample").questions[0]
    done = QuestionResult.scored(q, Extraction(q.answers))
    console = Console(record=True, width=120, force_terminal=False)
    progress = RunProgress(4, [done], console=console)
    progress.progress.tasks[0].start_time -= 2.0  # two seconds into the run
    progress.on_result(done)
    progress.on_result(done)
    text = progress.progress.make_tasks_table(progress.progress.tasks)
    console.print(text)
    out = console.export_text()
    assert "1.00 q/s" in out and "acc 100.0% (3/3)" in out and "3/4" in out
