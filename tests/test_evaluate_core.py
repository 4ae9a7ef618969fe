"""The evaluation core: one place asks questions, observers see every result, the parsed answer keeps its type,
the hashed prompt is the prompt sent, errors have a family, and the DSPy seams it relies on are pinned."""

from __future__ import annotations

import inspect
from pathlib import Path

import dspy
import pytest
from typer.testing import CliRunner

import medjp_agent.lm as backends
from medjp_agent.cli import app
from medjp_agent.data import DataError, load_dataset
from medjp_agent.errors import ConfigError, LMError, MedjpError, RunInterrupted
from medjp_agent.evaluate import CallMeter, answer_question, counting_calls, evaluate
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.optimizers import StudyMismatch
from medjp_agent.optimizers.storage import StorageError
from medjp_agent.results import RunMismatch
from medjp_agent.scoring import extract_answer
from medjp_agent.signatures import FormatAdapter, MedicalQA, PromptFormat
from medjp_agent.signatures.adapter import hash_prompt

QUESTIONS = [q for q in load_dataset("sample") if q.choices][:6]
DIRECT = PromptFormat(name="direct", reasoning="direct", shots=0)


class Recorder:
    def __init__(self, stop_after: int | None = None):
        self.seen: list[str] = []
        self.stop_after = stop_after

    def on_result(self, result) -> None:
        self.seen.append(result.id)

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.seen) >= self.stop_after


def test_observers_see_every_result_and_can_stop_before_the_next_question():
    lm = ScriptedLM("b")
    everything, stopper = Recorder(), Recorder(stop_after=3)
    results = evaluate(MedicalQA(DIRECT), QUESTIONS, lm, threads=1, observers=[everything, stopper])
    assert [r.id for r in results] == everything.seen == stopper.seen == [q.id for q in QUESTIONS[:3]]
    assert len(lm.calls) == 3  # asked before each question, not between runs


def test_an_lm_failure_interrupts_with_what_finished_observed():
    def reply(prompt, _kwargs):
        if QUESTIONS[2].text in prompt:
            raise ConnectionError("server went away")
        return "b"

    seen = Recorder()
    with pytest.raises(RunInterrupted, match=f"question {QUESTIONS[2].id}: ConnectionError") as info:
        evaluate(MedicalQA(DIRECT), QUESTIONS[:4], ScriptedLM(reply), threads=1, observers=[seen])
    assert isinstance(info.value.__cause__, LMError) and isinstance(info.value.__cause__.__cause__, ConnectionError)
    assert QUESTIONS[0].id in seen.seen and QUESTIONS[2].id not in seen.seen


def test_a_question_that_cannot_be_asked_is_recorded_not_run_and_the_others_go_on():
    from medjp_agent.lm.errors import NotRun

    def reply(prompt, _kwargs):
        if QUESTIONS[1].text in prompt:
            raise NotRun("prompt too long")
        return "答え：b"

    by_id = {r.id: r for r in evaluate(MedicalQA(DIRECT), QUESTIONS[:3], ScriptedLM(reply), threads=1)}
    assert by_id[QUESTIONS[1].id].not_run == "prompt too long" and by_id[QUESTIONS[1].id].answer == ()
    assert not by_id[QUESTIONS[0].id].not_run and not by_id[QUESTIONS[2].id].not_run


def test_a_programming_error_is_not_an_lm_failure():
    class Broken(MedicalQA):
        def forward(self, question, choices=()):
            raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        evaluate(Broken(DIRECT), QUESTIONS[:2], ScriptedLM("b"), threads=2)


def test_the_cli_reports_lm_failures_and_shows_bugs(tmp_path, monkeypatch):
    def down(_prompt, _kwargs):
        raise ConnectionError("refused")

    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: ScriptedLM(down))
    failed = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "a"), "--format", "plain-ja-direct"])
    assert failed.exit_code == 1 and "re-run the same command to resume" in failed.output

    monkeypatch.setattr("medjp_agent.runs.build_lm", lambda opts: (_ for _ in ()).throw(KeyError("bug")))
    crashed = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "b"), "--format", "plain-ja-direct"])
    assert isinstance(crashed.exception, KeyError) and "re-run" not in crashed.output  # a traceback, no advice

    bad = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "c"), "--format", "no-such-format"])
    assert bad.exit_code == 2 and "--format" in bad.output


