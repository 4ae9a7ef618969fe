"""Where a study lives. Every search persists through an Optuna storage, never a format of its own.

- ``sqlite:///<run>/study.db`` (the default, inside the run folder; ``optuna-dashboard`` opens it directly). It
  runs in WAL mode with ``synchronous=NORMAL``: a killed process loses nothing, a power cut may lose the last few
  reports, and a report costs a few milliseconds instead of an fsync (a search writes one per question). SQLite
  locking does not work on network file systems: use a database server or a journal file there;
- any SQLAlchemy RDB URL (``postgresql://user@host/db``, ``mysql://...``) for workers on several machines;
- ``journal:PATH`` (or a path ending in ``.log``/``.journal``): Optuna's append-only JournalFileStorage, for
  several workers sharing a file system where no database server runs;
- ``None``: in memory (benchmarks and tests).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

STUDY_DB = "study.db"
JOURNAL_PREFIX = "journal:"
_JOURNAL_SUFFIXES = (".log", ".journal")


def default_storage_url(run_dir: str | Path) -> str:
    """The SQLite file a search keeps in its run folder."""
    return f"sqlite:///{Path(run_dir).resolve() / STUDY_DB}"


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX) or ("://" not in url and url.endswith(_JOURNAL_SUFFIXES))


def open_storage(url: str | None) -> BaseStorage:
    """The storage ``url`` names (see the module doc); SQLite waits for a writer instead of failing at once."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    if is_journal(url):
        path = Path(url.removeprefix(JOURNAL_PREFIX))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage {url!r}: expected an RDB URL (sqlite:///FILE, postgresql://...) or journal:PATH")
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"creator": lambda: _sqlite_connection(path)}
    return RDBStorage(url, engine_kwargs=engine_kwargs)


def _sqlite_connection(path: Path) -> sqlite3.Connection:
    # Several workers write to one file: wait up to a minute for the lock rather than raise "database is locked".
    # Connections move between threads in SQLAlchemy's pool, hence check_same_thread=False.
    connection = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def search_storage_url(run_dir: str | Path, recorded: str | None) -> str:
    """The storage of a search run folder: the recorded URL, or the folder's own ``study.db`` when the folder was
    moved (the recorded SQLite file no longer exists) or recorded nothing."""
    local = Path(run_dir) / STUDY_DB
    missing_sqlite = bool(recorded) and recorded.startswith("sqlite:///") and not Path(
        recorded.removeprefix("sqlite:///")).exists()
    return default_storage_url(run_dir) if (not recorded or missing_sqlite) and local.exists() else str(recorded or "")
