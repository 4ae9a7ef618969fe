"""`medjp train`: QLoRA instruction tuning; `medjp train merge` and `medjp train fsdp-config`.

`medjp train` is a command group whose default action trains: with no subcommand it runs the training with the
flags given (``medjp train --config train.yaml --max-steps 200``); ``merge`` and ``fsdp-config`` are its two helper
subcommands. Every field of :class:`~medjp_agent.training.TrainConfig` is a flag of the same name (``lora_r`` is
``--lora-r``), generated from the dataclass with its documentation, so the YAML keys and the flags never drift
apart. A flag given on the command line overrides the same key of ``--config``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import typer

from medjp_agent.training.config import TrainConfig, TrainConfigError

from .options import console, fail, key_values, reports_errors

train_app = typer.Typer(rich_markup_mode="rich")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(f: dataclasses.Field, hint: Any) -> tuple[Any, None]:
    """The typer parameter for one TrainConfig field: an optional flag whose absence keeps the config's value."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
    text = f"{f.metadata['help']} [dim]\\[default: {shown}][/]" if default not in (None, {}) else f.metadata["help"]
    options = {"rich_help_panel": f.metadata["section"], "show_default": False}
    if hint is bool:
        return Annotated[bool | None, typer.Option(f"{_flag(f.name)}/--no-{_flag(f.name)[2:]}", help=text,
                                                   **options)], None
    if get_origin(hint) is tuple or get_origin(hint) is dict:
        more = "KEY=VALUE; " if get_origin(hint) is dict else ""
        item = get_args(hint)[0] if get_origin(hint) is tuple else str
        flag = typer.Option(_flag(f.name), help=f"{text} ({more}repeatable)", **options)
        return Annotated[list[item] | None, flag], None  # type: ignore[valid-type]
    if get_origin(hint) is Literal:
        text = f"{f.metadata['help']} One of: {', '.join(get_args(hint))}. [dim]\\[default: {shown}][/]"
    kind = hint if hint in (int, float) else str
    return Annotated[kind | None, typer.Option(_flag(f.name), help=text, **options)], None


_HINTS = get_type_hints(TrainConfig)
_FIELDS = {f.name: _option(f, _HINTS[f.name]) for f in dataclasses.fields(TrainConfig)}


def _config_value(name: str, value: Any) -> Any:
    """A flag's value as the config field wants it (repeated flags -> tuple, KEY=VALUE flags -> dict)."""
    origin = get_origin(_HINTS[name])
    if origin is dict:
        return key_values(_flag(name), value)
    return tuple(value) if origin is tuple else value


def resolve_config(config: Path | None, flags: dict[str, Any]) -> TrainConfig:
    """``--config`` (or the defaults) with the given flags on top; bad values exit naming the flag or the key."""
    try:
        base = TrainConfig.from_yaml(config) if config else TrainConfig()
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    changes = {name: _config_value(name, value) for name, value in flags.items() if value is not None}
    try:
        return base.replace(**changes)
    except TrainConfigError as e:
        raise fail(f"{_flag(e.field)}: {e.detail}" if e.field in changes else str(e)) from None


