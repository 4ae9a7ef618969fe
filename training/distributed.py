"""How `medjp train` runs under ``accelerate launch``: this process's rank, whether FSDP really shards, and the
one line said at start-up when the launch cannot do what its config asks on this host.

Every process of a launch runs the whole of :func:`~medjp_agent.training.trainer.train`; the ``Trainer`` (through
accelerate) splits each global batch across them, averages the gradients, and lets only rank 0 write checkpoints,
logs and the adapter. What is tested on CPU, with 2 processes over gloo (``tests/test_train_distributed.py``):

- DDP with the default settings, 4-bit base and activation checkpointing included: checkpointing is the
  non-reentrant kind (the reentrant kind marks a LoRA weight ready twice under DDP and fails on the first step),
  and DDP does not search for unused parameters (every LoRA weight takes part in every forward).
- An FSDP config on CPU (``medjp train fsdp-config --cpu``): accelerate shards only on accelerators, so it runs
  as DDP, and :meth:`Launch.notes` says so.
- A GPU FSDP config on a host without an accelerator stops with one line (:class:`LaunchError`): its
  ``fsdp_sync_module_states`` needs a device to broadcast from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import TrainConfig


class LaunchError(RuntimeError):
    """The launch cannot run on this host; the message says why and what to run instead."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true")


def is_main_process() -> bool:
    """True in a plain process and in rank 0 of a launch: the one process that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def has_accelerator() -> bool:
    """A CUDA (or other torch accelerator) device is present."""
    import torch

    return bool(torch.accelerator.is_available())


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch, read from the environment ``accelerate launch`` (torchrun) sets."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    fsdp: bool = False  # the accelerate config asks for FSDP
    sync_module_states: bool = False  # ... and for rank 0 to broadcast the weights (needs a device)
    fsdp_checkpointing: bool = False  # ... and for FSDP's own activation checkpointing
    accelerator: bool = False

    @classmethod
    def detect(cls) -> Launch:
        env = os.environ
        return cls(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")),
                   world_size=int(env.get("WORLD_SIZE", "1")), fsdp=_env_flag("ACCELERATE_USE_FSDP"),
                   sync_module_states=_env_flag("FSDP_SYNC_MODULE_STATES"),
                   fsdp_checkpointing=_env_flag("FSDP_ACTIVATION_CHECKPOINTING"), accelerator=has_accelerator())

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP really shards the model: asked for, on an accelerator (accelerate has no FSDP on CPU)."""
        return self.fsdp and self.accelerator

    def notes(self, cfg: TrainConfig) -> list[str]:
        """What a user must know about this launch, one line each; raises :class:`LaunchError` when it cannot run."""
        if self.fsdp and not self.accelerator and self.sync_module_states:
            raise LaunchError("this accelerate config is for GPUs: FSDP with fsdp_sync_module_states broadcasts "
                              "the weights from a device, and this host has no accelerator; for a CPU rehearsal "
                              "write one with `medjp train fsdp-config --cpu`")
        notes = []
        if self.world_size > 1:
            batch = cfg.batch_size * cfg.grad_accum * self.world_size
            notes.append(f"{self.world_size} processes: global batch {batch} (batch_size {cfg.batch_size} x "
                         f"grad_accum {cfg.grad_accum} x {self.world_size})")
        if self.fsdp and not self.accelerator:
            notes.append("FSDP on CPU: accelerate shards only on accelerators, so this runs as DDP over gloo, every "
                         "process holding the whole model (launch, data split, checkpoints and resume are rehearsed;"
                         " sharding is not)")
        if self.sharded and self.fsdp_checkpointing and not cfg.gradient_checkpointing:
            notes.append("FSDP checkpoints activations (fsdp_activation_checkpointing in the accelerate config) "
                         "although gradient_checkpointing is off")
        return notes

    def trainer_checkpointing(self, cfg: TrainConfig) -> bool:
        """Whether the Trainer checkpoints activations: under FSDP with its own checkpointing, FSDP does instead
        (the Trainer's would all-gather every sharded layer a second time in the backward pass)."""
        return cfg.gradient_checkpointing and not (self.sharded and self.fsdp_checkpointing)

    def device_map(self, cfg: TrainConfig) -> dict[str, int] | None:
        """Where a 4-bit base loads under DDP on GPUs: this process's own GPU (bitsandbytes quantizes on load, so
        the Trainer cannot move it afterwards). FSDP places the shards itself; CPU needs nothing."""
        if cfg.quantize and not self.sharded and self.accelerator and self.world_size > 1:
            return {"": self.local_rank}
        return None
