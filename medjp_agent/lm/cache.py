"""`GenerationCache`: finished generations on disk, so re-running a run or revisiting a format costs nothing.

Entries are keyed by (model fingerprint with its numerics and adapter, prompt mode, rendered prompt text,
generation params); see :func:`cache_key`. The store is a ``diskcache.Cache`` (SQLite underneath), which is safe to
share between threads and between processes: several searches may run against one cache folder.

A cache folder is input that outlives the process, so nothing read from it may run code: entries are JSON text
(:class:`JSONOnlyDisk`), a pickled entry is refused rather than loaded, DSPy's response cache is configured with
its restricted unpickler (:func:`configure_dspy_cache`), and a folder that other users may write to is refused
(:func:`private_dir`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diskcache import Disk
from diskcache.core import MODE_RAW, MODE_TEXT

from .completions import Generation
from .params import GenerationParams
from ..paths import medjp_home


def default_cache_dir() -> Path:
    return medjp_home() / "generations"


class UnsafeCacheDir(ValueError):
    """A cache folder that another user could write to (or owns): its entries cannot be trusted."""


class UnsafeCacheEntry(ValueError):
    """A cache entry that is not JSON text (e.g. a pickle): it is dropped, never deserialized."""


def private_dir(directory: str | Path) -> Path:
    """``directory``, created readable and writable by this user only; refused if others may write to it."""
    path = Path(directory).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise UnsafeCacheDir(f"cache folder {path} belongs to another user (uid {info.st_uid}); use a folder of "
                             "your own (MEDJP_HOME, MEDJP_CACHE_DIR or DSPY_CACHEDIR)")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheDir(f"cache folder {path} is writable by other users (mode {stat.filemode(info.st_mode)}): "
                             f"anyone could plant entries in it. Run `chmod go-w {path}` or use another folder")
    return path


class JSONOnlyDisk(Disk):
    """diskcache storage of JSON-serialisable values as JSON text; any other stored form is refused on read.

    diskcache's own ``JSONDisk`` still unpickles a row whose mode says pickle, so a planted row would run code;
    here only text rows are read, and keys must be stored raw (strings), never pickled.
    """

    def store(self, value: Any, read: bool, key: Any = None) -> Any:
        if read:
            raise UnsafeCacheEntry("file values are not stored in a JSON cache")
        text = json.dumps(value, ensure_ascii=False)
        return super().store(text, read) if key is None else super().store(text, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in (MODE_RAW, MODE_TEXT) or read:
            raise UnsafeCacheEntry(f"cache entry stored as mode {mode}, not JSON text")
        text = super().fetch(mode, filename, value, read)
        if not isinstance(text, str):
            raise UnsafeCacheEntry(f"cache entry of type {type(text).__name__}, not JSON text")
        return json.loads(text)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise UnsafeCacheEntry("pickled cache key")
        return super().get(key, raw)


def configure_dspy_cache(directory: str | Path | None = None) -> Path:
    """Point DSPy's response cache at a private folder, with pickles restricted to DSPy's known-safe types.

    ``directory`` defaults to ``DSPY_CACHEDIR`` (the CLI sets it to ``$MEDJP_HOME/dspy``), else DSPy's default.
    """
    import dspy
    from dspy.utils.caching import default_cache_dir as dspy_default

    path = private_dir(directory or os.environ.get("DSPY_CACHEDIR") or dspy_default())
    dspy.configure_cache(disk_cache_dir=str(path), restrict_pickle=True)
    return path


def cache_key(model: str, raw: bool, prompt: str, params: GenerationParams, rollout_id: Any = None) -> str:
    """The key of one request.

    ``model`` is the model fingerprint joined with the active adapter's. ``raw`` tells a raw completion prompt from
    chat-template text (they tokenize differently). ``rollout_id`` is DSPy's way to ask for a fresh sample of an
    otherwise identical request; it matters only when sampling, since greedy decoding gives one answer.
    """
    parts = [model, raw, prompt, params.to_dict(), rollout_id if params.sampling else None]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


class GenerationCache:
    """A persistent map from :func:`cache_key` to :class:`Generation`.

    Args:
        directory: Cache folder (default ``$MEDJP_HOME/generations``). Separate folders are separate caches.
    """

    def __init__(self, directory: str | Path | None = None):
        import diskcache

        self.directory = private_dir(directory or default_cache_dir())
        self._store = diskcache.Cache(str(self.directory), disk=JSONOnlyDisk)

    def get(self, key: str) -> Generation | None:
        try:
            found = self._store.get(key)
            return None if found is None else Generation.from_dict(found)
        except (UnsafeCacheEntry, ValueError, TypeError, KeyError) as e:
            # A planted or foreign entry (an older pickled cache, another program's data) is a miss, and goes.
            warnings.warn(f"{self.directory}: dropped an unreadable generation cache entry ({e})", stacklevel=2)
            self._store.delete(key)
            return None

    def put_many(self, entries: Iterable[tuple[str, Generation]]) -> None:
        """Store entries in one transaction (one lock for a whole batch)."""
        with self._store.transact():
            for key, generation in entries:
                # JSON of plain dicts: entries stay readable after this class changes, and never run code.
                self._store.set(key, generation.to_dict())

    def __len__(self) -> int:
        return len(self._store)

    def close(self) -> None:
        self._store.close()
