"""DSPy optimizers tuning a `MedicalQA` program within one prompt format, behind one small interface.

What each changes in the program (the format adapter renders all of it): ``bootstrap`` demos (from the model's
own correct traces); ``bootstrap-rs`` demos, picking the best of several bootstrapped sets on the dev split;
``mipro`` instructions and demos (its own Optuna TPE study, kept apart from ours); ``copro`` the instruction and the
answer field's prefix (the answer marker); ``gepa`` the instruction, rewritten by a reflection LM from feedback on
failures; ``simba`` demos plus rules appended to the instruction; ``knn`` demos picked per question from the
nearest training questions (KNNFewShot re-runs BootstrapFewShot on every call: about ``k + 1`` LM calls per
question, and nothing of it is saved in the program; the format space's ``knn-tfidf`` demos cost no calls).

The metric is the exam's rule, exact set match (:class:`ExamMetric`); for GEPA it also writes feedback text.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import dspy
from dspy.utils.callback import BaseCallback

from medjp_agent.data import Question
from medjp_agent.errors import SEED_RULE, SEEDS, ConfigError, MedjpWarning, check_settings
from medjp_agent.lm.errors import NotRun
from medjp_agent.scoring import grade
from medjp_agent.signatures import MedicalQA
from medjp_agent.suggest import did_you_mean

Auto = Literal["light", "medium", "heavy"]


@dataclass(frozen=True)
class OptimizerSettings:
    """Budget knobs; each optimizer reads the ones that apply to it.

    Args:
        auto: MIPROv2/GEPA preset (``light`` = MIPROv2's 6 candidates, a valset capped at 100).
        max_demos: Demos per program (bootstrap, bootstrap-rs, mipro, simba) and neighbours for knn.
        candidates: Candidate programs (bootstrap-rs), instructions per round (copro breadth), samples (simba).
        steps: Rounds (copro depth, simba steps).
        max_metric_calls: GEPA's budget in metric calls; replaces ``auto`` when set.
        threads: Questions evaluated at once.
        seed: Seed of the optimizers' sampling.
    """

    auto: Auto = "light"
    max_demos: int = 4
    candidates: int = 4
    steps: int = 2
    max_metric_calls: int | None = None
    threads: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        calls = self.max_metric_calls
        check_settings(("--auto", self.auto, self.auto in get_args(Auto), "must be light, medium or heavy"),
                       ("--max-demos", self.max_demos, self.max_demos >= 0, "must not be negative"),
                       ("--candidates", self.candidates, self.candidates >= 1, "must be at least 1"),
                       ("--steps", self.steps, self.steps >= 1, "must be at least 1"),
                       ("--max-metric-calls", calls, calls is None or calls >= 1, "must be at least 1"),
                       ("--threads", self.threads, self.threads >= 1, "must be at least 1"),
                       ("--seed", self.seed, self.seed in SEEDS, SEED_RULE))


def question_key(question: str, choices: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return question, tuple(choices)


def to_example(q: Question) -> dspy.Example:
    """A question as a DSPy example; the written explanation (when any) is the demo's reasoning."""
    fields: dict[str, Any] = {"question": q.text, "choices": list(q.choices), "answer": ",".join(q.answers)}
    if q.explanation:
        fields["reasoning"] = q.explanation
    return dspy.Example(**fields).with_inputs("question", "choices")


class ExamMetric:
    """The exam's rule as a DSPy metric: 1.0 when the chosen labels are exactly the gold set, else 0.0.

    Questions are looked up by text and choices (examples carry no ids, so demos stay clean). With
    ``feedback=True`` it returns ``dspy.Prediction(score, feedback)`` for GEPA, whose reflection LM reads why an
    answer was wrong: the gold labels, what was missed or added, any 禁忌肢 (forbidden choice) picked, or why the
    completion could not be parsed.
    """

    def __init__(self, questions: Iterable[Question], feedback: bool = False):
        self._questions = {question_key(q.text, q.choices): q for q in questions}
        self.feedback = feedback

    def __call__(self, example: dspy.Example, pred: dspy.Prediction, trace: Any = None, pred_name: str | None = None,
                 pred_trace: Any = None) -> float | dspy.Prediction:
        question = self._questions[question_key(example.question, example.choices)]
        answer = tuple(a for a in str(pred.get("answer") or "").split(",") if a)
        score = 1.0 if grade(question, answer).correct else 0.0
        if not self.feedback:
            return score
        return dspy.Prediction(score=score, feedback=feedback_text(question, answer, pred.get("parse_error")))


def feedback_text(question: Question, answer: tuple[str, ...], parse_error: str | None) -> str:
    """Why an answer earned its score, in words a reflection LM can act on."""
    gold = ",".join(question.answers)
    if parse_error:
        return (f"The answer could not be read ({parse_error}); the gold answer is {gold}. End the response with the "
                "answer marker followed by the chosen label(s) only.")
    result = grade(question, answer)
    if result.correct:
        return f"Correct: {gold}."
    parts = [f"Wrong: answered {','.join(answer) or 'nothing'}, the gold answer is {gold}."]
    missed = sorted(set(question.answers) - set(answer))
    extra = sorted(set(answer) - set(question.answers))
    if question.choices and missed and len(question.answers) > 1:
        parts.append(f"Missed {','.join(missed)}: this question has {len(question.answers)} correct choices.")
    if extra and len(question.answers) > 1:
        parts.append(f"{','.join(extra)} should not have been chosen.")
    if result.forbidden_picked:
        parts.append(f"Picked {','.join(result.forbidden_picked)}, a 禁忌肢 (forbidden choice): choosing it fails "
                     "the exam regardless of the score, so never pick a harmful or contraindicated option.")
    return " ".join(parts)


class TfidfEmbedder:
    """Character n-gram TF-IDF vectors for KNNFewShot, fitted on the first texts it sees (the trainset).

    Character n-grams because Japanese has no spaces and medical terms share kanji and katakana substrings.
    """

    def __init__(self) -> None:
        self._vectorizer: Any = None

    def __call__(self, texts: list[str]) -> Any:
        if self._vectorizer is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), sublinear_tf=True).fit(texts)
        return self._vectorizer.transform(texts).toarray()


