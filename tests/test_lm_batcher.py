"""MicroBatcher: concurrent calls become batches, grouped by what a batch must share, ordered to limit padding."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from medjp_agent.lm.batcher import PREFIX_PROBE, MicroBatcher, Request


class Recorder:
    """A batch runner that records each batch and answers with the prompt length."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False):
        self.batches: list[tuple[object, list[tuple[int, ...]]]] = []
        self.delay_s = delay_s
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, group: object, requests: list[Request]) -> list[int]:
        with self.lock:
            self.batches.append((group, [tuple(r.ids) for r in requests]))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return [len(r.ids) for r in requests]


def test_concurrent_callers_share_one_batch():
    run = Recorder()
    # A generous gap: on a loaded machine a thread may start late; a full batch is dispatched at once anyway.
    batcher = MicroBatcher(run, batch_size=16, gather_s=1.0, max_wait_s=5.0)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: batcher.submit([1] * (i + 1), "g").result(timeout=5), range(16)))
    batcher.close()
    assert results == list(range(1, 17))
    assert [len(ids) for _, ids in run.batches] == [16]


def test_gathering_follows_staggered_arrivals_past_one_gap():
    # Arrivals 5 ms apart span 75 ms, far beyond the 30 ms gap, yet keep extending the gathering.
    run = Recorder()
    batcher = MicroBatcher(run, batch_size=16, gather_s=0.03, max_wait_s=0.5)
    futures = []
    for i in range(16):
        futures.append(batcher.submit([i], "g"))
        time.sleep(0.005)
    assert [f.result(timeout=5) for f in futures] == [1] * 16
    batcher.close()
    assert len(run.batches) == 1


def test_the_gap_grows_with_the_time_batches_take():
    # Arrivals 20 ms apart split under the 10 ms base gap, but not after a 2 s batch (gap 5 % of it: 100 ms).
    run = Recorder(delay_s=2.0)
    batcher = MicroBatcher(run, batch_size=16, gather_s=0.01)
    batcher.submit([0], "g").result(timeout=5)
    run.delay_s = 0.0
    futures = []
    for i in range(4):
        futures.append(batcher.submit([i], "g"))
        time.sleep(0.02)
    for f in futures:
        f.result(timeout=5)
    batcher.close()
    assert [len(ids) for _, ids in run.batches] == [1, 4]


def test_groups_never_mix_and_batches_respect_size_by_weight():
    run = Recorder()
    batcher = MicroBatcher(run, batch_size=4, gather_s=0.05)
    futures = [batcher.submit([i], "greedy") for i in range(3)]
    futures += [batcher.submit([i], "n=3", weight=3) for i in range(2)]
    for f in futures:
        f.result(timeout=5)
    batcher.close()
    by_group = {}
    for group, ids in run.batches:
        by_group.setdefault(group, []).append(len(ids))
    assert by_group == {"greedy": [3], "n=3": [1, 1]}  # two n=3 requests are 6 sequences: over 4


def test_batches_are_ordered_by_prefix_then_length():
    run = Recorder(delay_s=0.2)
    batcher = MicroBatcher(run, batch_size=2, gather_s=0.01)
    blocker = batcher.submit([0], "g")  # occupies the worker while the rest queue up
    time.sleep(0.05)
    format_a, format_b = [1] * PREFIX_PROBE, [2] * PREFIX_PROBE
    prompts = [format_b + [9] * 3, format_a + [9] * 5, format_b + [9], format_a + [9]]
    futures = [batcher.submit(p, "g") for p in prompts]
    for f in [blocker, *futures]:
        f.result(timeout=5)
    batcher.close()
    later = [[len(ids) for ids in batch] for _, batch in run.batches[1:]]
    assert later == [[PREFIX_PROBE + 1, PREFIX_PROBE + 5], [PREFIX_PROBE + 1, PREFIX_PROBE + 3]]
    assert all(len({ids[0] for ids in batch}) == 1 for _, batch in run.batches[1:])


def test_a_failing_batch_fails_its_callers_and_the_worker_survives():
    run = Recorder(fail=True)
    batcher = MicroBatcher(run, batch_size=4)
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.submit([1], "g").result(timeout=5)
    run.fail = False
    assert batcher.submit([1, 2], "g").result(timeout=5) == 2
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([1], "g")
