"""EngineBatcher: a lone miss runs inline on the loop, concurrent misses share engine calls that fill to a share of
the replica's recent concurrency, an idle engine waits at most max_wait_s for one, and every request gets its own
result or the error."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hrm_platform.serving.batcher import EngineBatcher


class Recorder:
    """A fake engine: doubles each item, records every call's items and thread, takes `seconds` per call."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.seconds, self.fail = seconds, fail
        self.calls: list[list[int]] = []
        self.threads: list[int] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.append(threading.get_ident())
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("engine failed")
        return [2 * item for item in items]


async def ask(batcher: EngineBatcher, item: int) -> int:
    return await batcher.submit(item)


def test_a_lone_request_runs_inline_on_the_loop():
    async def scenario():
        engine = Recorder()
        batcher = EngineBatcher(engine, max_batch_size=32, max_wait_s=1.0, fill_fraction=0.5)
        answer = await ask(batcher, 5)
        return answer, engine, batcher, threading.get_ident()

    answer, engine, batcher, loop_thread = asyncio.run(scenario())
    assert answer == 10
    assert engine.calls == [[5]] and engine.threads == [loop_thread]  # no thread hop, no wait
    assert batcher.stats.as_dict() == {"inline": 1, "batched": 0, "batched_rows": 0, "largest_batch": 0}


def test_a_burst_fills_batches_to_half_the_requests_in_the_replica():
    async def scenario():
        engine = Recorder(seconds=0.05)
        # the wait never decides here
        batcher = EngineBatcher(engine, max_batch_size=32, max_wait_s=5.0, fill_fraction=0.5)
        answers = await asyncio.gather(*(ask(batcher, item) for item in range(8)))
        return answers, engine, batcher, threading.get_ident()

    answers, engine, batcher, loop_thread = asyncio.run(scenario())
    assert answers == [2 * item for item in range(8)]  # each request gets its own row's answer
    assert engine.calls == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 8 in the replica: batches of 4, not 1 + 7
    assert loop_thread not in engine.threads  # batches run on the inference thread
    assert batcher.stats.as_dict() == {"inline": 0, "batched": 2, "batched_rows": 8, "largest_batch": 4}


def test_max_batch_size_caps_a_batch():
    async def scenario():
        engine = Recorder(seconds=0.02)
        batcher = EngineBatcher(engine, max_batch_size=3, max_wait_s=5.0, fill_fraction=0.5)
        await asyncio.gather(*(ask(batcher, item) for item in range(12)))
        return engine

    assert max(len(call) for call in asyncio.run(scenario()).calls) == 3


def test_a_batch_that_cannot_fill_leaves_after_max_wait():
    async def scenario():
        engine = Recorder()
        batcher = EngineBatcher(engine, max_batch_size=32, max_wait_s=0.1, fill_fraction=0.5)
        batcher.active = 3  # three more requests in the replica, whose misses never come
        started = time.perf_counter()
        answer = await ask(batcher, 7)  # 4 in the replica: fill 2, never reached
        return answer, time.perf_counter() - started, engine

    answer, waited, engine = asyncio.run(scenario())
    assert answer == 14 and engine.calls == [[7]]
    assert 0.09 <= waited < 2.0


def test_an_engine_error_reaches_every_request_of_the_batch():
    async def scenario():
        batcher = EngineBatcher(Recorder(seconds=0.01, fail=True), max_batch_size=32, max_wait_s=5.0, fill_fraction=0.5)
        return await asyncio.gather(*(ask(batcher, item) for item in range(4)), return_exceptions=True)

    answers = asyncio.run(scenario())
    assert all(isinstance(answer, RuntimeError) and str(answer) == "engine failed" for answer in answers)


def test_a_cancelled_request_does_not_stop_the_others():
    async def scenario():
        batcher = EngineBatcher(Recorder(seconds=0.05), max_batch_size=32, max_wait_s=5.0, fill_fraction=0.5)
        tasks = [asyncio.create_task(ask(batcher, item)) for item in range(4)]
        await asyncio.sleep(0.01)  # the batch is on the engine
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    answers = asyncio.run(scenario())
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == [2, 4, 6]


@pytest.mark.parametrize("fraction, active, fill", [(0.5, 0, 1), (0.5, 1, 1), (0.5, 3, 2), (0.5, 31, 16),
                                                     (0.6, 32, 20), (0.6, 100, 32), (1.0, 8, 8)])
def test_fill_is_a_share_of_the_concurrency_within_bounds(fraction: float, active: int, fill: int):
    batcher = EngineBatcher(Recorder(), max_batch_size=32, max_wait_s=0.0, fill_fraction=fraction)
    batcher.active = active
    assert batcher.fill == fill


def test_fill_follows_the_concurrency_of_the_last_two_batches_not_the_requests_active_now():
    """After a burst of 8 (batches of 4), two requests alone still wait for a batch of 4, up to max_wait_s: when a
    batch comes back its requests leave together, and the fill must not fall with them. Two batches later the
    burst is forgotten, and two requests make a batch at once."""
    async def scenario():
        engine = Recorder(seconds=0.05)
        batcher = EngineBatcher(engine, max_batch_size=32, max_wait_s=0.3, fill_fraction=0.5)
        await asyncio.gather(*(ask(batcher, item) for item in range(8)))
        durations = []
        for pair in ((8, 9), (10, 11)):
            started = time.perf_counter()
            await asyncio.gather(*(ask(batcher, item) for item in pair))
            durations.append(time.perf_counter() - started)
        return engine, durations

    engine, (remembered, forgotten) = asyncio.run(scenario())
    assert engine.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11]]
    assert remembered >= 0.3 and forgotten < 0.25, (remembered, forgotten)


def test_time_queued_behind_a_busy_engine_does_not_count_as_waiting():
    """c queues while the engine computes [a, b]; when the engine comes free c has already waited longer than
    max_wait_s, yet the engine still waits up to max_wait_s for the batch to fill, and d joins it."""
    async def scenario():
        engine = Recorder(seconds=0.4)
        batcher = EngineBatcher(engine, max_batch_size=32, max_wait_s=0.2, fill_fraction=1.0)

        async def later(delay: float, item: int) -> int:
            await asyncio.sleep(delay)
            return await ask(batcher, item)

        await asyncio.gather(ask(batcher, 0), ask(batcher, 1), later(0.1, 2), later(0.45, 3))
        return engine

    assert asyncio.run(scenario()).calls == [[0, 1], [2, 3]]


def test_batches_go_to_run_batch_and_a_lone_request_to_run_and_after_pending_waits_for_the_batches():
    async def scenario():
        lone, batches = Recorder(), Recorder(seconds=0.05)
        batcher = EngineBatcher(lone, max_batch_size=32, max_wait_s=5.0, fill_fraction=0.5, run_batch=batches)
        order: list[str] = []
        await ask(batcher, 1)
        burst = asyncio.gather(*(ask(batcher, item) for item in range(4)))
        await asyncio.sleep(0.01)  # the first batch is on the inference thread
        batcher.after_pending(lambda: order.append(f"after {len(batches.calls)} batches"))
        answers = await burst
        await asyncio.sleep(0.1)
        return answers, lone, batches, order

    answers, lone, batches, order = asyncio.run(scenario())
    assert answers == [0, 2, 4, 6]
    assert lone.calls == [[1]] and batches.calls == [[0, 1], [2, 3]]
    # It ran after the batch already on the inference thread, before the one dispatched later (a reload's old
    # engine process closes then; later batches of its model fall back to the replica's own engine).
    assert order == ["after 1 batches"]
