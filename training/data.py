"""Training examples: questions rendered as prompt/completion rows in the evaluation's own prompt format.

The prompt is exactly what ``medjp eval`` sends for the question (the same :class:`Renderer`), and the completion is
exactly what the evaluation's parser expects back: the explanation as the reasoning, then the answer marker line
(or the format's JSON object). Chat formats become TRL conversational rows, so the model's chat template wraps them
as it does at evaluation. TRL appends the EOS token and masks the prompt out of the loss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medjp_agent.signatures import DemoSelector, PromptFormat, Renderer, default_pool

from medjp_agent.data import SAMPLE, SAMPLE_DIR, DataError, Dataset, Question, load_dataset, split
from medjp_agent.naming import counted
from medjp_agent.results import skipped_filter

from .config import TRAIN_SAMPLE, TrainConfig, TrainConfigError
from .contamination import ContaminationReport, find_overlaps

Row = dict[str, Any]


@dataclass(frozen=True)
class TrainingData:
    """The rendered rows of one run, and the fingerprint that identifies them.

    The fingerprint hashes the rendered text itself, so it changes with the questions, the split, the format,
    the shots or the target, and two runs with the same fingerprint saw exactly the same examples.
    """

    train: tuple[Row, ...]
    validation: tuple[Row, ...]
    source: str
    format: PromptFormat
    fingerprint: str
    skipped: tuple[str, ...] = ()

    def datasets(self) -> tuple[Any, Any]:
        """``datasets.Dataset`` objects for TRL (validation is None when nothing was held out)."""
        from datasets import Dataset as HFDataset

        validation = HFDataset.from_list(list(self.validation)) if self.validation else None
        return HFDataset.from_list(list(self.train)), validation

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "fingerprint": self.fingerprint, "n_train": len(self.train),
                "n_validation": len(self.validation), "format": self.format.name, **skipped_filter(self.skipped)}


def load_training_questions(cfg: TrainConfig) -> Dataset:
    """The questions ``cfg.data`` names. Exam folders (IgakuQA layout, the bundled exam) are refused outright."""
    if cfg.data == TRAIN_SAMPLE:
        return load_dataset(SAMPLE_DIR / "usmle_jp.jsonl")
    path = Path(cfg.data)
    if cfg.data == SAMPLE or path.is_dir():
        raise TrainConfigError("data", f"{cfg.data} is an exam in IgakuQA layout: evaluation data, never trained on")
    if not path.is_file():
        raise TrainConfigError("data", f"{path}: no such file")
    try:
        questions = load_dataset(path, columns=cfg.columns or None, lenient=cfg.lenient)
    except DataError as e:
        hint = "" if cfg.lenient else " (--lenient, or `lenient: true` in the config, skips bad records)"
        raise TrainConfigError("data", str(e) + hint) from None
    if not len(questions):
        # Said here: later checks would blame `target` or `validation_fraction` for an empty file.
        skipped = f" ({counted(len(questions.skipped), 'bad record')} skipped)" if questions.skipped else ""
        raise TrainConfigError("data", f"{path}: holds no questions{skipped}")
    return questions


def check_contamination(cfg: TrainConfig, questions: Dataset) -> list[ContaminationReport]:
    """One report per evaluation set in ``cfg.eval_data``."""
    reports = []
    for source in cfg.eval_data:
        try:
            evaluation = load_dataset(source)
        except DataError as e:
            raise TrainConfigError("eval_data", str(e)) from None
        reports.append(find_overlaps(questions.questions, evaluation.questions, eval_source=source,
                                     ngram=cfg.overlap_ngram, threshold=cfg.overlap_threshold))
    return reports


class ExampleRenderer:
    """Renders one question as a training row in one format, with the format's demos when shots are asked for."""

    def __init__(self, fmt: PromptFormat, shots: int, target: str):
        self.fmt, self.target = fmt, target
        self.renderer = Renderer(fmt)
        k = fmt.shots if shots == -1 else shots
        self.selector = DemoSelector(fmt.replace(shots=k), default_pool()) if k else None

    def row(self, q: Question) -> Row:
        demos = self.selector.select(q.text, q.choices) if self.selector else []
        inputs = {"question": q.text, "choices": list(q.choices)}
        reasoning = q.explanation if self.target == "explanation" else ""
        response = self.renderer.response(reasoning, ",".join(q.answers), q.choices)
        if self.fmt.uses_chat:
            return {"prompt": self.renderer.chat_messages(demos, inputs),
                    "completion": [{"role": "assistant", "content": response}]}
        # The prompt ends with the format's tail (for direct answers, the answer marker too); the completion is the
        # rest of what a demo's response block would hold, so no marker is written twice.
        tail = self.renderer.prompt_tail()
        full = self.renderer.response_header() + response
        assert full.startswith(tail), (tail, full)
        return {"prompt": self.renderer.completion_prompt(demos, inputs), "completion": full[len(tail):]}


def build_training_data(cfg: TrainConfig, questions: Dataset) -> TrainingData:
    """Split ``questions`` (by a hash of each id) and render both parts in ``cfg``'s format, once per shots value
    (the split comes first, so every rendering of a question stays on its side)."""
    fmt = cfg.prompt_format()
    if cfg.target == "explanation" and not any(q.explanation.strip() for q in questions.questions):
        raise TrainConfigError("target", f"'explanation', but no question of {questions.source} has one: train "
                                         "with target 'answer', or map an explanation column")
    if cfg.validation_fraction:
        train_qs, validation_qs = split(questions.questions, [1 - cfg.validation_fraction, cfg.validation_fraction],
                                        seed=cfg.split_seed)
    else:
        train_qs, validation_qs = list(questions.questions), []
    if not train_qs:
        raise TrainConfigError("validation_fraction", f"leaves no training questions out of {len(questions)}")
    renderers = [ExampleRenderer(fmt, shots, cfg.target) for shots in cfg.shots]
    train = tuple(r.row(q) for q in train_qs for r in renderers)
    validation = tuple(r.row(q) for q in validation_qs for r in renderers)
    blob = json.dumps({"train": train, "validation": validation}, ensure_ascii=False, sort_keys=True)
    return TrainingData(train, validation, questions.source, fmt, hashlib.sha256(blob.encode()).hexdigest()[:16],
                        questions.skipped)


__all__ = ["ExampleRenderer", "TrainingData", "build_training_data", "check_contamination", "load_training_questions"]
