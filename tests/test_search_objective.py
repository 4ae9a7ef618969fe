"""One trial = one format on dev: per-question reports, Wilcoxon pruning, partial means, LM calls saved, scores."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest

from medjp_agent.data import LABELS
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.optimizers import (
    REFERENCE, CorrectnessScore, FormatObjective, FormatSpace, LogprobScore, TrialOutcome, make_pruner, make_score,
)
from medjp_agent.signatures import PromptFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedLM, synthetic_exam  # noqa: E402

DEV = synthetic_exam(60)
SPACE = FormatSpace({"template": ("alpaca", "xml")}, PromptFormat(reasoning="direct", shots=0))
GOOD, BAD = {"template": "xml"}, {"template": "alpaca"}


def study_with(*params: dict, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for p in params:
        study.enqueue_trial(p)
    return study


def objective(lm) -> FormatObjective:
    return FormatObjective(DEV, SPACE, CorrectnessScore(lm, demo_pool=[]), threads=1)


def test_wilcoxon_prunes_a_clearly_worse_format_and_returns_its_partial_mean():
    lm = PlantedLM(DEV, {"template": {"xml": 0.5}}, base=0.35, spread=0.2)
    study = study_with(GOOD, BAD, BAD, pruner=make_pruner(n_startup_steps=14))
    study.optimize(objective(lm), n_trials=3)
    outcomes = [TrialOutcome.from_trial(t) for t in study.trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    good, *bad = outcomes
    assert not good.pruned and good.answered == len(DEV) and good.lm_calls_saved == 0
    pruned = [o for o in bad if o.pruned]
    assert pruned, "a format 50 points worse must be stopped early"
    for o in pruned:
        assert 14 <= o.answered < len(DEV)
        assert o.lm_calls_saved == len(DEV) - o.answered > 0
        assert o.value == pytest.approx(o.accuracy)  # the partial mean, not an exception
        assert o.value < good.value


def test_reference_trials_are_never_pruned():
    lm = PlantedLM(DEV, {"template": {"xml": 0.5}}, base=0.35, spread=0.2)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(n_startup_steps=14))
    study.enqueue_trial(GOOD)
    study.enqueue_trial(BAD, user_attrs={REFERENCE: "paper-ish"})
    study.optimize(objective(lm), n_trials=2)
    ref = TrialOutcome.from_trial(study.trials[1])
    assert ref.reference == "paper-ish" and not ref.pruned and ref.answered == len(DEV)
    assert ref.format["name"] == "paper-ish"


def test_steps_are_question_indices_and_the_order_is_shuffled_per_trial():
    lm = PlantedLM(DEV)
    study = study_with(GOOD, BAD, pruner=make_pruner(enabled=False))
    obj = objective(lm)
    study.optimize(obj, n_trials=2)
    for t in study.trials:
        assert set(t.intermediate_values) == set(range(len(DEV)))
        assert t.user_attrs["format"]["template"] in ("xml", "alpaca")
    assert obj.order(0) != obj.order(1) and sorted(obj.order(0)) == list(range(len(DEV)))
    asked = [next(q.id for q in DEV if q.text in call["prompt"]) for call in lm.calls[:5]]
    assert asked == [DEV[i].id for i in obj.order(0)[:5]]


class FakeScorer(ScriptedLM):
    """A local-model stand-in: the gold option's continuation scores highest."""

    def __init__(self, gold_index: int):
        super().__init__("unused")
        self.gold_index = gold_index
        self.requests: list[tuple[list, list[str]]] = []

    def score_continuations(self, messages, continuations):
        self.requests.append((messages, list(continuations)))
        return [-1.0 if i == self.gold_index else -3.0 for i in range(len(continuations))]


def test_logprob_score_is_the_gold_options_log_softmax():
    q = DEV[0]
    gold = LABELS.index(q.answers[0])
    lm = FakeScorer(gold)
    ask = LogprobScore(lm, demo_pool=[]).prepare(PromptFormat(labels="upper", shots=0))
    result = ask(q)
    expected = -1.0 - math.log(math.exp(-1.0) + 4 * math.exp(-3.0))
    assert result.score == pytest.approx(expected)
    assert result.correct and result.answer == q.answers and result.lm_calls == 1
    messages, continuations = lm.requests[0]
    assert continuations == list("ABCDE")
    assert messages[-1]["content"].endswith("答え：")  # rendered with a direct answer: the prompt ends at the marker


def test_logprob_continuations_carry_the_marker_in_chat_formats():
    lm = FakeScorer(0)
    LogprobScore(lm, demo_pool=[]).prepare(PromptFormat(template="chat", shots=0))(DEV[0])
    assert lm.requests[0][1] == [f"答え：{c}" for c in "abcde"]


def test_auto_score_follows_what_the_lm_can_do():
    assert make_score("auto", FakeScorer(0)).name == "logprob"
    assert make_score("auto", ScriptedLM("x")).name == "correct"
    with pytest.raises(ValueError, match="scores continuations"):
        make_score("logprob", ScriptedLM("x"))
