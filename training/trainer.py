"""`train`: QLoRA instruction tuning with TRL's ``SFTTrainer`` and a PEFT LoRA adapter.

The recipe is QLoRA's: the base in 4-bit NF4 with double quantization, ``prepare_model_for_kbit_training`` (norms
and embeddings up-cast to float32, input gradients for checkpointing), LoRA on every linear layer, paged 8-bit
AdamW, a cosine schedule with warm-up, gradient accumulation and activation checkpointing. The loss covers only
the completion: TRL masks prompt tokens of prompt/completion rows.

A run folder holds ``checkpoint-N/`` (adapter-only checkpoints with optimizer, scheduler and RNG state, so a run
resumed from the newest complete one continues exactly: see checkpoints.py), ``metrics.jsonl``,
``train_config.yaml`` and ``data.json`` (what a resume must match), and the final ``adapter/``:
``adapter_model.safetensors`` with the tokenizer, the resolved ``train_config.yaml``, ``format.yaml`` (the prompt
format, usable as ``medjp eval --format``) and ``train_manifest.json`` (data fingerprint, losses, versions).
Under ``accelerate launch`` every process runs :func:`train`; distributed.py says what changes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from medjp_agent.naming import counted
from medjp_agent.paths import folder_write_error

from .checkpoints import checkpoints, newest_complete, step_of
from .config import TrainConfig, TrainConfigError
from .data import TrainingData, build_training_data, check_contamination, load_training_questions
from .distributed import Launch
from .fsdp import fsdp_ready
from .weights import refuse_pickle_weights

#: Fields a resumed run may change: how long it runs and how it checkpoints and logs, not what it trains (whether
#: bad records are skipped changes the data only if some are, and the data's fingerprint is compared).
RESUMABLE_CHANGES = ("epochs", "max_steps", "save_steps", "save_total_limit", "logging_steps", "lenient")
#: Path fields a resume does not compare as text, since a resume from another working directory spells them
#: differently: ``out`` is the folder being resumed, ``data`` is compared by the fingerprint of the rendered examples,
#: and ``eval_data`` only feeds the contamination check, which runs again.
PATHS_NOT_COMPARED = ("out", "data", "eval_data")


@dataclass(frozen=True)
class TrainManifest:
    """What a finished run produced, saved as ``train_manifest.json`` next to the adapter."""

    adapter: str
    base_model: str
    quantized: bool
    format: str
    data: dict[str, Any]
    steps: int
    first_loss: float | None
    final_loss: float | None
    eval_loss: float | None
    tokens: int
    seconds: float
    resumed_from: str | None = None
    contamination: tuple[str, ...] = ()
    world_size: int = 1
    distributed: str = "no"  # "DDP" or "FSDP" when several processes trained
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=2), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: Path) -> TrainManifest:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**raw, "contamination": tuple(raw.get("contamination", ()))})


def train(cfg: TrainConfig, *, resume: bool = False, console: Console | None = None,
          callbacks: Sequence[Any] = ()) -> TrainManifest:
    """Train a LoRA adapter as ``cfg`` says and save it under ``cfg.out/adapter``.

    Args:
        cfg: The run's configuration.
        resume: Continue from the last checkpoint in ``cfg.out`` (start fresh when there is none). Without it, a
            folder that already holds checkpoints is refused rather than mixed with; either way, so is a non-empty
            folder that is not a run's, and a finished run's whose checkpoints are gone (its adapter would be lost).
        console: Where progress and warnings go.
        callbacks: Extra ``transformers.TrainerCallback`` objects.

    Raises:
        TrainConfigError: a bad value, a missing data file, a target module the model lacks, contamination under
            ``contamination: error``, or a resume whose data or settings differ from the interrupted run.
        LaunchError: an ``accelerate launch`` config that cannot run on this host.
        PickleWeightsError: a base model folder with pickle weights only.
    """
    from .progress import MetricsLog, RichProgress

    launch = Launch.detect()
    console = (console or Console()) if launch.main else Console(quiet=True)  # rank 0 speaks for the launch
    notes = launch.notes(cfg)
    if launch.sharded:
        cfg, changes = fsdp_ready(cfg)
        notes += changes
    for note in notes:
        console.print(f"[yellow]{note}[/]", highlight=False)
    model_path = _base_model(cfg)
    refuse_pickle_weights(model_path, "base model")
    # Here, not in TrainConfig: proving a folder writable creates it, which building a config must not do (nor a
    # refusal above); still before the model loads.
    if reason := folder_write_error(Path(cfg.out)):
        raise TrainConfigError("out", f"{cfg.out}: cannot write a run folder here ({reason})")
    questions = load_training_questions(cfg)
    if questions.skipped:
        console.print(f"[yellow]skipped {counted(len(questions.skipped), 'bad record')} of {escape(questions.source)} "
                      f"(lenient), each listed in {escape(cfg.out)}/data.json; first: "
                      f"{escape(questions.skipped[0])}[/]",
                      highlight=False, soft_wrap=True)
    contamination = _contamination(cfg, questions, console)
    data = build_training_data(cfg, questions)
    resolved = cfg.replace(model=model_path, format=data.format.to_dict())
    out = Path(cfg.out)
    checkpoint = _resume_point(out, resolved, data, resume, console, launch.main)
    metrics = MetricsLog(out / "metrics.jsonl")
    trainer = build_trainer(resolved, data, model_path, launch, [metrics, RichProgress(console), *callbacks])
    main = trainer.is_world_process_zero()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved.to_yaml(out / "train_config.yaml")
        (out / "data.json").write_text(json.dumps(data.summary(), ensure_ascii=False, indent=2), encoding="utf-8")
        metrics.keep_until(step_of(checkpoint) if checkpoint else 0)
        _warn_truncation(data, trainer.processing_class, cfg.max_length, console)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.monotonic() - started

    adapter = out / "adapter"
    if getattr(trainer, "is_fsdp_enabled", False):
        # Checkpoints stay sharded; the final adapter is gathered into one ordinary safetensors file.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter))
    manifest = _manifest(trainer, resolved, data, adapter, seconds, checkpoint, contamination)
    if main:
        trainer.processing_class.save_pretrained(str(adapter))
        resolved.to_yaml(adapter / "train_config.yaml")
        (adapter / "format.yaml").write_text(data.format.to_yaml(), encoding="utf-8")
        manifest.to_json(adapter / "train_manifest.json")  # written last: its presence marks a complete adapter
    return manifest


# -- pieces -----------------------------------------------------------------------------------------------------------
def _base_model(cfg: TrainConfig) -> str:
    if cfg.model:
        return _absolute_if_local(cfg.model)
    from medjp_agent.lm.tiny import ensure_tiny_model

    return str(ensure_tiny_model())


def _absolute_if_local(model: str) -> str:
    """A local model folder as an absolute path (lexically: a symlinked model stays as named), so a resume or a
    merge from another working directory finds the same base; anything else is a hub id, kept as it is."""
    return os.path.abspath(model) if Path(model).exists() else model


def _contamination(cfg: TrainConfig, questions: Any, console: Console) -> tuple[str, ...]:
    """Check the training questions against every evaluation set; warn, or stop under ``contamination: error``."""
    found = tuple(r.message() for r in check_contamination(cfg, questions) if not r.clean)
    if found and cfg.contamination == "error":
        raise TrainConfigError("data", "training data overlaps evaluation data: " + "; ".join(found))
    for message in found:
        console.print(f"[bold yellow]contamination warning:[/] {message}", highlight=False)
    return found


def _resume_point(out: Path, resolved: TrainConfig, data: TrainingData, resume: bool, console: Console,
                  main: bool = True) -> str | None:
    """The newest complete checkpoint to resume from (see checkpoints.py), after checking the run matches."""
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    saved_steps = checkpoints(out)
    if held and not (out / "train_config.yaml").is_file() and not saved_steps:
        # Not a run folder (a run writes train_config.yaml before anything else): a run would overwrite its
        # README.md (TRL's model card), data.json or metrics.jsonl, and mix its own files with the rest.
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise TrainConfigError("out", f"{out} is not empty ({shown}) and is not a training run folder: choose a new "
                               "or empty --out")
    if saved_steps and not resume:
        raise TrainConfigError("out", f"{out} already holds checkpoints; pass --resume to continue that run, or "
                               "choose another --out")
    if (out / "adapter").exists() and not saved_steps:
        # A finished run whose checkpoints were deleted: training again, resumed or not, starts at step 0 and
        # would replace its adapter and its metrics.
        raise TrainConfigError("out", f"{out} already holds a trained adapter ({out / 'adapter'}) and no checkpoint "
                               "to continue from: choose another --out")
    if not resume:
        return None
    last, notes = newest_complete(out, set_aside=main)
    for note in notes:
        console.print(f"[yellow]{note}[/]", highlight=False)
    if not last:
        if out.is_dir():
            console.print(f"no complete checkpoint in {out}: starting from step 0", highlight=False)
        return None
    saved = TrainConfig.from_yaml(out / "train_config.yaml").to_dict()
    if saved.get("model"):
        # Runs started before local models were saved absolute hold the path as typed, relative to where it ran.
        saved["model"] = _absolute_if_local(saved["model"])
    for name, value in resolved.to_dict().items():
        if name not in RESUMABLE_CHANGES + PATHS_NOT_COMPARED and saved.get(name) != value:
            raise TrainConfigError(name, f"differs from the run being resumed in {out} ({saved.get(name)!r} there, "
                                   f"{value!r} now)")
    saved_print = json.loads((out / "data.json").read_text(encoding="utf-8"))["fingerprint"]
    if saved_print != data.fingerprint:
        raise TrainConfigError("data", f"the rendered training data changed since the run in {out} started "
                               f"(fingerprint {saved_print}, now {data.fingerprint})")
    console.print(f"resuming from {last}", highlight=False)
    return str(last)


def load_base_model(cfg: TrainConfig, path: str, launch: Launch = Launch()) -> Any:
    """The base model ready for k-bit LoRA training (4-bit NF4 unless ``cfg.quantize`` is off), from safetensors."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = getattr(torch, cfg.compute_dtype)
    kwargs: dict[str, Any] = {"dtype": compute, "trust_remote_code": cfg.trust_remote_code, "use_safetensors": True,
                              "device_map": launch.device_map(cfg)}
    if cfg.quantize:
        storage = getattr(torch, cfg.quant_storage)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=storage)
        if storage.is_floating_point:
            kwargs["dtype"] = storage  # FSDP-QLoRA: the load dtype must equal the packed weights' storage dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.quantize:
        from medjp_agent.lm.bnb_cpu import guard_training

        guard_training(model)  # bitsandbytes' fused CPU kernel has no backward: validation would cut gradients
    if cfg.quantize and not launch.sharded:
        # Not under FSDP: its float32 up-cast would mix dtypes inside one sharded unit (see fsdp.py). Checkpointing
        # is left to the trainer (``activation_checkpointing``), which also enables the inputs' gradients for it.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def check_target_modules(model: Any, targets: Sequence[str]) -> None:
    """Every name in ``targets`` must end the name of at least one linear layer (PEFT's matching rule)."""
    import torch

    if tuple(targets) == ("all-linear",):
        return
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in linear):
            leaves = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise TrainConfigError("target_modules", f"{target!r} matches no linear layer of the model; its linear "
                                   f"layers are {', '.join(leaves)} (or use 'all-linear')")


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    targets = "all-linear" if tuple(cfg.target_modules) == ("all-linear",) else list(cfg.target_modules)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def sft_config(cfg: TrainConfig, data: TrainingData, launch: Launch = Launch()) -> Any:
    """TRL's ``SFTConfig`` for ``cfg``; unknown optimizer or scheduler names fail naming the field."""
    import torch
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames
    from trl import SFTConfig

    for name, kind in (("optim", OptimizerNames), ("lr_scheduler", SchedulerType)):
        try:
            kind(getattr(cfg, name))
        except ValueError:
            raise TrainConfigError(name, f"{getattr(cfg, name)!r} is not one of {', '.join(k.value for k in kind)}"
                                   ) from None
    evaluate = bool(data.validation)
    return SFTConfig(
        output_dir=cfg.out, seed=cfg.seed, report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on CPU unless told it is meant
        max_steps=cfg.max_steps, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a value below 1 as a share of the steps
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
        bf16=cfg.compute_dtype == "bfloat16", fp16=cfg.compute_dtype == "float16",
        # Non-reentrant: under DDP the reentrant kind marks a LoRA weight ready twice and fails on the first step.
        activation_checkpointing=launch.trainer_checkpointing(cfg),
        activation_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every forward: nothing to search for
        max_length=cfg.max_length, packing=cfg.packing,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluate else "no", eval_steps=cfg.save_steps if evaluate else None,
    )


