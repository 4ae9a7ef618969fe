"""`MicroBatcher`: turns concurrent single-prompt calls into batched model calls.

DSPy calls an LM once per example, from a pool of threads, with no lock around the call. Each call here
submits a :class:`Request` and waits on its future; one worker thread gathers requests and hands them to a
runner in batches. Gathering: after the first request arrives, the worker keeps collecting while new requests
keep coming (each within a gap of the previous one), until the batch is full or a longest wait has passed;
requests already queued behind a full batch are taken along and form the next ones.

A gap rather than a fixed window matters because a pool refills one thread at a time: when a batch of 16
finishes, ``medjp eval`` hands out the next 16 questions over ~100 ms, 5-30 ms apart (measured on 2 busy CPU
cores), and a fixed 10 ms window split them into batches of 11 and 5. The gap and the longest wait grow with
the time the last batch took (5 % and 25 % of it, and at least ``gather_s`` and ``max_wait_s``): waiting ``w``
costs at most ``w`` over a batch that takes far longer, while a split batch costs a whole extra ``generate``.

Requests batch only with requests of the same ``group`` (generation params, prompt mode, adapter: what a
single ``generate`` call must share). Within a group, requests are ordered by their first
:data:`PREFIX_PROBE` tokens, then by length: prompts of one prompt format (same instruction and demos) end up
in the same batches, and prompts of similar length share a batch, which limits padding. The prefix order is
what shared-prefix KV reuse needs later: a runner can then compute each batch's common prefix once and pad
between prefix and question, without any change to how batches are formed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

#: How many leading tokens identify a prompt's format when ordering requests (instruction + demos come first).
PREFIX_PROBE = 32


@dataclass
class Request:
    """One prompt waiting for a batch.

    ``weight`` is the number of sequences it adds to a batch (its ``n``); ``group`` must be equal for requests
    that may share a batch; ``payload`` is the caller's, carried to the runner untouched. ``future`` resolves to
    what the runner returns for this request.
    """

    ids: Sequence[int]
    group: Hashable
    weight: int = 1
    payload: Any = None
    future: Future = field(default_factory=Future)

    @property
    def order(self) -> tuple[tuple[int, ...], int]:
        return tuple(self.ids[:PREFIX_PROBE]), len(self.ids)


#: Runs one batch: ``run(group, requests)`` returns one result per request, in order; an exception instance as a
#: result fails that request alone.
Runner = Callable[[Hashable, list[Request]], list[Any]]


class MicroBatcher:
    """Gathers concurrent requests into batches of at most ``batch_size`` sequences for ``run``.

    Args:
        run: The batch runner (e.g. one ``model.generate`` call). An exception it raises fails every request of the
            batch; an exception it returns in a request's place fails that request.
        batch_size: Most sequences per batch; a single request heavier than this still runs, alone.
        gather_s: Shortest gap between two arrivals that still extends gathering.
        max_wait_s: Shortest longest-wait of the first request of a batch for company.
    """

    #: Fractions of the last batch's run time that the gap and the longest wait grow to.
    GAP_FRACTION, WAIT_FRACTION = 0.05, 0.25

    def __init__(self, run: Runner, batch_size: int = 16, gather_s: float = 0.025, max_wait_s: float = 0.25):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.run = run
        self.batch_size = batch_size
        self.gather_s = gather_s
        self.max_wait_s = max_wait_s
        self._last_run_s = 0.0
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="medjp-batcher", daemon=True)
        self._worker.start()

    def submit(self, ids: Sequence[int], group: Hashable, weight: int = 1, payload: Any = None) -> Future:
        """Queue one prompt; the returned future resolves to the runner's result for it."""
        if not self._worker.is_alive():
            raise RuntimeError("the batcher is closed")
        request = Request(ids=ids, group=group, weight=weight, payload=payload)
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Finish queued work and stop the worker."""
        self._queue.put(None)
        self._worker.join()

    # -- worker ----------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending, stop = self._gather(first)
            for group, requests in _by_group(pending).items():
                for batch in self._batches(requests):
                    self._run(group, batch)
            if stop:
                return

    def _gather(self, first: Request) -> tuple[list[Request], bool]:
        """The requests of the next round of batches, and whether the batcher was closed meanwhile.

        Once a batch is full, whatever else is already queued joins too, so that ordering by format and length
        sees the whole backlog rather than the arrival order.
        """
        pending = [first]
        weight = first.weight
        gap = max(self.gather_s, self.GAP_FRACTION * self._last_run_s)
        deadline = time.monotonic() + max(self.max_wait_s, self.WAIT_FRACTION * self._last_run_s)
        while True:
            timeout = min(gap, deadline - time.monotonic()) if weight < self.batch_size else 0
            try:
                request = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return pending, False
            if request is None:
                return pending, True
            pending.append(request)
            weight += request.weight

    def _batches(self, requests: list[Request]) -> list[list[Request]]:
        batches: list[list[Request]] = []
        current: list[Request] = []
        weight = 0
        for request in sorted(requests, key=lambda r: r.order):
            if current and weight + request.weight > self.batch_size:
                batches.append(current)
                current, weight = [], 0
            current.append(request)
            weight += request.weight
        return [*batches, current]

    def _run(self, group: Hashable, batch: list[Request]) -> None:
        start = time.monotonic()
        try:
            results = self.run(group, batch)
            self._last_run_s = time.monotonic() - start
            if len(results) != len(batch):
                raise RuntimeError(f"the batch runner returned {len(results)} results for {len(batch)} requests")
        except Exception as e:  # noqa: BLE001 - the callers waiting on this batch must see the error
            for request in batch:
                request.future.set_exception(e)
            return
        for request, result in zip(batch, results):
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)


def _by_group(requests: list[Request]) -> dict[Hashable, list[Request]]:
    groups: dict[Hashable, list[Request]] = {}
    for request in requests:
        groups.setdefault(request.group, []).append(request)
    return groups
