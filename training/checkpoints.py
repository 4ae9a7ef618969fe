"""Which ``checkpoint-N/`` folders of a run a resume may start from.

A kill while the ``Trainer`` saves leaves a half-written ``checkpoint-N/``: the adapter without the trainer state,
or a torn file. The Trainer writes the adapter first and ``trainer_state.json`` last, so a checkpoint is complete
when its trainer state parses, names step N, and its adapter weights are there. A resume starts from the newest
complete one, and moves the torn ones aside (``incomplete-checkpoint-N/``, kept for inspection): left in place,
the Trainer's rotation (``save_total_limit``) would count a torn folder with a higher step as the newest
checkpoint and delete complete ones instead.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: The adapter of a checkpoint: one safetensors file, or FSDP's sharded state dict folder.
ADAPTER_FILES = ("adapter_model.safetensors", "pytorch_model_fsdp_0")


def checkpoints(out: Path) -> list[Path]:
    """The run's ``checkpoint-N/`` folders, newest first."""
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=step_of, reverse=True)


def step_of(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def incomplete_reason(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (killed while saving), or None when it is complete."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return "trainer_state.json is torn"
    if step != step_of(checkpoint):
        return f"trainer_state.json is for step {step}"
    if not any((checkpoint / name).exists() for name in ADAPTER_FILES):
        return "no adapter weights (adapter_model.safetensors)"
    return None


def newest_complete(out: Path, set_aside: bool = False) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint in ``out``, and one note per newer incomplete one.

    With ``set_aside`` (rank 0 only), each incomplete one newer than it is renamed ``incomplete-checkpoint-N``.
    """
    notes = []
    for checkpoint in checkpoints(out):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            return checkpoint, notes
        note = f"{checkpoint.name} is incomplete ({reason}: killed while saving?)"
        if set_aside:
            aside = checkpoint.with_name("incomplete-" + checkpoint.name)
            shutil.rmtree(aside, ignore_errors=True)  # a torn copy from an earlier kill at the same step
            checkpoint.rename(aside)
            note += f"; moved to {aside.name}"
        notes.append(note)
    return None, notes
