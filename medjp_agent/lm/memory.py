"""Batches sized by memory, and out-of-memory survived by splitting.

A 70B model in 4-bit leaves a GPU only a few GB beside its weights, and the KV cache of a batch is what fills
them: each token costs ``2 × layers × KV heads × head size × bytes`` (about 320 KB for a Llama-2-70B shape in
bf16). :class:`ModelShape` reads these sizes from the model config; :class:`MemoryPlanner` estimates each batch's
peak (KV cache of prompt + new tokens, the largest prefill activation, the logits) and splits a batch the
micro-batcher formed into chunks whose estimate fits the budget: the device's free memory, or the ``--max-memory``
cap of the model's device less the weights, with a margin. ``--batch-size`` stays the upper bound.

The estimate is a model of memory, not a measurement, so an out-of-memory error can still happen (fragmentation,
another process). :meth:`MemoryPlanner.run` then frees the allocator's cache, splits the chunk in half and
retries, down to one sequence, and remembers the size that worked for that length, so later batches of similar
length are cut to it at once. A single sequence that alone does not fit is :class:`~.errors.NotRun`.
"""

from __future__ import annotations

import gc
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import NotRun

#: Fraction of the budget kept free: allocator fragmentation and what the estimate leaves out.
MARGIN = 0.10


class Sized(Protocol):
    """What the planner needs of a request: its prompt ids and how many sequences it adds (``n``)."""

    ids: Sequence[int]
    weight: int


R = TypeVar("R", bound=Sized)
Result = TypeVar("Result")


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a batch's memory; ``act_bytes`` is the activation (and KV cache) element size."""

    layers: int
    kv_heads: int
    head_dim: int
    heads: int
    hidden: int
    intermediate: int
    vocab: int
    act_bytes: int
    #: Whether attention materialises the full score matrix (the math kernel on CPU and MPS; CUDA's
    #: memory-efficient and flash kernels do not).
    quadratic_attention: bool

    @classmethod
    def of(cls, model: Any) -> "ModelShape":
        config = model.config.get_text_config()
        heads = config.num_attention_heads
        # The embeddings keep the model's dtype under 4-bit quantization: hidden states, and so K and V, have it.
        dtype = model.get_input_embeddings().weight.dtype
        return cls(layers=config.num_hidden_layers, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads, heads=heads,
                   hidden=config.hidden_size, intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size),
                   vocab=config.vocab_size, act_bytes=dtype.itemsize,
                   quadratic_attention=model.device.type != "cuda")

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.act_bytes

    def peak_bytes(self, rows: int, width: int, new_tokens: int) -> int:
        """Estimated peak of one ``generate`` over ``rows`` sequences padded to ``width`` prompt tokens.

        The KV cache of every token, plus the larger of the prefill's per-layer activations and one layer's cache
        being copied as it grows during decoding, plus float32 logits of the last position (twice: the logits
        processors copy them).
        """
        total = width + new_tokens
        kv = rows * total * self.kv_bytes_per_token
        prefill = rows * width * (4 * self.hidden + 3 * self.intermediate) * self.act_bytes
        if self.quadratic_attention:
            prefill += rows * self.heads * width * width * max(self.act_bytes, 4)
        growing = kv // max(self.layers, 1)
        return kv + max(prefill, growing) + 2 * rows * self.vocab * 4


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, and the plain ``RuntimeError`` that MPS and XPU raise for the same."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_device_cache(device: Any) -> None:
    """Return the allocator's cached blocks after an out-of-memory error, so the retry finds them."""
    import torch

    gc.collect()
    backend = getattr(torch, getattr(device, "type", "cpu"), None)
    if backend is not None and hasattr(backend, "empty_cache") and backend.is_available():
        backend.empty_cache()


def free_memory(device: Any) -> int:
    """Bytes the model's device can still give: free device memory plus what torch's allocator caches unused."""
    import torch
    from accelerate.utils import get_max_memory

    available = get_max_memory()
    if device.type in ("cuda", "xpu"):
        index = device.index or 0
        backend = getattr(torch, device.type)
        return int(available.get(index, 0)) + backend.memory_reserved(index) - backend.memory_allocated(index)
    return int(available.get(device.type, available.get("cpu", 0)))


def parse_size(size: str) -> int:
    """Bytes in a ``--max-memory`` size: a number of bytes or accelerate's notation (``70GiB``, ``500MB``); a
    ValueError otherwise."""
    from accelerate.utils import convert_file_size_to_int

    return int(size) if size.isdigit() else int(convert_file_size_to_int(size))


def device_cap(max_memory: dict[str, str], device: Any) -> int | None:
    """The ``--max-memory`` size given for ``device`` (GPUs by index, else by type), in bytes; None if none."""
    name = str(device.index or 0) if device.type in ("cuda", "xpu") else device.type
    size = max_memory.get(name)
    return None if size is None else parse_size(size)


