"""One process at a time in a run folder.

Two processes appending to one ``results.jsonl`` duplicate and interleave its lines, and each rewrites the summary
from what it alone saw. :func:`holding` takes an OS file lock (``filelock.FileLock``: ``fcntl``/``msvcrt``, so
the kernel frees it when its process dies, even by SIGKILL, and a resumed run never waits on a dead one) for as
long as the run writes, and refuses at once, naming the folder, when another process holds it. Holding the folder,
it removes the temporary files a killed writer left (:func:`medjp_agent.paths.replace_text`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from medjp_agent.errors import MedjpError

LOCK_FILE = ".medjp.lock"


class RunFolderBusy(MedjpError):
    """Another process is writing the run folder."""


@contextmanager
def holding(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir``'s lock (creating the folder) while the block runs; raises :class:`RunFolderBusy` at once
    when another process holds it."""
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderBusy(f"{folder}: another process holds this run folder (lock file {folder / LOCK_FILE}); "
                            "wait for it to finish, or write to another --out") from None
    try:
        for stale in folder.glob(".*.tmp"):  # a writer killed mid-replace left it; no one else writes here now
            stale.unlink(missing_ok=True)
        yield folder
    finally:
        lock.release()