def test_the_hashed_prompt_is_the_prompt_sent_even_with_shuffled_choices():
    lm = ScriptedLM("答え：a")
    fmt = PromptFormat(name="shuffled", reasoning="direct", shots=0, shuffle_choices=True)
    question = QUESTIONS[0]
    result = answer_question(MedicalQA(fmt, seed=3), question, lm)
    sent = lm.calls[0]["messages"]
    assert result.prompt_hash == hash_prompt(sent)
    unshuffled = FormatAdapter(fmt).format(MedicalQA(fmt).cot.predict.signature, [],
                                           {"question": question.text, "choices": list(question.choices)})
    assert sent != unshuffled and result.prompt_hash != hash_prompt(unshuffled)


def test_the_extraction_reaches_the_result_as_the_adapter_found_it():
    fmt = PromptFormat(name="shuffled", reasoning="direct", shots=0, shuffle_choices=True, ensemble=1)
    question = QUESTIONS[0]
    lm = ScriptedLM(lambda prompt, _k: next(f"答え：{label}" for label in "abcde"
                                            if f"{label}. {question.choices[0]}" in prompt))
    result = answer_question(MedicalQA(fmt, seed=5), question, lm)
    assert result.answer == ("a",)  # the label shown for choice a, mapped back through the shuffle
    shown = lm.calls[0]["replies"][0].removeprefix("答え：")
    assert result.method and result.method == extract_answer(shown, question, labels=fmt.display_labels).method
    refused = answer_question(MedicalQA(DIRECT), question, ScriptedLM(""))
    assert refused.answer == () and refused.parse_error == "empty completion" and not refused.correct


def test_lm_calls_count_medprompts_preparation():
    pool = [{"question": q.text, "choices": list(q.choices), "answer": ",".join(q.answers)} for q in QUESTIONS[:2]]
    fmt = PromptFormat(name="medprompt", reasoning="cot", shots=1, self_generated_cot=True, demo_selection="fixed")
    lm = ScriptedLM("考察\n答え：a")
    meter = CallMeter()
    first = answer_question(MedicalQA(fmt, demo_pool=pool), QUESTIONS[3], lm, meter)
    assert first.lm_calls == len(lm.calls) == meter.calls == 3  # two preparation calls, then the question


def test_calls_are_counted_once_per_meter_without_a_global_callback():
    seen_callbacks = []

    def reply(prompt: str, kwargs: dict) -> str:
        seen_callbacks.append(list(dspy.settings.get("callbacks") or []))
        return "答え：a"

    lm, meter = ScriptedLM(reply), CallMeter()
    # The budget meter is already counting around the evaluation and is passed to it too: each call counts once.
    with counting_calls(meter, lms=[lm]):
        results = evaluate(MedicalQA(DIRECT), QUESTIONS, lm, threads=3, meter=meter)
        lm(messages=[{"role": "user", "content": "outside any question"}])
    assert meter.calls == len(lm.calls) == len(QUESTIONS) + 1
    assert [r.lm_calls for r in results] == [1] * len(QUESTIONS)
    # No global DSPy callback while asking: with one, DSPy inspects every module and adapter call's arguments.
    assert seen_callbacks == [[]] * (len(QUESTIONS) + 1)
    lm(messages=[{"role": "user", "content": "after"}])
    assert meter.calls == len(QUESTIONS) + 1  # outside the context nothing counts


def test_a_finished_evaluations_threads_serve_the_next_one():
    import threading

    def pool_threads() -> set[int]:
        return {t.ident for t in threading.enumerate() if t.name.startswith("medjp-eval")}

    first = evaluate(MedicalQA(DIRECT), QUESTIONS, ScriptedLM("答え：a"), threads=3)
    before = pool_threads()
    second = evaluate(MedicalQA(DIRECT), QUESTIONS, ScriptedLM("答え：a"), threads=3)
    assert before and pool_threads() == before  # no thread started for the second evaluation
    assert sorted(r.id for r in first) == sorted(r.id for r in second)


