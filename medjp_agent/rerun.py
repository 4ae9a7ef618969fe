"""Whether running the same command again can get past a failure, and what to tell the user either way.

A run that stops keeps what finished, and re-running resumes it. But "re-run the same command" is only advice
when the cause can go away by itself (a server that was down, a timeout, a dropped connection, memory another
process held). A rejected request, a bad file or setting, or a bug fails the same way again: then the message says
to fix the cause first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

#: Exception type names (anywhere in the cause chain) of failures that may pass by themselves.
_TRANSIENT_NAMES = ("ServerUnavailable", "Timeout", "ConnectError", "ConnectionError", "RemoteProtocolError",
                    "ReadError", "WriteError", "OutOfMemoryError", "RateLimit")
_PERMANENT = (ValueError, TypeError, KeyError, AttributeError, LookupError, ImportError, FileNotFoundError,
              NotADirectoryError, IsADirectoryError, PermissionError)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def rerun_can_fix(error: BaseException | None) -> bool:
    """True when some exception in ``error``'s cause chain is of a kind that can pass by itself; False for a
    rejected request, bad input or settings, a bug, or anything unknown (never promise what may not hold)."""
    for exc in _chain(error):
        name = type(exc).__name__
        if name == "RequestRejected" or isinstance(exc, _PERMANENT):
            return False
        if any(t in name for t in _TRANSIENT_NAMES) or isinstance(exc, (TimeoutError, ConnectionError)):
            return True
        if "out of memory" in str(exc).lower():
            return True
    return False


def resume_hint(error: BaseException | None, saved: int, total: int, folder: Path) -> str:
    """What is saved, and whether re-running the same command resumes or the cause must be fixed first."""
    kept = f"{saved} of {total} questions are saved in {folder}"
    if rerun_can_fix(error):
        return f"{kept}; re-run the same command to resume."
    return f"{kept}; the same command would fail the same way: fix the cause above, then re-run it to resume."
