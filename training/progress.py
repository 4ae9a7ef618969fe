"""What a training run shows and records: a rich progress line and a JSONL log of every logged metric.

Both are plain ``TrainerCallback`` objects, so they work under any launcher; under ``accelerate launch`` only the
main process draws or writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide the tqdm bars of ``datasets`` and ``transformers`` (weight loading, TRL's dataset preparation) inside
    the block: the rich display is the run's progress, and interleaved bars garble it."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_on, transformers_on = not datasets.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


#: The key of the summary line transformers logs when training ends.
SUMMARY_KEY = "train_runtime"


class MetricsLog(TrainerCallback):
    """Appends each log event (loss, learning rate, grad norm, tokens, eval loss...) to ``path`` as one JSON line.

    Every line carries the optimizer ``step``; :meth:`keep_until` drops lines past a checkpoint before a resumed
    run appends, so the log of an interrupted and resumed run reads like one uninterrupted run. That includes a
    finished run's closing summary (``train_runtime``, ``train_loss``, ...): a finished run resumed to train longer
    writes its own at its end.
    """

    def __init__(self, path: Path):
        self.path = path

    def keep_until(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if (record := _record(line)) is not None and record["step"] <= step
                and SUMMARY_KEY not in record]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _record(line: str) -> dict[str, Any] | None:
    """One ``metrics.jsonl`` line with its integer ``step``; None for a blank line or the torn last line a kill in
    the middle of a write leaves, which a resumed run drops rather than stopping on."""
    try:
        record = json.loads(line)
        return {**record, "step": int(record["step"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, without the torn last line a kill mid-write leaves."""
    return [record for line in path.read_text(encoding="utf-8").splitlines() if (record := _record(line)) is not None]


class RichProgress(TrainerCallback):
    """A live bar (step, loss, tokens/s, elapsed, ETA) plus one printed line per log event."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task: Any = None
        self._last: tuple[float, float] | None = None  # (time, tokens) at the previous log

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-", speed="-")
        self.progress.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            # Absolute, not advance(): a resumed run starts at the checkpoint's step.
            self.progress.update(self.task, completed=state.global_step, total=state.max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.progress is None or not logs:
            return
        fields: dict[str, str] = {}
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.3f}"
        if "num_tokens" in logs:
            now, tokens = time.monotonic(), float(logs["num_tokens"])
            if self._last is not None and now > self._last[0] and tokens >= self._last[1]:
                fields["speed"] = f"{(tokens - self._last[1]) / (now - self._last[0]):,.0f}"
            self._last = (now, tokens)
        self.progress.update(self.task, **fields)
        shown = " · ".join(f"{k} {_short(v)}" for k, v in logs.items() if k in _SHOWN)
        if shown:
            self.progress.console.print(f"[dim]step {state.global_step}[/] · {shown}", highlight=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


_SHOWN = ("loss", "eval_loss", "learning_rate", "grad_norm")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
