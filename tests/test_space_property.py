"""The format space: every sampled point renders and parses back; conditional axes; YAML restriction."""

from __future__ import annotations

import sys
from pathlib import Path

import dspy
import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medjp_agent.data import load_dataset
from medjp_agent.optimizers import DEFAULT_AXES, FormatSpace, load_space
from medjp_agent.optimizers.space import HARNESS_IGNORES
from medjp_agent.signatures import (
    NAMED_FORMATS, DemoSelector, FormatAdapter, MedicalQA, PromptFormat, default_pool, resolve_format, signature_for,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedLM  # noqa: E402

QUESTIONS = list(load_dataset("sample"))
# One of each kind: single answer, several answers, a numeric answer (no choices).
PROBES = [next(q for q in QUESTIONS if q.qtype == kind) for kind in ("single", "multi", "numeric")]
SPACE = FormatSpace.default()
PERFECT = PlantedLM(QUESTIONS)  # always right, in whatever format is active


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({name: st.sampled_from(values) for name, values in DEFAULT_AXES.items()}))
def test_every_point_renders_and_parses_back(params):
    fmt = SPACE.sample(optuna.trial.FixedTrial(params))
    program = MedicalQA(fmt)
    with dspy.context(lm=PERFECT):
        for q in PROBES:
            pred = program(question=q.text, choices=list(q.choices))
            assert pred.parse_error is None, (fmt, pred.completion)
            assert pred.answer == ",".join(q.answers), (fmt, pred.completion)


def test_sample_suggests_only_relevant_axes():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(60):
        trial = study.ask()
        fmt = SPACE.sample(trial)
        harness = fmt.template == "harness"
        assert ("casing" in trial.params) == (fmt.language == "en" and not harness)
        assert not harness or not HARNESS_IGNORES & set(trial.params)
        assert ("demo_selection" in trial.params) == (fmt.shots > 0)
        assert ("chat" in trial.params) == (fmt.template != "chat")
        assert set(trial.params) <= set(DEFAULT_AXES)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", sorted(NAMED_FORMATS))
def test_named_formats_are_points_of_the_default_space(name):
    fmt = NAMED_FORMATS[name]
    params = SPACE.params_for(fmt)
    assert params is not None
    assert SPACE.sample(optuna.trial.FixedTrial(params)).replace(name=fmt.name) == fmt


def prompt_of(fmt: PromptFormat, q=PROBES[1]) -> str:
    adapter = FormatAdapter(fmt)
    demos = DemoSelector(fmt, default_pool()).select(q.text, q.choices)
    return adapter.format(signature_for(fmt.task_instruction(), fmt.marker), demos,
                          {"question": q.text, "choices": list(q.choices)})[-1]["content"]


@pytest.mark.parametrize(("axis", "other"), [
    ("labels", "katakana"), ("full_width", True), ("wrapper", "bracket"), ("choice_layout", "inline"),
    ("separator", " - "), ("joiner", "\n\n"), ("answer_word", "正解"), ("persona", "professor"),
    ("output", "json"), ("self_generated_cot", True), ("reasoning", "direct"),
])
def test_axes_the_harness_does_not_render_are_one_format(axis, other):
    paper = NAMED_FORMATS["paper-instruction-in-header"]
    assert getattr(paper, axis) != other
    variant = paper.replace(**{axis: other})
    assert prompt_of(variant) == prompt_of(paper)  # the axis changes nothing in the harness layout ...
    params = SPACE.params_for(paper)
    assert axis not in params  # ... so the search never suggests it: one set of params, one format
    assert SPACE.params_for(variant) is None  # the variant is not a distinct point of the space
    with_other = optuna.trial.FixedTrial({**params, axis: other})
    assert SPACE.sample(with_other) == SPACE.sample(optuna.trial.FixedTrial(params))


def test_axes_the_harness_renders_stay_searched():
    paper = NAMED_FORMATS["paper-instruction-in-header"]
    variants = [paper.replace(**change) for change in ({"instruction_position": "preamble"},
                {"instruction_position": "after"}, {"language": "en"}, {"wording": "exam"}, {"shots": 0})]
    prompts = {prompt_of(f) for f in [paper, *variants]}
    assert len(prompts) == 1 + len(variants)
    assert "reasoning" in SPACE.params_for(paper.replace(wording="exam"))  # its instruction holds the hint
    assert prompt_of(paper.replace(wording="exam", reasoning="direct")) != prompt_of(paper.replace(wording="exam"))
    assert all(SPACE.params_for(f) is not None for f in variants)


def test_params_for_refuses_formats_outside_the_space():
    small = SPACE.restrict(template=["plain", "xml"])
    assert small.params_for(NAMED_FORMATS["paper-instruction-in-header"]) is None
    assert small.params_for(NAMED_FORMATS["xml-ja-cot"]) is not None


def test_restrict_fixed_and_logprob_views():
    small = SPACE.restrict(template=["alpaca", "xml"], shots=[1])
    assert small.axes["template"] == ("alpaca", "xml")
    assert "shots" not in small.axes and small.base.shots == 1
    assert small.grid()["template"] == ["alpaca", "xml"]
    assert FormatSpace({"template": ("alpaca", "xml"), "labels": ("latin", "upper", "digits")}).grid_size == 6
    fixed = SPACE.for_logprob()
    assert "reasoning" not in fixed.axes and fixed.base.reasoning == "direct" and fixed.base.ensemble == 1


def test_space_round_trips_through_yaml(tmp_path):
    space = SPACE.restrict(separator=["：", "\n"], template=["chat", "json"])
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space.to_dict(), allow_unicode=True), encoding="utf-8")
    assert load_space(path) == space


def test_user_restricts_the_space_in_yaml(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("base: plain-ja-cot\naxes:\n  template: [plain, markdown]\n  labels: [katakana, upper]\n",
                    encoding="utf-8")
    space = load_space(path)
    assert list(space.axes) == ["template", "labels"]
    assert space.base.reasoning == "cot" and space.base.name == "base"
    fmt = space.sample(optuna.trial.FixedTrial({"template": "markdown", "labels": "upper"}))
    assert fmt == PromptFormat(**{**NAMED_FORMATS["plain-ja-cot"].to_dict(), "name": "markdown.upper",
                                  "template": "markdown", "labels": "upper"})


@pytest.mark.parametrize(("text", "message"), [
    ("axes:\n  colour: [red]\n", "'colour' is not a searchable PromptFormat field"),
    ("axes:\n  template: [alpaca, latex]\n", "'latex' is not one of"),
    ("axes:\n  shots: [0, 9]\n", "outside 0..8"),
    ("axes:\n  labels: []\n", "has no values"),
    ("base: nope\n", "unknown format 'nope'"),
    ("extra: 1\n", "unknown format-space key 'extra'"),
])
def test_bad_space_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_space(path)


def test_the_readme_space_example_holds_the_paper_formats(tmp_path):
    """README's format-space example says the paper's two formats lie in it, so they run first on dev."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    example = readme.split("A format space file restricts the search", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "space.yaml").write_text(example, encoding="utf-8")
    space = load_space(tmp_path / "space.yaml")
    for name in ("paper-instruction-in-header", "paper-instruction-preamble"):
        assert space.params_for(resolve_format(name)) is not None, name
