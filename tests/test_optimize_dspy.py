"""DSPy optimizers within a format: every `--optimizer` end to end on a scripted LM, the exam metric and its
feedback, `medjp optimize` run folders, resume, the combined mode, and bootstrap on the tiny HF model."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import dspy
import pytest
from typer.testing import CliRunner

import medjp_agent.lm as backends
from medjp_agent.cli import app
from medjp_agent.data import SAMPLE_DIR, Question, load_dataset
from medjp_agent.evaluate import answer_question
from medjp_agent.optimizers import (
    BEST_PROGRAM, OPTIMIZERS, ExamMetric, LogprobQA, OptimizeConfig, OptimizerSettings, Splits, compile_program,
    run_optimize,
)
from medjp_agent.results import read_manifest, read_run
from medjp_agent.signatures import FormatAdapter, MedicalQA, PromptFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedLM  # noqa: E402

QUESTIONS = list(load_dataset("sample"))
SPLITS = Splits.make(QUESTIONS)
_OUTPUT_FIELD = re.compile(r"^\d+\. `(\w+)` \(([^)]*)\)", re.M)
NEW_INSTRUCTION = "各選択肢を吟味し、最後に答え：の後に記号だけを書いてください。"


class ExamAndMetaLM(PlantedLM):
    """Exam prompts (the format adapter is active) get planted answers; optimizers' own meta-prompts get a reply
    in the adapter's form (ChatAdapter fields, JSON, or GEPA's fenced block) with a fixed new instruction."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.meta_prompts: list[str] = []

    def _reply(self, prompt: str, kwargs: dict[str, Any]) -> str:
        if isinstance(dspy.settings.adapter, FormatAdapter):
            return super()._reply(prompt, kwargs)
        self.meta_prompts.append(prompt)
        if "Your output fields are:" not in prompt:
            return f"```\n{NEW_INSTRUCTION}\n```"
        block = prompt.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
        values = {name: {} if kind.startswith("dict") else "答え：" if "prefix" in name else NEW_INSTRUCTION
                  for name, kind in _OUTPUT_FIELD.findall(block)}
        if "Respond with a JSON object" in prompt:
            return json.dumps(values, ensure_ascii=False)
        fields = [f"[[ ## {name} ## ]]\n{json.dumps(v) if isinstance(v, dict) else v}" for name, v in values.items()]
        return "\n\n".join([*fields, "[[ ## completed ## ]]"])


TINY = OptimizerSettings(max_demos=1, candidates=2, steps=1, max_metric_calls=16, threads=2)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_runs_end_to_end(name):
    lm = ExamAndMetaLM(QUESTIONS, base=0.6)
    student = MedicalQA(PromptFormat(shots=0, reasoning="cot"), demo_pool=SPLITS.demo_pool())
    program = compile_program(name, student, SPLITS.train, SPLITS.dev[:6], lm, settings=TINY)
    assert isinstance(program, MedicalQA) and program is not student
    with dspy.context(lm=lm):
        q = SPLITS.test[0]
        assert program(question=q.text, choices=list(q.choices)).parse_error is None
    if name in ("copro", "mipro"):
        assert lm.meta_prompts, f"{name} should have asked for instructions"
    if name == "copro":
        assert program.cot.predict.signature.instructions == NEW_INSTRUCTION


def test_gepa_reflects_on_exam_feedback_with_its_own_reflection_lm():
    lm = ExamAndMetaLM(QUESTIONS, base=0.3)
    reflection = ExamAndMetaLM(QUESTIONS)
    student = MedicalQA(PromptFormat(shots=0, reasoning="cot"), demo_pool=[])
    program = compile_program("gepa", student, SPLITS.train, SPLITS.dev[:6], lm, proposer=reflection,
                              settings=OptimizerSettings(max_metric_calls=30, threads=1))
    assert reflection.meta_prompts and not lm.meta_prompts
    assert any("the gold answer is" in p for p in reflection.meta_prompts)
    assert isinstance(program, MedicalQA)


def test_gepa_warns_when_its_reflection_model_cannot_answer():
    from medjp_agent.errors import MedjpWarning
    from medjp_agent.lm.errors import NotRun
    from medjp_agent.lm.scripted import ScriptedLM

    def too_long(prompt: str, kwargs: dict[str, Any]) -> str:
        raise NotRun("prompt too long (3000 prompt + 512 new tokens > the model's 2048-token context)")

    lm = ExamAndMetaLM(QUESTIONS, base=0.3)
    student = MedicalQA(PromptFormat(shots=0, reasoning="cot"), demo_pool=[])
    with pytest.warns(MedjpWarning, match=r"^gepa: the reflection model could not answer (\d+) of its \1 calls "
                                          r"\(prompt too long .*--reflection-model$"):
        program = compile_program("gepa", student, SPLITS.train, SPLITS.dev[:6], lm, proposer=ScriptedLM(too_long),
                                  settings=OptimizerSettings(max_metric_calls=30, threads=1))
    assert program.cot.predict.signature.instructions == student.cot.predict.signature.instructions


