"""`medjp train`, as ``accelerate launch`` starts it in each process, with two probes for
tests/test_train_distributed.py (this file is a script, not a test module):

- every safetensors file a process writes is appended to ``$MEDJP_TEST_SAVES`` as ``RANK PATH`` (PEFT and
  transformers bind ``save_file`` when imported, so it is wrapped before they are);
- with ``$MEDJP_TEST_KILL=RANK:STEP``, process RANK SIGKILLs itself as it starts optimizer step STEP + 1, as an
  out-of-memory kill or a preempted node would.

Each process also writes its pid to ``$MEDJP_TEST_SAVES.pid-RANK``, so the test can check none outlives the run.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

RANK = os.environ.get("RANK", "0")


def record_saves(log: Path) -> None:
    import safetensors.torch

    save = safetensors.torch.save_file

    def recording_save(tensors: Any, filename: Any, *args: Any, **kwargs: Any) -> Any:
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"{RANK} {filename}\n")
        return save(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = recording_save


def die_at(step: int) -> None:
    from transformers import Trainer

    training_step = Trainer.training_step

    def dying_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return training_step(self, *args, **kwargs)

    Trainer.training_step = dying_step


def main() -> None:
    log = Path(os.environ["MEDJP_TEST_SAVES"])
    Path(f"{log}.pid-{RANK}").write_text(str(os.getpid()), encoding="utf-8")
    record_saves(log)
    kill_rank, _, step = os.environ.get("MEDJP_TEST_KILL", "").partition(":")
    if kill_rank == RANK:
        die_at(int(step))
    from medjp_agent.cli import main as medjp

    sys.argv = ["medjp", *sys.argv[1:]]
    medjp()


if __name__ == "__main__":
    main()
