"""The offline demo's adapter: the tiny random Llama, QLoRA-trained briefly to answer in an exam format.

A random model writes noise, so no answer parses and every format scores zero. A short QLoRA run on the bundled
USMLE-JP-style set, rendered in the demo's format with answer-only targets, teaches it the answer line (``答え：x``
then EOS); its choices stay chance-level, but they parse, so a format search has something to compare. Answer-only
targets keep the run short on a CPU and the generations a few tokens long.

The demo trains in :data:`DEMO_FORMAT`, a labelled format, not in the paper's (``medjp train``'s default): there the
answer is a choice's whole text, which 40 steps do not teach a random model (loss 10 → 4.8; it learns to stop at
once, and no answer parses), while a label line is learnt (loss 10 → 0.4) and also parses in other formats.

The adapter is cached under ``medjp_home()`` keyed by the format, the config and the tiny model's fingerprint, so
the second call returns at once; an interrupted build resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from medjp_agent.signatures import PromptFormat, resolve_format
from rich.console import Console

from .config import TRAIN_SAMPLE, TrainConfig

#: Small and fast on a CPU: float32 compute (CPUs without bf16 units emulate it slowly), no activation
#: checkpointing (the tiny model needs no memory saving), a high learning rate, answer-only targets. Every question
#: is rendered bare and with the format's demos: trained at one prompt length only, the random model ties the
#: answer line to absolute positions and falls silent on exam prompts shorter than its training prompts.
DEMO_CONFIG = TrainConfig(
    data=TRAIN_SAMPLE, target="answer", shots=(0, -1), validation_fraction=0.0, compute_dtype="float32",
    gradient_checkpointing=False, lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=5e-3, warmup_ratio=0.0,
    batch_size=4, grad_accum=1, max_steps=40, save_steps=20, save_total_limit=1, logging_steps=5,
)


#: The format the demo's adapter is trained in (see the module's docstring for why it is not the paper's).
DEMO_FORMAT = "alpaca-labelled-in-header"


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block.

    The tiny model's matrices are too small for threads to pay off (about 15% faster with two idle cores), while
    OpenMP threads spin-waiting for a core another process holds make every step 5-30 times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_adapter_dir(fmt: PromptFormat, config: TrainConfig = DEMO_CONFIG) -> Path:
    """Where the demo adapter for ``fmt`` and ``config`` is (or will be) cached."""
    from medjp_agent.lm.fingerprint import fingerprint
    from medjp_agent.lm.tiny import ensure_tiny_model
    from medjp_agent.paths import medjp_home

    key = json.dumps([config.replace(format=fmt.to_dict(), out="").to_dict(), fingerprint(ensure_tiny_model())],
                     sort_keys=True, ensure_ascii=False)
    return medjp_home() / "demo-adapters" / f"{fmt.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}" / "adapter"


def ensure_demo_adapter(fmt: str | PromptFormat = DEMO_FORMAT, *,
                        config: TrainConfig = DEMO_CONFIG, console: Console | None = None) -> Path:
    """The cached demo adapter for ``fmt`` (a named format, a format file or a PromptFormat), trained if missing.

    Safe when several processes ask at once: one trains, the others wait for it.
    """
    from filelock import FileLock

    from .trainer import train

    prompt_format = resolve_format(fmt)
    adapter = demo_adapter_dir(prompt_format, config)
    done = adapter / "train_manifest.json"  # written last by train()
    if done.exists():
        return adapter
    run = adapter.parent
    run.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run) + ".lock"):
        if not done.exists():
            with single_thread():
                train(config.replace(format=prompt_format.to_dict(), out=str(run)), resume=True, console=console)
    return adapter
