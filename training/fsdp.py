"""Multi-GPU QLoRA with FSDP: the ``accelerate`` config file, and what training changes under it.

FSDP-QLoRA (Answer.AI with bitsandbytes; the PEFT and bitsandbytes guides) shards a 4-bit base across GPUs. Run::

    medjp train fsdp-config --num-processes 8 --out fsdp.yaml
    accelerate launch --config_file fsdp.yaml --no_python medjp train --config train.yaml

``--cpu`` writes the same recipe for a CPU host (no weight broadcast, no offload, ``use_cpu``), to rehearse a
launch (machines, ranks, data split, checkpoints, resume) before renting GPUs. accelerate shards only on
accelerators, so on CPU the processes run as DDP over gloo, and ``medjp train`` says so at start-up.

Keys of the generated file that FSDP-QLoRA depends on (see :data:`FSDP_QLORA_KEYS`):

- ``distributed_type: FSDP`` with ``fsdp_sharding_strategy: FULL_SHARD``: parameters, gradients and optimizer
  state are sharded across the processes.
- ``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP``: one FSDP unit per decoder layer (the model's
  ``_no_split_modules``).
- ``fsdp_use_orig_params: false``: required for the memory savings with PEFT (frozen and trainable parameters
  are flattened separately).
- ``fsdp_cpu_ram_efficient_loading: true`` with ``fsdp_sync_module_states: true``: only rank 0 reads the
  checkpoint, the others receive the weights by broadcast, so a 70B base is not loaded 8 times into CPU RAM.
- ``fsdp_offload_params``: keep sharded parameters in CPU RAM (fits 70B on 2x24 GB, slower); ``false`` on 80 GB
  cards.
- ``fsdp_state_dict_type: SHARDED_STATE_DICT``: each rank saves its shard of a checkpoint; the final adapter is
  gathered when saved.
- ``fsdp_activation_checkpointing: true``: FSDP checkpoints each decoder layer inside its sharded unit
  (non-reentrant), as transformers recommends under FSDP, instead of the Trainer, whose checkpointing would
  all-gather every layer a second time in the backward pass.

What ``medjp train`` changes when it finds itself under FSDP (:func:`fsdp_ready`):

- packed 4-bit weights are stored in the compute dtype, ``bfloat16`` by default (``bnb_4bit_quant_storage``), and
  the model is loaded in that same dtype, because FSDP only shards floating-point tensors of one dtype;
- ``prepare_model_for_kbit_training`` is skipped: its float32 up-cast of norms and embeddings would mix dtypes
  inside one FSDP unit;
- ``paged_adamw_8bit`` (any bitsandbytes 8-bit optimizer) becomes ``adamw_torch``: its state fails to save in
  sharded checkpoints; and the Trainer leaves activation checkpointing to FSDP (see above).

Merging an adapter is unsupported under FSDP: run ``medjp train merge`` afterwards, in a single process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig

#: The FSDP plugin settings FSDP-QLoRA needs (the PEFT guide's ``fsdp_config_qlora.yaml``).
FSDP_QLORA_KEYS: dict[str, Any] = {
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "fsdp_backward_prefetch": "BACKWARD_PRE",
    "fsdp_cpu_ram_efficient_loading": True,
    "fsdp_forward_prefetch": False,
    "fsdp_offload_params": True,
    "fsdp_sharding_strategy": "FULL_SHARD",
    "fsdp_state_dict_type": "SHARDED_STATE_DICT",
    "fsdp_sync_module_states": True,
    "fsdp_use_orig_params": False,
    "fsdp_activation_checkpointing": True,
}

#: What a CPU host cannot do: broadcast the weights from a device (so every rank reads them), or offload.
CPU_CHANGES: dict[str, Any] = {
    "fsdp_cpu_ram_efficient_loading": False,
    "fsdp_sync_module_states": False,
    "fsdp_offload_params": False,
}


def fsdp_accelerate_config(num_processes: int = 2, *, num_machines: int = 1, machine_rank: int = 0,
                           offload_params: bool = True, main_process_ip: str | None = None,
                           main_process_port: int | None = None, cpu: bool = False) -> dict[str, Any]:
    """An ``accelerate launch --config_file`` mapping for FSDP-QLoRA on ``num_processes`` GPUs in all (with
    ``cpu``: processes on CPU hosts, see the module docstring).

    Mixed precision stays ``'no'`` in accelerate: the bf16 compute comes from the 4-bit layers and from the
    training arguments, as in the PEFT guide.
    """
    if num_processes < 1 or num_machines < 1:
        raise ValueError("num_processes and num_machines must be at least 1")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "FSDP",
        "downcast_bf16": "no",
        "fsdp_config": {**FSDP_QLORA_KEYS, "fsdp_offload_params": offload_params, **(CPU_CHANGES if cpu else {})},
        "machine_rank": machine_rank,
        "main_training_function": "main",
        "mixed_precision": "no",
        "num_machines": num_machines,
        "num_processes": num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": cpu,
    }
    if main_process_ip:
        config["main_process_ip"] = main_process_ip
    if main_process_port:
        config["main_process_port"] = main_process_port
    return config


def write_fsdp_config(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`fsdp_accelerate_config` as YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fsdp_accelerate_config(**kwargs), sort_keys=False), encoding="utf-8")
    return path


def under_fsdp() -> bool:
    """True inside a process started by ``accelerate launch`` with an FSDP config (which on CPU runs as DDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def fsdp_ready(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``cfg`` adjusted for FSDP-QLoRA (see the module docstring), and one note per change made."""
    changes: dict[str, Any] = {}
    if cfg.quantize and cfg.quant_storage != cfg.compute_dtype:
        changes["quant_storage"] = cfg.compute_dtype
    if "8bit" in cfg.optim:
        changes["optim"] = "adamw_torch"
    notes = [f"FSDP: {name} {getattr(cfg, name)} -> {value}" for name, value in changes.items()]
    return cfg.replace(**changes), notes
