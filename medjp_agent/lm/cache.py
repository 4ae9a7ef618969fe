"""`GenerationCache`: finished generations on disk, so re-running a run or revisiting a format costs nothing.

Entries are keyed by (model + adapter fingerprint, prompt mode, rendered prompt text, generation params); see
:func:`cache_key`. The store is a ``diskcache.Cache`` (SQLite underneath), which is safe to share between threads
and between processes: several searches may run against one cache folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .completions import Generation
from .params import GenerationParams
from .tiny import medjp_home


def default_cache_dir() -> Path:
    return medjp_home() / "generations"


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

        self.directory = Path(directory) if directory else default_cache_dir()
        self._store = diskcache.Cache(str(self.directory))

    def get(self, key: str) -> Generation | None:
        found = self._store.get(key)
        return None if found is None else Generation.from_dict(found)

    def put_many(self, entries: Iterable[tuple[str, Generation]]) -> None:
        """Store entries in one transaction (one lock for a whole batch)."""
        with self._store.transact():
            for key, generation in entries:
                # Plain dicts, not pickled dataclasses: entries stay readable after this class changes.
                self._store.set(key, generation.to_dict())

    def __len__(self) -> int:
        return len(self._store)

    def close(self) -> None:
        self._store.close()
