"""Shared-prefix KV reuse: a prompt format's instruction and demos are prefilled once, not once per question.

Every question asked in one format starts with the same instruction and demonstrations (60-90 % of the tokens
at 3-5 shots). For a batch, the rows' longest common token prefix is run through the model once, with batch size
one; the decoding loop (:mod:`.decode`) keeps that KV cache once for all rows (never copied per row) and prefills
only the rows' own suffixes after it. Positions count only real tokens, so each row computes what it would alone.
With float32 compute the greedy tokens equal ``generate``'s on the whole prompts; with bf16 they can differ, as
batching's already do: the prefix is summed in another order, and bf16 rounding amplifies that.

Consecutive batches of one format share the prefix, so prefixes are kept in a :class:`PrefixCache`, an LRU
bounded by bytes and keyed by the owner (model + numerics + adapter fingerprint: a prefix's KV belongs to one
adapter) and the prefix tokens. A batch uses the longest cached prefix of its rows; it computes a new one only
when none is cached and its rows share at least :data:`MIN_PREFIX` tokens. A lone request only reuses a cached
prefix (computing one per question would fill the cache with prompts that never recur).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Shorter shared prefixes are not worth a forward pass of their own.
MIN_PREFIX = 16


def _cache_arg() -> str:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    # transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name still works, with a warning).
    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


#: The name of the KV cache in model outputs and ``generate`` keywords.
CACHE_ARG = _cache_arg()


@dataclass(frozen=True)
class PrefixKV:
    """The KV cache of ``ids`` for one sequence: a (keys, values) pair per layer, batch dimension 1."""

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)

    @property
    def digest(self) -> str:
        return hashlib.sha256(str(self.ids).encode()).hexdigest()


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """The longest common token prefix of ``rows``, leaving every row at least one token of its own."""
    first = rows[0]
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return max(n, 0)


def compute_prefix(model: Any, ids: Sequence[int]) -> PrefixKV:
    """Prefill ``ids`` alone and keep their KV cache."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(ids)], device=model.device), use_cache=True, logits_to_keep=1)
    cache = getattr(out, CACHE_ARG)
    return PrefixKV(ids=tuple(ids), layers=tuple((layer.keys, layer.values) for layer in cache.layers))


class PrefixCache:
    """Prefix KV caches of recent prompt formats, least recently used dropped first, at most ``max_bytes``.

    Used under the model lock of its backend (one ``generate`` at a time); its own lock guards the counters and
    the map against readers such as :attr:`nbytes` from other threads.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple[str, str], PrefixKV] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def for_batch(self, model: Any, owner: str, rows: Sequence[Sequence[int]]) -> PrefixKV | None:
        """The prefix KV to generate ``rows`` with: the longest cached one they all start with, else a new one."""
        shared = common_prefix_length(rows)
        found = self._lookup(owner, rows[0], shared)
        if found is not None or shared < MIN_PREFIX or len(rows) == 1:
            return found
        prefix = compute_prefix(model, rows[0][:shared])
        self._store(owner, prefix)
        return prefix

    def _lookup(self, owner: str, row: Sequence[int], shared: int) -> PrefixKV | None:
        with self._lock:
            best = None
            for (who, _), entry in self._entries.items():
                if who == owner and MIN_PREFIX <= len(entry.ids) <= shared and tuple(row[: len(entry.ids)]) == entry.ids:
                    best = entry if best is None or len(entry.ids) > len(best.ids) else best
            if best is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end((owner, best.digest))
            return best

    def _store(self, owner: str, prefix: PrefixKV) -> None:
        with self._lock:
            self._entries[(owner, prefix.digest)] = prefix
            while self._entries and sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
