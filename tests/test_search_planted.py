"""Search outcomes on a surrogate LM with a planted best format: found, budgets honoured, resumes checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medjp_agent.optimizers import (
    SAMPLERS, Budget, CorrectnessScore, FormatSpace, SearchSettings, StudyMismatch, run_search,
)
from medjp_agent.signatures import PAPER_FORMATS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedLM, synthetic_exam  # noqa: E402

DEV = synthetic_exam(40)
SPACE = FormatSpace.default().restrict(
    template=["alpaca", "plain", "markdown", "xml"], labels=["latin", "upper", "katakana"],
    reasoning=["direct", "cot", "summarize"], persona=["none", "specialist"], instruction_position=["header", "preamble"],
).fixed(**{name: FormatSpace.default().base.to_dict()[name] for name in FormatSpace.default().axes
           if name not in ("template", "labels", "reasoning", "persona", "instruction_position")})
EFFECTS = {"template": {"xml": 0.3}, "labels": {"upper": 0.2}, "reasoning": {"cot": 0.2}}


def settings(**kw) -> SearchSettings:
    return SearchSettings(**{"study": "planted", "threads": 1, "n_startup_trials": 6, "budget": Budget(n_trials=30), **kw})


def test_tpe_with_pruning_finds_the_planted_best_format():
    lm = PlantedLM(DEV, EFFECTS, base=0.25, spread=0.2)
    result = run_search(settings(), SPACE, DEV, CorrectnessScore(lm, demo_pool=[]))
    assert result.n_complete == 30 and result.stop_reason == "n_trials"
    assert {k: result.best.format[k] for k in lm.planted_best()} == lm.planted_best()
    assert set(result.references) == set(PAPER_FORMATS)
    assert [t.reference for t in result.trials[:2]] == list(PAPER_FORMATS)  # enqueued first
    assert result.n_pruned > 0 and result.lm_calls_saved > 0
    s = result.sensitivity
    assert s.spread == pytest.approx(s.best - s.worst) and s.spread > 0.3
    assert s.n_formats == result.n_complete - result.n_pruned and s.best == result.best.accuracy


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(sampler):
    lm = PlantedLM(DEV[:15], EFFECTS, base=0.4)
    small = SPACE.restrict(template=["alpaca", "xml"], labels=["latin", "upper"], persona=["none"])
    result = run_search(settings(sampler=sampler, n_startup_trials=2, budget=Budget(n_trials=5), prune=False),
                        small, DEV[:15], CorrectnessScore(lm, demo_pool=[]))
    assert result.n_complete == 5 and result.best is not None


def test_lm_call_budget_counts_the_whole_study():
    lm = PlantedLM(DEV, EFFECTS, base=0.4)
    result = run_search(settings(prune=False, budget=Budget(max_lm_calls=100)), SPACE, DEV,
                        CorrectnessScore(lm, demo_pool=[]))
    assert result.stop_reason == "max_lm_calls"
    assert 100 <= result.lm_calls < 100 + len(DEV)  # the trial in flight finishes, no more starts
    assert len(lm.calls) == result.lm_calls


def test_a_study_is_not_resumed_with_another_space(tmp_path):
    dev = DEV[:8]
    lm = PlantedLM(dev, EFFECTS, base=0.4)
    url = f"journal:{tmp_path / 'study.log'}"
    score = CorrectnessScore(lm, demo_pool=[])
    run_search(settings(storage=url, budget=Budget(n_trials=2)), SPACE, dev, score)
    resumed = run_search(settings(storage=url, budget=Budget(n_trials=3)), SPACE, dev, score)
    assert resumed.n_complete == 3  # the budget counts the whole study
    with pytest.raises(StudyMismatch, match="space"):
        run_search(settings(storage=url), SPACE.restrict(template=["xml", "plain"]), dev, score)
    with pytest.raises(StudyMismatch, match="dev"):
        run_search(settings(storage=url), SPACE, dev[:-1], score)
