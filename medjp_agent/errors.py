"""The project's error family: what a user can fix (bad input, bad settings, a failing LM) derives from
:class:`MedjpError`, and the command line turns exactly those into a one-line message. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: Exceptions that mean a bug in our code (or in a library), never a server or a model that failed: they pass
#: through :func:`lm_boundary` untouched, so their traceback is shown and no run is reported as resumable.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError, AttributeError, NameError, AssertionError, NotImplementedError, ImportError, RecursionError,
)


class MedjpError(Exception):
    """Base class of every error a user can act on; ``exit_code`` is what the command line exits with."""

    exit_code = 2


class ConfigError(MedjpError, ValueError):
    """Settings that cannot work together (a flag value, a format space, a study made with other settings)."""


class LMError(MedjpError):
    """A call to the LM failed (server down, timeout, out of memory); the cause is chained."""

    exit_code = 1


class MedjpWarning(UserWarning):
    """Something a user should know about a run that still goes on; the command line prints it as one line."""


class RunInterrupted(MedjpError):
    """Questions stopped because the LM failed; what finished is saved, and re-running resumes."""

    exit_code = 1


#: Seeds reach numpy's generator (Optuna's samplers, DSPy's optimizers, transformers), which takes 32-bit ones.
SEEDS = range(2**32)
#: What a seed outside :data:`SEEDS` is told.
SEED_RULE = "must be in [0, 2**32)"


def check_settings(*checks: tuple[str, object, bool, str]) -> None:
    """Raise a :class:`ConfigError` for the first ``(flag, value, ok, requirement)`` that is not ok, e.g.
    ``("--heartbeat", 0, False, "must be positive")`` -> ``--heartbeat must be positive, got 0``."""
    for flag, value, ok, requirement in checks:
        if not ok:
            raise ConfigError(f"{flag} {requirement}, got {value!r}")


@contextmanager
def lm_boundary() -> Iterator[None]:
    """Wrap a call to an LM: its failures become :class:`LMError`; programming errors pass through."""
    try:
        yield
    except (MedjpError, *PROGRAMMING_ERRORS):
        raise
    except Exception as e:  # noqa: BLE001 - any other failure of a backend is the LM failing
        raise LMError(f"{type(e).__name__}: {e}") from e


@contextmanager
def user_input(what: str = "") -> Iterator[None]:
    """Around code that reads what a user wrote (a format name, a space file, LM options): the ``ValueError`` or
    missing file it raises is a :class:`ConfigError`, reported as a message instead of a traceback."""
    try:
        yield
    except MedjpError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{what}: {e}" if what else str(e)) from e