def test_errors_have_one_family():
    for error in (DataError, RunMismatch, StudyMismatch, StorageError, ConfigError, LMError, RunInterrupted):
        assert issubclass(error, MedjpError)
    assert RunInterrupted.exit_code == 1 and ConfigError.exit_code == 2


# -- DSPy seams this project relies on: each fails loudly when an upgrade changes it ------------------------------
def test_dspy_adapter_call_is_the_entry_point_predict_uses():
    params = list(inspect.signature(dspy.Adapter.__call__).parameters)
    assert params == ["self", "lm", "lm_kwargs", "signature", "demos", "inputs"]
    calls = []

    class Spy(FormatAdapter):
        def __call__(self, lm, lm_kwargs, signature, demos, inputs):
            calls.append(inputs)
            return super().__call__(lm, lm_kwargs, signature, demos, inputs)

    with dspy.context(lm=ScriptedLM("答え：a"), adapter=Spy(DIRECT)):
        pred = dspy.Predict(MedicalQA(DIRECT).cot.predict.signature)(question="q", choices=["x", "y"])
    assert calls and pred.extraction.answer == ("a",) and pred.completion == "答え：a"  # extra keys survive


def test_dspy_lm_calls_fire_callbacks_and_modules_dump_state():
    meter, lm = CallMeter(), ScriptedLM("x")
    with dspy.context(callbacks=[meter]):
        lm(messages=[{"role": "user", "content": "hi"}])
    assert meter.calls == 1 == len(lm.calls)
    assert list(inspect.signature(dspy.Module.dump_state).parameters) == ["self", "json_mode"]
    assert "callbacks" in dspy.settings.config


def test_api_backend_entry_point_still_takes_messages():
    """`APILM` replaces BaseLM.__call__ (to route raw prompts); pin the signature it mirrors."""
    params = inspect.signature(dspy.BaseLM.__call__).parameters
    assert list(params)[:3] == ["self", "prompt", "messages"] and params["messages"].kind == inspect.Parameter.KEYWORD_ONLY


def test_run_eval_resumes_and_programs_are_saved_clean(tmp_path: Path):
    from medjp_agent.runs import EvalConfig, run_eval

    lm = ScriptedLM("答え：b")
    config = EvalConfig(QUESTIONS, MedicalQA(DIRECT), lm, tmp_path / "run", threads=2)
    first = run_eval(config)
    assert first.n_questions == len(QUESTIONS) and len(lm.calls) == len(QUESTIONS)
    again = run_eval(config)
    assert again.n_questions == len(QUESTIONS) and len(lm.calls) == len(QUESTIONS)  # nothing asked twice
    assert (tmp_path / "run" / "program.json").exists() and (tmp_path / "run" / "format.yaml").exists()


def test_a_resume_after_the_data_changed_holds_exactly_the_questions_selected_now(tmp_path: Path):
    """A mended file moves a --limit: the results of questions no longer selected go, with a warning."""
    from medjp_agent.errors import MedjpWarning
    from medjp_agent.results import read_run
    from medjp_agent.runs import EvalConfig, run_eval

    lm = ScriptedLM("答え：b")
    run_eval(EvalConfig(QUESTIONS[:3], MedicalQA(DIRECT), lm, tmp_path / "run", threads=2))
    now = [QUESTIONS[0], *QUESTIONS[3:5]]
    with pytest.warns(MedjpWarning, match="dropped 2 results of questions no longer selected"):
        summary = run_eval(EvalConfig(now, MedicalQA(DIRECT), lm, tmp_path / "run", threads=2))
    assert summary.n_questions == 3 and len(lm.calls) == 5  # the kept one is not asked again
    assert sorted(r.id for r in read_run(tmp_path / "run").results) == sorted(q.id for q in now)


def test_building_an_lm_from_bad_options_is_a_config_error(tmp_path, monkeypatch):
    from medjp_agent.lm.options import LMOptions
    from medjp_agent.runs import EvalConfig, run_eval

    def refuse(opts):
        raise ValueError("--api-base needs --model")

    monkeypatch.setattr(backends, "build_lm", refuse)
    monkeypatch.setattr("medjp_agent.runs.build_lm", refuse)
    with pytest.raises(ConfigError, match="needs --model"):
        run_eval(EvalConfig(QUESTIONS, MedicalQA(DIRECT), LMOptions(), tmp_path / "x"))
