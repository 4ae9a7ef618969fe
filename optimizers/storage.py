"""Where a study lives. Every search persists through an Optuna storage, never a format of its own.

- ``sqlite:///<run>/study.db`` (the default, inside the run folder; ``optuna-dashboard`` opens it directly). It
  runs in WAL mode with ``synchronous=NORMAL``: a killed process loses nothing, a power cut may lose the last few
  reports, and a report costs a few milliseconds instead of an fsync (a search writes one per question). SQLite
  locking does not work on network file systems: use a database server or a journal file there;
- any SQLAlchemy RDB URL (``postgresql://user@host/db``, ``mysql://...``) for workers on several machines.
  ``postgresql://`` uses psycopg 3 (the ``medjp-agent[postgres]`` extra). Several processes may open an empty
  database at the same instant: creating Optuna's schema and the study is retried when they race;
- ``journal:PATH`` (or a path ending in ``.log``/``.journal``): Optuna's append-only JournalFileStorage, for
  several workers sharing a file system where no database server runs;
- ``None``: in memory (benchmarks and tests).
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from medjp_agent.errors import ConfigError
from medjp_agent.paths import folder_write_error
from medjp_agent.redact import redact_text, without_masked_password

STUDY_DB = "study.db"
JOURNAL_PREFIX = "journal:"
_JOURNAL_SUFFIXES = (".log", ".journal")
#: Attempts at creating the schema or the study while other processes create them too.
RACE_ATTEMPTS = 10
#: SQLAlchemy dialect -> the extra that installs its driver.
_DRIVER_EXTRAS = {"postgresql": "postgres"}


class StorageError(ConfigError):
    """A storage that cannot be opened, in one line: a missing driver (naming the extra), an unreachable server."""


#: How a SQLite storage URL starts (an absolute file path follows).
SQLITE_PREFIX = "sqlite:///"


def default_storage_url(run_dir: str | Path) -> str:
    """The SQLite file a search keeps in its run folder."""
    return f"{SQLITE_PREFIX}{Path(run_dir).resolve() / STUDY_DB}"


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX) or ("://" not in url and url.endswith(_JOURNAL_SUFFIXES))


def open_storage(url: str | None) -> BaseStorage:
    """The storage ``url`` names (see the module doc); SQLite waits for a writer instead of failing at once."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    if is_journal(url):
        path = Path(url.removeprefix(JOURNAL_PREFIX))
        _make_folder(path, url)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise StorageError(f"storage {url!r}: expected an RDB URL (sqlite:///FILE, postgresql://...) or journal:PATH")
    if url.startswith(SQLITE_PREFIX):
        path = Path(url.removeprefix(SQLITE_PREFIX))
        _make_folder(path, url)
        return _rdb_storage(url, {"creator": lambda: _sqlite_connection(path)}, shown=url)
    # A search runs for hours: a server connection dropped meanwhile (restart, firewall) is replaced, not raised.
    return _rdb_storage(_with_driver(url), {"pool_pre_ping": True}, shown=url)


def _make_folder(path: Path, url: str) -> None:
    if reason := folder_write_error(path.parent):
        raise StorageError(f"--storage {url}: cannot write into the folder {path.parent} ({reason})")


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver the ``postgres`` extra installs (SQLAlchemy before 2.1 assumes psycopg2)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], shown: str) -> RDBStorage:
    """Open ``url``; a database error is retried (with jittered backoff) before it becomes a one-line
    :class:`StorageError`.

    Retried because several processes may create the same schema at once: the loser fails on ``CREATE TYPE``, a
    table that already exists (SQLite) or the version row, and once the winner commits, the next attempt finds the
    tables. A server that does not answer fails the same way after the last attempt (a few seconds).
    """
    shown = _hide_password(shown)
    error: DBAPIError | None = None
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as e:
            raise StorageError(_missing_driver(shown, url, e)) from None
        except ArgumentError as e:
            raise StorageError(f"storage {shown}: {e}") from None
        except DBAPIError as e:
            error = e
            _back_off(attempt)
    raise StorageError(f"storage {shown}: {_first_line(error)}")


def create_study(storage: BaseStorage, name: str, **kwargs: Any) -> tuple[optuna.Study, bool]:
    """Study ``name`` in ``storage``, created when missing; returns ``(study, created)``.

    When several processes start on an empty storage, exactly one gets ``created=True``; the others load the study
    it made (they should wait for what its creator writes into it, such as its identity, before using it).
    ``kwargs`` go to :func:`optuna.create_study` (``direction``, ``sampler``, ``pruner``).
    """
    loading = {k: v for k, v in kwargs.items() if k in ("sampler", "pruner")}
    for attempt in range(1, RACE_ATTEMPTS + 1):
        try:
            return optuna.load_study(study_name=name, storage=storage, **loading), False
        except KeyError:
            pass
        try:
            return optuna.create_study(study_name=name, storage=storage, **kwargs), True
        except DuplicatedStudyError:
            _back_off(attempt)  # another process created it between our look and our insert: load it
    raise StorageError(f"study {name!r}: neither created nor loaded after {RACE_ATTEMPTS} attempts")


def _back_off(attempt: int) -> None:
    # Jittered, so processes that collided once do not collide again in step.
    time.sleep(random.uniform(0.02, 0.1) * attempt)


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _missing_driver(shown: str, url: str, error: ImportError) -> str:
    cause = error.__cause__ or error
    extra = _DRIVER_EXTRAS.get(make_url(url).get_backend_name())
    fix = f"pip install 'medjp-agent[{extra}]'" if extra else "install the database driver SQLAlchemy names for it"
    return f"storage {shown}: no database driver ({cause}); {fix}"


def _first_line(error: BaseException | None) -> str:
    orig = getattr(error, "orig", None) or error
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def _sqlite_connection(path: Path) -> sqlite3.Connection:
    # Several workers write to one file: wait up to a minute for the lock rather than raise "database is locked".
    # Connections move between threads in SQLAlchemy's pool, hence check_same_thread=False.
    connection = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def search_storage_url(run_dir: str | Path, recorded: str | None) -> str:
    """The storage of a search run folder: the folder's own ``study.db`` when it has one and recorded a SQLite file
    or nothing (a search's default storage; a copied or moved folder reads its own, not the original's), else the
    recorded URL. A recorded password is masked (:mod:`medjp_agent.redact`): the driver then reads it from its own
    settings (``PGPASSWORD``, ``~/.pgpass``)."""
    recorded = without_masked_password(recorded) if recorded else recorded
    local = Path(run_dir) / STUDY_DB
    sqlite = not recorded or recorded.startswith(SQLITE_PREFIX)
    return default_storage_url(run_dir) if sqlite and local.exists() else str(recorded or "")


def require_finished_trials(url: str, study: str) -> None:
    """``--n-trials 0`` evaluates the best of an existing study on the test split: refuse, before any model loads, a
    study that has nothing finished to evaluate (a typo in --study, or a search that never ran)."""
    from optuna.trial import TrialState

    try:
        finished = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))
    except KeyError:
        finished = []
    if not finished:
        raise ConfigError(f"--n-trials 0 evaluates the best of an existing study, and study {study!r} in "
                          f"{redact_text(url)} has no finished trial: give --n-trials 1 or more to search")