def test_gepa_with_a_reflection_model_that_answers_warns_nothing(recwarn):
    from medjp_agent.errors import MedjpWarning

    lm = ExamAndMetaLM(QUESTIONS, base=0.3)
    student = MedicalQA(PromptFormat(shots=0, reasoning="cot"), demo_pool=[])
    compile_program("gepa", student, SPLITS.train, SPLITS.dev[:6], lm, proposer=ExamAndMetaLM(QUESTIONS),
                    settings=OptimizerSettings(max_metric_calls=30, threads=1))
    assert not [w for w in recwarn if issubclass(w.category, MedjpWarning)]


def question(answers: tuple[str, ...], forbidden: tuple[str, ...] = ()) -> Question:
    return Question(id="X1", year=2025, section="X", text="どれか。", choices=("甲", "乙", "丙", "丁", "戊"),
                    answers=answers, forbidden=forbidden)


@pytest.mark.parametrize(("gold", "forbidden", "answer", "error", "score", "says"), [
    (("b",), (), "b", None, 1.0, "Correct: b."),
    (("b", "d"), (), "b", None, 0.0, "Missed d: this question has 2 correct choices."),
    (("b",), ("e",), "e", None, 0.0, "Picked e, a 禁忌肢 (forbidden choice)"),
    (("b",), (), "", "no answer marker '答え：' in the completion", 0.0, "could not be read (no answer marker"),
])
def test_exam_metric_scores_exact_sets_and_explains_failures(gold, forbidden, answer, error, score, says):
    q = question(gold, forbidden)
    example = dspy.Example(question=q.text, choices=list(q.choices))
    pred = dspy.Prediction(answer=answer, parse_error=error)
    assert ExamMetric([q])(example, pred) == score
    feedback = ExamMetric([q], feedback=True)(example, pred, None, "cot.predict", None)
    assert feedback.score == score and says in feedback.feedback and ",".join(gold) in feedback.feedback


@pytest.fixture()
def scripted_backend(monkeypatch):
    lm = ExamAndMetaLM(QUESTIONS, base=0.7)
    monkeypatch.setattr(backends, "build_lm", lambda opts: lm)
    return lm


def test_optimize_writes_run_folders_and_resumes(tmp_path, scripted_backend):
    out = tmp_path / "opt"
    args = ["optimize", "--optimizer", "bootstrap", "--format", "paper-instruction-preamble", "--out", str(out),
            "--max-demos", "1", "--threads", "2"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in ("bootstrap-paper-instruction-preamble", "paper-instruction-preamble"):
        run = read_run(out / "test" / name)
        assert run.manifest.kind == "optimize" and run.summary.n_questions == len(SPLITS.test)
    assert read_run(out / "test" / "bootstrap-paper-instruction-preamble").manifest.optimizer == "bootstrap"
    assert (out / BEST_PROGRAM).exists() and (out / "programs" / "paper-instruction-preamble.json").exists()
    calls = len(scripted_backend.calls)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))["extra"]["optimize"]
    assert summary["resumed"] == ["paper-instruction-preamble"] and not summary["compile_s"]
    assert len(scripted_backend.calls) == calls  # nothing compiled or answered again


def test_combined_mode_optimizes_within_the_searchs_best_formats(tmp_path, scripted_backend):
    space = tmp_path / "space.yaml"
    space.write_text("axes:\n  template: [harness, alpaca, plain, xml]\n  instruction_position: [header, preamble]\n",
                     encoding="utf-8")
    searched = CliRunner().invoke(app, ["search", "--out", str(tmp_path / "search"), "--space", str(space),
                                        "--n-trials", "3", "--no-final", "--no-tui", "--split", "0.3,0.4,0.3",
                                        "--limit", "24"])
    assert searched.exit_code == 0, searched.output
    out = tmp_path / "combined"
    result = CliRunner().invoke(app, ["optimize", "--optimizer", "bootstrap", "--from-search", str(tmp_path / "search"),
                                      "--top-k", "2", "--out", str(out), "--max-demos", "1"])
    assert result.exit_code == 0, result.output
    # The questions the search chose on, without repeating its flags: same data, same filters.
    search_manifest = read_manifest(tmp_path / "search" / "manifest.json")
    assert read_manifest(out / "manifest.json").filters == search_manifest.filters
    assert search_manifest.filters["limit"] == 24
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))["extra"]["optimize"]
    assert len(summary["dev_accuracy"]) == 2 and summary["chosen"] in summary["dev_accuracy"]
    assert {p.name for p in (out / "dev").iterdir()} == set(summary["dev_accuracy"])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["extra"]["split"]["fractions"] == [0.3, 0.4, 0.3]  # the search's split, not the default
    assert (out / "test" / f"bootstrap-{summary['chosen']}").is_dir()