class MemoryPlanner:
    """Splits batches into chunks that fit the memory budget, and survives out-of-memory by halving.

    Args:
        shape: The model's sizes.
        budget: Bytes batches may use now (called per batch: free memory changes as other processes run).
        max_rows: ``--batch-size``, the upper bound on sequences per ``generate``.
        reserved: Bytes held outside batches that the budget must leave (the prefix KV cache).
        on_oom: Called after an out-of-memory error, before the retry (frees caches).
    """

    def __init__(self, shape: ModelShape, budget: Callable[[], int], max_rows: int,
                 reserved: Callable[[], int] = lambda: 0, on_oom: Callable[[], None] = lambda: None):
        self.shape = shape
        self.budget = budget
        self.max_rows = max_rows
        self.reserved = reserved
        self.on_oom = on_oom
        self.oom_splits = 0
        #: By length bucket (prompt + new tokens, rounded up to a power of 2): the fewest rows that ran out of
        #: memory, and the most rows that ran after that.
        self._failed: dict[int, int] = {}
        self._worked: dict[int, int] = {}
        self._lock = threading.Lock()

    def usable(self) -> int:
        return max(0, int(self.budget() * (1 - MARGIN)) - self.reserved())

    def rows_that_fit(self, width: int, new_tokens: int, usable: int | None = None) -> int:
        """Most sequences of ``width`` prompt tokens one ``generate`` may take (at least 1, at most ``max_rows``)."""
        usable = self.usable() if usable is None else usable
        per_row = max(1, self.shape.peak_bytes(1, width, new_tokens))
        rows = min(self.max_rows, max(1, usable // per_row))
        while rows > 1 and self.shape.peak_bytes(rows, width, new_tokens) > usable:
            rows -= 1
        return min([rows, *self._learned(_bucket(width + new_tokens))])

    def _learned(self, bucket: int) -> list[int]:
        """Row limits learned from out-of-memory errors at this length or a shorter one (which needs less)."""
        with self._lock:
            return [self._worked.get(b, max(1, failed // 2)) for b, failed in self._failed.items() if b <= bucket]

    def chunks(self, requests: Sequence[R], new_tokens: int) -> list[list[R]]:
        """``requests`` in order, cut into chunks whose estimated peak fits (a request is never split)."""
        usable = self.usable()
        chunks: list[list[R]] = []
        current: list[R] = []
        rows = width = 0
        for request in requests:
            wider = max(width, len(request.ids))
            if current and rows + request.weight > self.rows_that_fit(wider, new_tokens, usable):
                chunks.append(current)
                current, rows, wider = [], 0, len(request.ids)
            current.append(request)
            rows, width = rows + request.weight, wider
        return [*chunks, current] if current else chunks

    def run(self, requests: Sequence[R], new_tokens: int,
            generate: Callable[[list[R]], list[Result]]) -> list[Result | NotRun]:
        """``generate`` over fitting chunks of ``requests``; one result (or :class:`NotRun`) per request."""
        results: list[Result | NotRun] = []
        for chunk in self.chunks(requests, new_tokens):
            results += self._run_halving(chunk, new_tokens, generate)
        return results

    def _run_halving(self, chunk: list[R], new_tokens: int,
                     generate: Callable[[list[R]], list[Result]]) -> list[Result | NotRun]:
        width = max(len(r.ids) for r in chunk)
        bucket, rows = _bucket(width + new_tokens), sum(r.weight for r in chunk)
        try:
            results = list(generate(chunk))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
        else:
            with self._lock:
                if rows < self._failed.get(bucket, 0):
                    self._worked[bucket] = max(self._worked.get(bucket, 0), rows)
            return results
        self.on_oom()
        if len(chunk) == 1:
            return [NotRun(f"out of memory ({width} prompt + {new_tokens} new tokens × {chunk[0].weight} "
                           "sequence(s) do not fit even alone)")]
        half = len(chunk) // 2
        with self._lock:
            self.oom_splits += 1
            self._failed[bucket] = min(self._failed.get(bucket, rows), rows)
            if self._worked.get(bucket, 0) >= rows:
                del self._worked[bucket]
        return self._run_halving(chunk[:half], new_tokens, generate) + \
            self._run_halving(chunk[half:], new_tokens, generate)

    def describe(self, weights_bytes: int, length: int, new_tokens: int) -> dict[str, Any]:
        """The start-up view: weights, budget, KV per token, and the largest batch at ``length`` prompt tokens."""
        return {"weights": weights_bytes, "budget": self.budget(), "kv_per_token": self.shape.kv_bytes_per_token,
                "length": length, "new_tokens": new_tokens, "largest_batch": self.rows_that_fit(length, new_tokens)}


def _bucket(tokens: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(tokens, 1))))
