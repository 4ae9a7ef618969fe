"""One trial = one format on dev: per-question reports, Wilcoxon pruning into Optuna's PRUNED state with the exact
partial mean, repeated formats, LM calls saved, and the log-probability program."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest

from medjp_agent.data import LABELS, Question
from medjp_agent.lm.scripted import ScriptedLM
from medjp_agent.evaluate import answer_question
from medjp_agent.optimizers import (
    DUPLICATE_OF, REFERENCE, Budget, FormatObjective, FormatSpace, LogprobQA, TrialOutcome, Workers, make_pruner,
)
from medjp_agent.signatures import NAMED_FORMATS, PromptFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_search import PlantedLM, synthetic_exam  # noqa: E402

DEV = synthetic_exam(60)
SPACE = FormatSpace({"template": ("alpaca", "xml", "plain", "markdown")}, PromptFormat(reasoning="direct", shots=0))
GOOD, BAD, BAD2, BAD3 = {"template": "xml"}, {"template": "alpaca"}, {"template": "plain"}, {"template": "markdown"}


def study_with(*params: dict, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner, storage=optuna.storages.InMemoryStorage())
    for p in params:
        study.enqueue_trial(p)
    return study


def objective(lm, threads: int = 1) -> FormatObjective:
    return FormatObjective(DEV, SPACE, lm, demo_pool=[], threads=threads)


def optimize(study: optuna.Study, obj: FormatObjective, n_trials: int) -> None:
    Workers(study, study._storage, obj, Budget(n_trials=n_trials)).run()


def test_wilcoxon_prunes_a_clearly_worse_format_and_returns_its_partial_mean():
    lm = PlantedLM(DEV, {"template": {"xml": 0.5}}, base=0.35, spread=0.2)
    study = study_with(GOOD, BAD, BAD2, pruner=make_pruner(n_startup_steps=14))
    optimize(study, objective(lm), n_trials=3)
    outcomes = [TrialOutcome.from_trial(t) for t in study.trials]
    good, *bad = outcomes
    assert not good.pruned and good.answered == len(DEV) and good.lm_calls_saved == 0
    pruned = [o for o in bad if o.pruned]
    assert pruned, "a format 50 points worse must be stopped early"
    for o in pruned:
        assert study.trials[o.number].state == optuna.trial.TrialState.PRUNED
        assert 14 <= o.answered < len(DEV)
        assert o.lm_calls_saved == len(DEV) - o.answered > 0
        assert o.value == pytest.approx(o.accuracy) == study.trials[o.number].value  # the partial mean
        assert o.value < good.value
    assert study.best_trial.number == 0


def test_reference_trials_are_never_pruned():
    lm = PlantedLM(DEV, {"template": {"xml": 0.5}}, base=0.35, spread=0.2)
    study = study_with(GOOD, pruner=make_pruner(n_startup_steps=14))
    study.enqueue_trial(BAD, user_attrs={REFERENCE: "paper-ish"})
    optimize(study, objective(lm), n_trials=2)
    ref = TrialOutcome.from_trial(study.trials[1])
    assert ref.reference == "paper-ish" and not ref.pruned and ref.answered == len(DEV)
    assert ref.format["name"] == "paper-ish"


def test_steps_are_question_indices_and_the_order_is_shuffled_per_trial():
    lm = PlantedLM(DEV)
    study = study_with(GOOD, BAD, pruner=make_pruner(enabled=False))
    obj = objective(lm)
    optimize(study, obj, n_trials=2)
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


def ask_logprob(lm, fmt: PromptFormat, question):
    return answer_question(LogprobQA(fmt, demo_pool=[]), question, lm)


def test_logprob_score_is_the_gold_options_log_softmax():
    q = DEV[0]
    gold = LABELS.index(q.answers[0])
    lm = FakeScorer(gold)
    result = ask_logprob(lm, PromptFormat(labels="upper", shots=0), q)
    expected = -1.0 - math.log(math.exp(-1.0) + 4 * math.exp(-3.0))
    assert result.score == pytest.approx(expected)
    assert result.correct and result.answer == q.answers and result.lm_calls == 1 and result.method == "logprob"
    messages, continuations = lm.requests[0]
    assert continuations == list("ABCDE")
    assert messages[-1]["content"].endswith("答え：")  # rendered with a direct answer: the prompt ends at the marker


def test_logprob_continuations_carry_the_marker_in_chat_formats():
    lm = FakeScorer(0)
    ask_logprob(lm, PromptFormat(template="chat", shots=0), DEV[0])
    assert lm.requests[0][1] == [f"答え：{c}" for c in "abcde"]


LENGTHY = Question(id="L1", year=2025, section="L-A", text="血清カリウム値を上昇させる薬剤はどれか。",
                   choices=("ループ利尿薬", "アンジオテンシン変換酵素阻害薬と抗アルドステロン薬の併用", "β2刺激薬",
                            "インスリン", "重炭酸ナトリウム"), answers=("b",))


@pytest.mark.parametrize("name", ["paper-instruction-in-header", "paper-instruction-preamble"])
@pytest.mark.parametrize("chat", [False, True])
def test_logprob_scores_choice_texts_in_the_paper_layout(name, chat):
    lm = FakeScorer(1)
    result = ask_logprob(lm, NAMED_FORMATS[name].replace(shots=0, chat=chat), LENGTHY)
    messages, continuations = lm.requests[0]
    assert continuations == list(LENGTHY.choices)  # the texts the harness answers with, no label, no marker
    assert messages[-1]["content"].endswith("### 応答：\n")
    # Summed like labels' (not per character): the model's probability of each answer, renormalised over the options.
    expected = -1.0 - math.log(math.exp(-1.0) + 4 * math.exp(-3.0))
    assert result.correct and result.answer == ("b",) and result.score == pytest.approx(expected)
    assert result.completion.startswith("ループ利尿薬:")


def test_logprob_needs_a_model_that_scores_continuations():
    from medjp_agent.errors import ConfigError

    with pytest.raises(ConfigError, match="scores continuations"):
        ask_logprob(ScriptedLM("x"), PromptFormat(shots=0), DEV[0])


class SlowPlanted(PlantedLM):
    """Answers after a pause that grows with the question number, so several are in flight when a trial is pruned."""

    def _reply(self, prompt, kwargs):
        import time

        time.sleep(0.002)
        return super()._reply(prompt, kwargs)


def test_a_pruned_trial_keeps_exactly_the_answers_it_had_and_is_never_best():
    """With 8 questions in flight, answers arriving after the pruner's stop are spent calls, not part of the value."""
    lm = SlowPlanted(DEV, {"template": {"xml": 0.6}}, base=0.2, spread=0.1)
    study = study_with(GOOD, BAD, BAD2, BAD3, pruner=make_pruner(n_startup_steps=14))
    obj = objective(lm, threads=8)
    optimize(study, obj, n_trials=4)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned
    for t in pruned:
        reported = {step: v for step, v in t.intermediate_values.items() if step < len(DEV)}
        assert t.value == pytest.approx(sum(reported.values()) / len(reported))
        assert t.user_attrs["answered"] == len(reported) and t.user_attrs["lm_calls"] >= len(reported)
    assert any(t.user_attrs["lm_calls"] > t.user_attrs["answered"] for t in pruned)  # late answers were left out
    assert study.best_trial.state == optuna.trial.TrialState.COMPLETE and study.best_trial.number == 0


def test_a_repeated_format_is_not_asked_again():
    lm = PlantedLM(DEV, {"template": {"xml": 0.5}}, base=0.3)
    study = study_with(GOOD, GOOD, pruner=make_pruner(enabled=False))
    optimize(study, objective(lm), n_trials=2)
    outcomes = [TrialOutcome.from_trial(t) for t in study.trials]
    first, second = outcomes[:2]
    assert second.duplicate_of == 0 and second.value == first.value and second.lm_calls == 0
    assert study.trials[1].user_attrs[DUPLICATE_OF] == 0
    asked = [o for o in outcomes if o.duplicate_of is None]
    assert len(asked) == 2 and len(lm.calls) == 2 * len(DEV)  # a repeat neither asks nor counts as a trial


def test_a_reference_format_outside_the_space_is_named_in_one_medjp_warning():
    from medjp_agent.errors import MedjpWarning
    from medjp_agent.optimizers.search import enqueue_references

    study = optuna.create_study(direction="maximize")
    with pytest.warns(MedjpWarning, match="'paper-instruction-in-header' is outside the format space: it is not run "
                                          "on dev .*the test split still compares"):
        enqueued = enqueue_references(study, SPACE, ["paper-instruction-in-header"])
    assert enqueued == [] and not study.trials
