"""`TrainConfig`: every knob of a QLoRA run in one frozen record, documented field by field.

The same record comes from a YAML file, from ``medjp train`` flags (one flag per field, generated from this class)
or from Python, and is saved, resolved, next to the adapter it produced. Validation happens on construction and
every error names the field (and the file it came from), e.g. ``train.yaml: TrainConfig.lora_r: must be at least 1``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from medjp_agent.data.fields import type_problem
from medjp_agent.errors import SEED_RULE, SEEDS
from medjp_agent.suggest import did_you_mean

Target = Literal["explanation", "answer"]
Dtype = Literal["bfloat16", "float16", "float32"]
Storage = Literal["uint8", "bfloat16", "float16", "float32"]
ContaminationPolicy = Literal["warn", "error"]

#: The bundled USMLE-JP-style training set (60 original questions with explanations).
TRAIN_SAMPLE = "usmle-jp-sample"


class TrainConfigError(ValueError):
    """A bad value of one :class:`TrainConfig` field; the message starts with ``TrainConfig.<field>:``."""

    def __init__(self, name: str, message: str, source: str = ""):
        self.field, self.detail = name, message
        super().__init__(f"{source + ': ' if source else ''}TrainConfig.{name}: {message}")


def _opt(default: Any, help: str, section: str) -> Any:
    """A field with its user documentation; ``section`` groups the generated CLI flags."""
    kind = {"default_factory": lambda: dict(default)} if isinstance(default, dict) else {"default": default}
    return field(**kind, metadata={"help": help, "section": section})


@dataclass(frozen=True)
class TrainConfig:
    """A QLoRA instruction-tuning run: data, base model, LoRA, optimisation and output.

    The defaults follow the QLoRA recipe (NF4 base with double quantization and bf16 compute, LoRA on every linear
    layer, paged 8-bit AdamW, cosine schedule with warm-up, gradient checkpointing). Examples are rendered in the
    evaluation's own prompt format, so the model is trained on exactly the text it is tested on.

    Example:
        >>> cfg = TrainConfig.from_yaml("train.yaml").replace(max_steps=100)
        >>> cfg.to_yaml("resolved.yaml")
    """

    # -- data ----------------------------------------------------------------------------------------------------
    data: str = _opt(TRAIN_SAMPLE, "Training questions: a USMLE-JP/MedQA JSONL file (question, options, answer_idx, "
                     f"explanation), a JSONL/CSV file read with `columns`, or {TRAIN_SAMPLE!r} (the bundled set).",
                     "Data")
    columns: dict[str, str] = _opt({}, "Column mapping FIELD=COLUMN for a generic JSONL/CSV file (see `medjp eval "
                                   "--column`); empty reads USMLE-JP/MedQA rows.", "Data")
    format: str | dict[str, Any] = _opt("paper-instruction-in-header", "The evaluation's prompt format the examples "
                                        "are rendered in: a named format, a YAML/JSON format file (FILE or FILE:NAME)"
                                        ", or (in YAML) a mapping of PromptFormat fields.", "Data")
    shots: tuple[int, ...] = _opt((0,), "Demonstrations inside each training prompt, picked from the bundled exemplars "
                                  "the way the format picks them; -1 is the format's own number. Several values "
                                  "render every question once per value (e.g. 0 and -1), so the adapter does not "
                                  "depend on where in the context the question sits.", "Data")
    target: Target = _opt("explanation", "What the model learns to write: 'explanation' (the explanation as its "
                          "reasoning, then the answer line) or 'answer' (the answer line only; shorter and faster). "
                          "The paper's formats answer with the choice text only, as its harness expects, either way.",
                          "Data")
    lenient: bool = _opt(False, "Skip bad records of `data` instead of stopping at the first; each is listed, with "
                         "its file, line and reason, in the run's data.json and the adapter's manifest.", "Data")
    validation_fraction: float = _opt(0.1, "Share of the questions held out to report a validation loss (0: none).",
                                      "Data")
    split_seed: int = _opt(0, "Seed of the hash-based train/validation split.", "Data")
    eval_data: tuple[str, ...] = _opt(("sample",), "Evaluation sets the training questions are checked against for "
                                      "overlap (IgakuQA folders, files, or 'sample'); IgakuQA must never be "
                                      "trained on.", "Data")
    contamination: ContaminationPolicy = _opt("warn", "What an overlap with an evaluation set does: 'warn' and "
                                              "train, or 'error' and stop.", "Data")
    overlap_ngram: int = _opt(10, "Length in characters of the n-grams compared by the contamination check.", "Data")
    overlap_threshold: float = _opt(0.5, "Share of an evaluation question's n-grams found in one training question "
                                    "above which the pair is reported.", "Data")

    # -- model ---------------------------------------------------------------------------------------------------
    model: str | None = _opt(None, "Base model: hub id or local folder. Default: the embedded tiny random Llama.",
                             "Model")
    quantize: bool = _opt(True, "Load the base in 4-bit NF4 with double quantization (QLoRA). Off trains LoRA on a "
                          "base in `compute_dtype`.", "Model")
    compute_dtype: Dtype = _opt("bfloat16", "dtype of the 4-bit layers' matmuls and of the unquantized base "
                                "(float16 on GPUs without bf16; float32 is much faster on CPUs without bf16 units).",
                                "Model")
    quant_storage: Storage = _opt("uint8", "Storage dtype of packed 4-bit weights; FSDP-QLoRA needs a float type "
                                  "equal to the load dtype (bfloat16), which `medjp train` sets under FSDP.",
                                  "Model")
    trust_remote_code: bool = _opt(False, "Allow model code from the hub.", "Model")

    # -- LoRA ----------------------------------------------------------------------------------------------------
    lora_r: int = _opt(16, "LoRA rank: the inner dimension of each low-rank update (capacity and memory grow with it).",
                       "LoRA")
    lora_alpha: int = _opt(32, "LoRA scaling numerator (the update is scaled by alpha / r).", "LoRA")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA input.", "LoRA")
    target_modules: tuple[str, ...] = _opt(("all-linear",), "Module names (suffixes) that get LoRA; 'all-linear' is "
                                           "every linear layer except the output head.", "LoRA")

    # -- optimisation --------------------------------------------------------------------------------------------
    learning_rate: float = _opt(2e-4, "Peak learning rate.", "Optimisation")
    optim: str = _opt("paged_adamw_8bit", "transformers optimizer name; paged 8-bit AdamW by default (non-paged on "
                      "CPU; adamw_torch under FSDP).", "Optimisation")
    lr_scheduler: str = _opt("cosine", "transformers scheduler name (cosine, linear, constant, ...).", "Optimisation")
    warmup_ratio: float = _opt(0.03, "Share of the steps spent warming the learning rate up from 0.", "Optimisation")
    weight_decay: float = _opt(0.0, "AdamW weight decay.", "Optimisation")
    max_grad_norm: float = _opt(0.3, "Gradient clipping norm (QLoRA's 0.3; 0: no clipping).", "Optimisation")
    batch_size: int = _opt(4, "Sequences per device per micro-batch.", "Optimisation")
    grad_accum: int = _opt(4, "Micro-batches accumulated per optimizer step.", "Optimisation")
    epochs: float = _opt(3.0, "Passes over the training split (ignored when `max_steps` is set).", "Optimisation")
    max_steps: int = _opt(-1, "Optimizer steps to run; -1 runs `epochs`.", "Optimisation")
    max_length: int = _opt(2048, "Longest tokenized prompt+completion; longer examples are cut (with a warning).",
                           "Optimisation")
    packing: bool = _opt(False, "Pack several examples into each sequence (padding-free) instead of padding.",
                         "Optimisation")
    gradient_checkpointing: bool = _opt(True, "Recompute activations in the backward pass to save memory "
                                        "(activation checkpointing).", "Optimisation")
    seed: int = _opt(42, "Seed of initialisation, shuffling and dropout.", "Optimisation")

    # -- output --------------------------------------------------------------------------------------------------
    out: str = _opt("runs/train", "Run folder: checkpoints, metrics.jsonl, and the final adapter in out/adapter.",
                    "Output")
    save_steps: int = _opt(50, "Steps between checkpoints (and validation-loss evaluations).", "Output")
    save_total_limit: int = _opt(2, "Checkpoints kept; older ones are deleted.", "Output")
    logging_steps: int = _opt(10, "Steps between logged metrics.", "Output")

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    # -- validation ----------------------------------------------------------------------------------------------
    def _check_types(self) -> None:
        hints = get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            if (problem := _type_problem(hints[f.name], getattr(self, f.name))) is not None:
                raise TrainConfigError(f.name, problem)

    def _check_values(self) -> None:
        positive_ints = ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "save_steps",
                         "save_total_limit", "logging_steps")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise TrainConfigError(name, f"must be at least 1, got {getattr(self, name)}")
        unit_ranges = {"lora_dropout": self.lora_dropout, "validation_fraction": self.validation_fraction,
                       "warmup_ratio": self.warmup_ratio}
        for name, value in unit_ranges.items():
            if not 0 <= value < 1:
                raise TrainConfigError(name, f"must be in [0, 1), got {value}")
        checks = [
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("epochs", self.epochs > 0, "must be positive"),
            ("max_steps", self.max_steps == -1 or self.max_steps > 0, "must be -1 (use epochs) or positive"),
            ("weight_decay", self.weight_decay >= 0, "must not be negative"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must not be negative (0: no clipping)"),
            ("seed", self.seed in SEEDS, SEED_RULE),
            ("shots", bool(self.shots) and all(isinstance(k, int) and -1 <= k <= 8 for k in self.shots),
             "must hold -1 (the format's) or 0..8"),
            ("overlap_ngram", self.overlap_ngram >= 2, "must be at least 2"),
            ("overlap_threshold", 0 < self.overlap_threshold <= 1, "must be in (0, 1]"),
            ("target_modules", bool(self.target_modules) and all(self.target_modules),
             "must name at least one module (or 'all-linear')"),
            ("target_modules", "all-linear" not in self.target_modules or len(self.target_modules) == 1,
             "'all-linear' already names every linear layer and stands alone"),
            ("data", bool(self.data), "no training data given"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise TrainConfigError(name, f"{message}, got {getattr(self, name)!r}")
        self.prompt_format()  # an unknown format fails here, not after the model has loaded

    def prompt_format(self) -> Any:
        """The :class:`~medjp_agent.signatures.PromptFormat` the examples are rendered in."""
        from medjp_agent.signatures import PromptFormat, resolve_format

        try:
            if isinstance(self.format, dict):
                return PromptFormat.from_dict(self.format, source="format")
            return resolve_format(self.format)
        except (ValueError, TypeError) as e:
            raise TrainConfigError("format", str(e)) from None

    # -- (de)serialisation ---------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "") -> TrainConfig:
        """Build from plain data; unknown keys and bad values raise :class:`TrainConfigError` naming the field."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise TrainConfigError(str(key), f"unknown field{did_you_mean(str(key), names)}", source)
        hints = get_type_hints(cls)
        values = {k: _coerce(v, hints[k]) for k, v in data.items()}
        try:
            return cls(**values)
        except TrainConfigError as e:
            raise TrainConfigError(e.field, e.detail, source) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(raw).__name__}")
        return cls.from_dict(raw, source=str(path))

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path



def _type_problem(hint: Any, value: Any) -> str | None:
    """:func:`type_problem`, item by item for the containers: a YAML ``data: 3`` or ``eval_data: [3]`` must stop
    here naming the field, not as a TypeError deep in the run after the model has loaded."""
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return f"expected a list, got {value!r}"
        return next((p for item in value if (p := type_problem(get_args(hint)[0], item)) is not None), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"expected a mapping of FIELD: COLUMN, got {value!r}"
        return next((p for pair in value.items() for v in pair if (p := type_problem(str, v)) is not None), None)
    if any(get_origin(kind) is dict for kind in get_args(hint)):
        # `format`: a name, or a PromptFormat mapping that prompt_format() checks field by field.
        return None if isinstance(value, str | dict) else f"expected a format name or a mapping, got {value!r}"
    return type_problem(hint, value)


def _coerce(value: Any, hint: Any) -> Any:
    """YAML lists (or one scalar) become tuples; ``2e-4`` (a string to YAML 1.1) becomes a float where one is due."""
    if isinstance(value, list):
        return tuple(value)
    if get_origin(hint) is tuple and not isinstance(value, tuple):
        return (value,)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