def _with_config_flags(func: Any) -> Any:
    """Give the callback one flag per TrainConfig field; it receives them packed as ``flags``."""
    sig = inspect.signature(func, eval_str=True)  # typer reads a replaced signature as is: no string annotations
    params = [p for p in sig.parameters.values() if p.name != "flags"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
               for name, (annotation, default) in _FIELDS.items()]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        return func(flags={name: kwargs.pop(name) for name in _FIELDS}, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


@train_app.callback(invoke_without_command=True)
@reports_errors
@_with_config_flags
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML file of TrainConfig fields; flags override its keys.")
                      ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --out (a fresh start "
                                         "when there is none).")] = False,
    *,
    flags: dict[str, Any],
) -> None:
    """QLoRA-train a LoRA adapter (4-bit NF4 base, paged 8-bit AdamW) and save it with its config and data
    fingerprint. Subcommands: [bold]merge[/] an adapter into its base, write an [bold]fsdp-config[/] for multi-GPU."""
    if ctx.invoked_subcommand:
        return
    cfg = resolve_config(config, flags)
    from medjp_agent.training.distributed import LaunchError, is_main_process
    from medjp_agent.training.trainer import train as run_training
    from medjp_agent.training.weights import PickleWeightsError

    try:
        manifest = run_training(cfg, resume=resume, console=console)
    except (TrainConfigError, LaunchError, PickleWeightsError) as e:
        # Under `accelerate launch` every process meets the same error: rank 0 says it once.
        raise (fail(str(e)) if is_main_process() else typer.Exit(2)) from None
    if not is_main_process():
        return
    losses = f"{manifest.first_loss:.3f} -> {manifest.final_loss:.3f}" if manifest.final_loss is not None else "-"
    eval_loss = f", validation loss {manifest.eval_loss:.3f}" if manifest.eval_loss is not None else ""
    console.print(f"[green]trained[/] {manifest.steps} steps in {manifest.seconds:.0f}s, loss {losses}{eval_loss}; "
                  f"data {manifest.data['fingerprint']}", highlight=False)
    # Evaluated on the base it was trained on: 4-bit when the run quantized it.
    base = f"--model {manifest.base_model}{' --load-in-4bit' if cfg.quantize else ''}"
    console.print(f"[green]adapter[/] {manifest.adapter}\nevaluate it: medjp eval {base} --adapter {manifest.adapter} "
                  f"--format {manifest.adapter}/format.yaml", highlight=False)


@train_app.command("merge")
@reports_errors
def merge(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (RUN/adapter).")],
    out: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    base: Annotated[str | None, typer.Option(help="Base model, when it moved since training (default: the "
                                             "adapter's base_model_name_or_path).")] = None,
    dtype: Annotated[str, typer.Option(help="Precision of the merged weights: bfloat16, float16 or float32.")
                     ] = "bfloat16",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the hub.")
                                 ] = False,
) -> None:
    """Merge an adapter into its full-precision base and save safetensors (e.g. for vLLM). Single process only."""
    from medjp_agent.training.merge import merge_adapter

    try:
        merged = merge_adapter(adapter, out, base=base, dtype=dtype, trust_remote_code=trust_remote_code)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # PickleWeightsError is a ValueError
        raise fail(str(e)) from None
    console.print(f"[green]merged[/] {adapter} into {merged}")


@train_app.command("fsdp-config")
@reports_errors
def fsdp_config(
    out: Annotated[Path, typer.Option(help="Where to write the accelerate config.")] = Path("fsdp.yaml"),
    num_processes: Annotated[int, typer.Option(help="GPUs in all (over every machine).")] = 2,
    num_machines: Annotated[int, typer.Option(help="Machines taking part.")] = 1,
    machine_rank: Annotated[int, typer.Option(help="This machine's rank (0 on the main one).")] = 0,
    offload_params: Annotated[bool, typer.Option("--offload-params/--no-offload-params", help="Keep sharded "
                                                 "parameters in CPU RAM (70B on 2x24 GB; off on 80 GB cards).")] = True,
    main_process_ip: Annotated[str | None, typer.Option(help="Main machine's address (multi-machine).")] = None,
    main_process_port: Annotated[int | None, typer.Option(help="Main machine's port (multi-machine).")] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="For CPU hosts (processes over gloo; runs as DDP, since "
                                      "accelerate shards only on accelerators): rehearse a launch before renting "
                                      "GPUs.")] = False,
) -> None:
    """Write the accelerate config for FSDP-QLoRA over several GPUs (or CPU hosts), and print the launch
    command."""
    from medjp_agent.training.distributed import has_accelerator
    from medjp_agent.training.fsdp import write_fsdp_config

    try:
        path = write_fsdp_config(out, num_processes=num_processes, num_machines=num_machines,
                                 machine_rank=machine_rank, offload_params=offload_params,
                                 main_process_ip=main_process_ip, main_process_port=main_process_port, cpu=cpu)
    except ValueError as e:
        raise fail(str(e)) from None
    console.print(f"[green]wrote[/] {path}\nlaunch: accelerate launch --config_file {path} --no_python medjp train "
                  "--config train.yaml", highlight=False)
    if not cpu and not has_accelerator():
        console.print("[yellow]note:[/] this host has no accelerator, so this GPU config cannot run here (FSDP "
                      "broadcasts the weights from a device); --cpu writes one for a CPU host", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