@dataclass(frozen=True)
class OptimizerRun:
    """What an optimizer gets: the metrics, the settings and the LM that writes instructions or reflects."""

    metric: ExamMetric
    feedback_metric: ExamMetric
    settings: OptimizerSettings
    proposer: dspy.BaseLM


Compile = Callable[[MedicalQA, list[dspy.Example], list[dspy.Example], OptimizerRun], dspy.Module]


def _bootstrap(student: MedicalQA, train: list[dspy.Example], _val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    k = run.settings.max_demos
    return dspy.BootstrapFewShot(metric=run.metric, max_bootstrapped_demos=k, max_labeled_demos=k).compile(
        student, trainset=train)


def _bootstrap_rs(student: MedicalQA, train: list[dspy.Example], val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    s = run.settings
    return dspy.BootstrapFewShotWithRandomSearch(
        metric=run.metric, max_bootstrapped_demos=s.max_demos, max_labeled_demos=s.max_demos,
        num_candidate_programs=s.candidates, num_threads=s.threads,
    ).compile(student, trainset=train, valset=val)


def _mipro(student: MedicalQA, train: list[dspy.Example], val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    s = run.settings
    optimizer = dspy.MIPROv2(metric=run.metric, prompt_model=run.proposer, auto=s.auto, max_bootstrapped_demos=s.max_demos,
                             max_labeled_demos=s.max_demos, num_threads=s.threads, seed=s.seed)
    return optimizer.compile(student, trainset=train, valset=val, minibatch_size=min(35, len(val)))


def _copro(student: MedicalQA, train: list[dspy.Example], _val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    s = run.settings
    optimizer = dspy.COPRO(prompt_model=run.proposer, metric=run.metric, breadth=max(2, s.candidates), depth=s.steps)
    return optimizer.compile(student, trainset=train, eval_kwargs={"num_threads": s.threads, "display_progress": False})


class _Unanswered(BaseCallback):
    """An LM's calls (as its instance callback) and those it could not answer (:class:`NotRun`), the first one's
    reason kept."""

    def __init__(self) -> None:
        self.calls = self.failed = 0
        self.first = ""
        self._lock = threading.Lock()

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            self.calls += 1
            if isinstance(exception, NotRun):
                self.failed += 1
                self.first = self.first or str(exception)


def _gepa(student: MedicalQA, train: list[dspy.Example], val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    """GEPA goes on when a reflection gets no reply (DSPy counts it as a failed example), so a reflection model too
    small for GEPA's prompts would return the student unchanged without a word: that is warned about."""
    s = run.settings
    budget: dict[str, Any] = {"max_metric_calls": s.max_metric_calls} if s.max_metric_calls else {"auto": s.auto}
    reflection, unanswered = run.proposer.copy(), _Unanswered()
    reflection.callbacks.append(unanswered)
    optimizer = dspy.GEPA(metric=run.feedback_metric, reflection_lm=reflection, num_threads=s.threads, seed=s.seed,
                          **budget)
    program = optimizer.compile(student, trainset=train, valset=val)
    if unanswered.failed:
        warnings.warn(f"gepa: the reflection model could not answer {unanswered.failed} of its {unanswered.calls} "
                      f"calls ({unanswered.first}); the instruction was not rewritten from those. Give an "
                      "instruction-following model with a long context as --reflection-model", MedjpWarning,
                      stacklevel=2)
    return program


def _simba(student: MedicalQA, train: list[dspy.Example], _val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    s = run.settings
    optimizer = dspy.SIMBA(metric=run.metric, bsize=min(32, len(train)), num_candidates=s.candidates,
                           max_steps=s.steps, max_demos=s.max_demos, prompt_model=run.proposer, num_threads=s.threads)
    return optimizer.compile(student, trainset=train, seed=s.seed)


def _knn(student: MedicalQA, train: list[dspy.Example], _val: list[dspy.Example], run: OptimizerRun) -> dspy.Module:
    k = run.settings.max_demos
    # No embedding cache: the embedder is fitted by its first call, which a cache hit would skip.
    embedder = dspy.Embedder(TfidfEmbedder(), caching=False)
    optimizer = dspy.KNNFewShot(k=k, trainset=train, vectorizer=embedder, metric=run.metric,
                                max_bootstrapped_demos=k, max_labeled_demos=k)
    return optimizer.compile(student)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer: how it compiles, whether it sets the predictor's demos, and whether its result can be saved."""

    compile: Compile
    sets_demos: bool
    saveable: bool = True


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "bootstrap": OptimizerSpec(_bootstrap, sets_demos=True),
    "bootstrap-rs": OptimizerSpec(_bootstrap_rs, sets_demos=True),
    "mipro": OptimizerSpec(_mipro, sets_demos=True),
    "copro": OptimizerSpec(_copro, sets_demos=False),
    "gepa": OptimizerSpec(_gepa, sets_demos=False),
    "simba": OptimizerSpec(_simba, sets_demos=True),
    "knn": OptimizerSpec(_knn, sets_demos=True, saveable=False),
}


def optimizer_spec(name: str) -> OptimizerSpec:
    """The optimizer called ``name``; a :class:`~medjp_agent.errors.ConfigError` naming the choices otherwise."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}"
                          f"{did_you_mean(name, OPTIMIZERS)}")
    return OPTIMIZERS[name]


def compile_program(name: str, student: MedicalQA, train: Sequence[Question], val: Sequence[Question],
                    lm: dspy.BaseLM, *, proposer: dspy.BaseLM | None = None,
                    settings: OptimizerSettings = OptimizerSettings()) -> MedicalQA:
    """Run optimizer ``name`` (:data:`OPTIMIZERS`) on ``student`` and return the optimized program.

    ``lm`` answers the exam questions; ``proposer`` (default: ``lm``) writes instructions (MIPROv2, COPRO, SIMBA)
    or reflects (GEPA), and may be a stronger model. A format that picks demos per question (random or kNN) is
    switched to ``fixed`` for optimizers that set demos, or their demos would be ignored.
    """
    spec = optimizer_spec(name)
    if spec.sets_demos and student.format.demo_selection != "fixed":
        warnings.warn(f"{name} sets the demos itself: demo_selection {student.format.demo_selection!r} -> 'fixed'",
                      MedjpWarning, stacklevel=2)
        student = MedicalQA(student.format.replace(demo_selection="fixed"), demo_pool=[], seed=student.seed)
    questions = [*train, *val]
    run = OptimizerRun(ExamMetric(questions), ExamMetric(questions, feedback=True), settings, proposer or lm)
    with dspy.context(lm=lm):
        return spec.compile(student, [to_example(q) for q in train], [to_example(q) for q in val], run)