def test_combined_mode_refuses_other_questions_or_a_silent_change_of_model(tmp_path, scripted_backend):
    from medjp_agent.errors import MedjpWarning

    space = tmp_path / "space.yaml"
    space.write_text("axes:\n  template: [harness, alpaca]\n", encoding="utf-8")
    search = tmp_path / "search"
    searched = CliRunner().invoke(app, ["search", "--out", str(search), "--space", str(space), "--n-trials", "2",
                                        "--no-final", "--no-tui", "--limit", "24"])
    assert searched.exit_code == 0, searched.output
    combined = ["optimize", "--optimizer", "bootstrap", "--from-search", str(search), "--max-demos", "1"]

    def run(*args: str):
        return CliRunner().invoke(app, [*combined, "--out", str(tmp_path / f"opt{len(args)}"), *args])

    other = run("--limit", "10")
    said = " ".join(other.output.replace("│", " ").split())
    assert other.exit_code == 2 and f"--from-search: {search} chose its formats on other questions (limit: 24 " \
        "there, 10 now)" in said, other.output
    assert run("--lenient", "--top-k", "1").exit_code == 0  # selects nothing: the search's questions are taken
    manifest = json.loads((search / "manifest.json").read_text(encoding="utf-8"))
    (search / "manifest.json").write_text(json.dumps({**manifest, "data": "ward/igakuqa"}), encoding="utf-8")
    moved = run("--model", "on-purpose", "--top-k", "1")
    said = " ".join(moved.output.replace("│", " ").split())
    assert moved.exit_code == 2 and "searched on, ward/igakuqa, is not found from here" in said, said
    # Named from here, the data is taken as the search's: its filters (limit 24) still come from the search.
    named = run("--model", "on-purpose", "--top-k", "1", "--data", str(SAMPLE_DIR))
    assert named.exit_code == 0, named.output
    assert read_manifest(tmp_path / "opt6" / "manifest.json").filters["limit"] == 24
    (search / "manifest.json").write_text(json.dumps({**manifest, "model": "swallow-70b"}), encoding="utf-8")
    silent = run()
    said = " ".join(silent.output.replace("│", " ").split())
    assert silent.exit_code == 2 and f"{search} chose its formats with swallow-70b; this run uses" in said, said
    assert "pass --model" in said
    with pytest.warns(MedjpWarning, match="chose its formats with swallow-70b; this run uses .*, as --model asks"):
        chosen = run("--model", "on-purpose")
    assert chosen.exit_code == 0, chosen.output


def test_run_optimize_counts_every_lm_call_compile_included(tmp_path):
    """The API the CLI calls: compiling, dev and test evaluations all go through counted LM calls."""
    lm = ExamAndMetaLM(QUESTIONS, base=0.7)
    config = OptimizeConfig("bootstrap", [PromptFormat(shots=0, reasoning="cot", name="cot")], SPLITS, lm,
                            tmp_path / "opt", settings=OptimizerSettings(max_demos=1, threads=2))
    result = run_optimize(config)
    assert result.lm_calls == len(lm.calls) > 2 * len(SPLITS.test)  # compile calls too, not only the test runs
    assert set(result.test) == {"bootstrap-cot", "cot"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_runs_on_the_tiny_hf_model(name, tiny_model):
    """The tiny local model answers the exam; a scripted proposer writes instructions/reflections, as a stronger
    model would (`--reflection-model`): a random model cannot write parseable meta-prompt replies."""
    from medjp_agent.lm import LMOptions, build_lm

    lm = build_lm(LMOptions(model=str(tiny_model), max_new_tokens=8))
    proposer = ExamAndMetaLM(QUESTIONS, base=0.6)
    student = MedicalQA(PromptFormat(shots=0, reasoning="direct"), demo_pool=SPLITS.demo_pool())
    program = compile_program(name, student, SPLITS.train[:4], SPLITS.dev[:4], lm, proposer=proposer, settings=TINY)
    assert isinstance(program, MedicalQA) and program is not student
    asked = lm.generate_calls + lm.cache_hits  # the session's disk cache may serve what another test generated
    assert asked > 0 or name == "knn"  # KNNFewShot compiles nothing: it bootstraps at every call
    with dspy.context(lm=lm):
        q = SPLITS.test[0]
        pred = program(question=q.text, choices=list(q.choices))
    assert pred.completion and lm.generate_calls + lm.cache_hits > asked


@pytest.mark.slow
def test_bootstrap_and_logprob_score_on_the_tiny_hf_model(tiny_model):
    pytest.importorskip("medjp_agent.lm.hf", reason="the local HF backend (medjp_agent/lm/hf.py) is not there yet")
    from medjp_agent.lm import LMOptions, build_lm

    lm = build_lm(LMOptions(model=str(tiny_model), max_new_tokens=8, cache=False))
    student = MedicalQA(PromptFormat(shots=0, reasoning="direct"), demo_pool=[])
    program = compile_program("bootstrap", student, SPLITS.train[:3], [], lm,
                              settings=OptimizerSettings(max_demos=1, threads=2))
    assert isinstance(program, MedicalQA)
    q = next(q for q in SPLITS.dev if q.choices)
    result = answer_question(LogprobQA(PromptFormat(shots=0), demo_pool=[]), q, lm)
    assert result.score is not None and result.score <= 0.0 and result.lm_calls == 1
