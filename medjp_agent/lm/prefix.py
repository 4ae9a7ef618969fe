"""Shared-prefix KV reuse: a prompt format's instruction and demos are prefilled once, not once per question.

Every question asked in one format starts with the same instruction and demonstrations (60-90 % of the tokens
at 3-5 shots). For a batch, the rows' longest common token prefix is run through the model once, with batch size
one; its KV cache is expanded over the batch, and ``generate`` prefills only each row's own suffix. The layout is
``prefix | padding | suffix``: transformers derives position ids from the attention mask (its cumulative sum), so
padding placed between the prefix and a suffix does not shift the suffix's positions, and each row computes what
it would alone. With float32 compute the greedy tokens equal the plain left-padded path's; with bf16 they can
differ, as batching's already do: the prefix is summed in another order, and bf16 rounding amplifies that.

Consecutive batches of one format share the prefix, so prefixes are kept in a :class:`PrefixCache`, an LRU
bounded by bytes and keyed by the owner (model + numerics + adapter fingerprint: a prefix's KV belongs to one
adapter) and the prefix tokens. A batch uses the longest cached prefix of its rows; it computes a new one only
when none is cached and its rows share at least :data:`MIN_PREFIX` tokens. A lone request only reuses a cached
prefix (computing one per question would fill the cache with prompts that never recur).

Models with sliding-window attention are left to the plain path (their caches drop old positions).
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


def supports_prefix_sharing(model: Any) -> bool:
    config = model.config.get_text_config()
    windowed = getattr(config, "sliding_window", None) or any(
        "sliding" in str(t) for t in getattr(config, "layer_types", None) or ())
    return not windowed and getattr(config, "is_encoder_decoder", False) is False


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


def shared_layout(rows: Sequence[Sequence[int]], prefix_len: int, pad_id: int,
                  device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``: the shared prefix, then padding, then each row's suffix right-aligned."""
    suffixes = [list(r[prefix_len:]) for r in rows]
    width = prefix_len + max(len(s) for s in suffixes)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    ids[:, :prefix_len] = torch.tensor(list(rows[0][:prefix_len]), dtype=torch.long)
    mask[:, :prefix_len] = 1
    for i, suffix in enumerate(suffixes):
        ids[i, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
        mask[i, width - len(suffix):] = 1
    return ids.to(device), mask.to(device)


def expanded_cache(model: Any, prefix: PrefixKV, rows: int) -> Any:
    """A fresh ``DynamicCache`` holding the prefix for ``rows`` sequences.

    The expansion is a view: the first cache update concatenates onto it, so the stored prefix is never written
    and the batch's own copy is the size the plain path's KV cache has for the same tokens.
    """
    from transformers import DynamicCache

    data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix.layers]
    return DynamicCache(ddp_cache_data=data, config=model.config)


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