def build_trainer(cfg: TrainConfig, data: TrainingData, model_path: str, launch: Launch = Launch(),
                  callbacks: Sequence[Any] = ()) -> Any:
    """The ``SFTTrainer`` :func:`train` runs: tokenizer, k-bit base, LoRA and SFT settings from ``cfg``."""
    import torch
    from transformers import PrinterCallback

    from medjp_agent.lm.loading import load_tokenizer

    from .progress import quiet_hf_progress
    from .sft_trainer import SFTTrainer

    args = sft_config(cfg, data, launch)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    with quiet_hf_progress():
        model = load_base_model(cfg, model_path, launch)
        check_target_modules(model, cfg.target_modules)
        train_set, validation_set = data.datasets()
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=validation_set,
                             processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # RichProgress prints the logs
    if cfg.quantize and cfg.compute_dtype != "bfloat16":
        # TRL stores a QLoRA adapter in bf16 (the paper's choice); with another compute dtype keep the adapter in
        # it, or every LoRA matmul runs in bf16, which CPUs without bf16 units emulate many times slower.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(getattr(torch, cfg.compute_dtype))
    return trainer


def _warn_truncation(data: TrainingData, tokenizer: Any, max_length: int, console: Console) -> None:
    """Rows longer than ``max_length`` lose the end of their completion (the answer line): say so."""
    if data.format.uses_chat:
        texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in data.train]
    else:
        texts = [r["prompt"] + r["completion"] for r in data.train]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    cut = sum(n > max_length for n in lengths)
    if cut:
        console.print(f"[yellow]warning:[/] {cut} of {len(lengths)} examples exceed max_length={max_length} tokens "
                      f"(longest {max(lengths)}) and lose the end of their answer", highlight=False)



def _manifest(trainer: Any, cfg: TrainConfig, data: TrainingData, adapter: Path, seconds: float,
              checkpoint: str | None, contamination: tuple[str, ...]) -> TrainManifest:
    state, processes = trainer.state, trainer.accelerator.num_processes
    history = state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    return TrainManifest(
        adapter=str(adapter), base_model=str(cfg.model), quantized=cfg.quantize, format=data.format.name,
        data=data.summary(), steps=state.global_step, first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None, eval_loss=evals[-1] if evals else None,
        tokens=int(tokens[-1]) if tokens else 0, seconds=round(seconds, 2), resumed_from=checkpoint,
        contamination=contamination, world_size=processes,
        distributed="FSDP" if getattr(trainer, "is_fsdp_enabled", False) else "DDP" if processes > 1 else "no",
        versions={p: version(p) for p in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes")},
    )
