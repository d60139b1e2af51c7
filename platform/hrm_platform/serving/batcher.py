"""Concurrent cache misses -> engine calls that fill, on one inference thread; a lone miss runs at once.

    batcher = EngineBatcher(run, max_batch_size=32, max_wait_s=0.006, fill_fraction=0.6)
    prediction = await batcher.submit(item)     # counted in `active` until it returns

A miss that finds the replica otherwise empty (no other request active, nothing queued, the engine idle) runs on
the event loop at once: at concurrency 1 a queue and a thread hop only add latency. Otherwise it queues, and a
batch leaves for the inference thread when the engine is idle and either `fill` items wait or the engine has
been idle with items waiting for `max_wait_s` (time spent queued behind a busy engine does not count: it was no
chance to fill). `fill` is `fill_fraction` of the replica's concurrency, the most requests active at once over
this batch's cycle and the one before (at most max_batch_size). Not the requests active right now: when a batch
comes back its requests leave together, and a fill that followed them down would send the next batch with
whatever had queued meanwhile. With a fill of one half, batches alternate between two halves of the
concurrency, the engine computing one while the event loop answers and parses the other; a fill above one half
merges part of the next half into each batch: fewer, larger batches (less engine time per row, fewer thread
hand-offs), while the event loop, which is what limits the replica, stays busy with the rest (README, Latency
and throughput: batch size and throughput of both). How far the engine's work overlaps the loop's depends on
the variant: TorchScript and the default `compiled` (AOTInductor's kernels called through ctypes,
serving/aoti_gil_free.py) release the GIL while they compute; the engine's feature columns and its ACT loop's
Python between segments still hold it (benchmarks/engine_gil.py measures this per variant).

Why not `@serve.batch`: it has no "alone: run inline" path and no fill target that follows the load; it waits
for max_batch_size or its timeout whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    """Engine calls since start (reported by /v1/health as `engine_calls`)."""

    inline: int = 0  # lone misses run on the loop
    batched: int = 0  # batches run on the inference thread
    batched_rows: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    since: float = field(default_factory=time.perf_counter)


class EngineBatcher(Generic[Item, Result]):
    def __init__(self, run: Callable[[list[Item]], list[Result]], max_batch_size: int, max_wait_s: float,
                 fill_fraction: float, run_batch: Callable[[list[Item]], list[Result]] | None = None) -> None:
        self._run = run  # items -> results in order; raises for the whole batch
        self._run_batch = run_batch or run  # the same for a batch on the inference thread (e.g. in another process)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.fill_fraction = fill_fraction
        self.stats = BatchStats()
        self.active = 0  # requests in submit(): queued, computing, or run inline
        self._peak = 0  # most requests active since the last batch came back
        self._previous_peak = 0  # the same over the cycle before
        self._waiting: list[_Waiting[Item, Result]] = []
        self._busy = False  # a batch is on the inference thread
        self._idle_since = 0.0  # perf_counter() when the last batch came back
        self._timer: asyncio.TimerHandle | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hrm-engine")

    async def submit(self, item: Item) -> Result:
        self.active += 1
        self._peak = max(self._peak, self.active)
        try:
            return await self._submit(item)
        finally:
            self.active -= 1  # the fill does not shrink with it: `concurrency` remembers the peaks

    async def _submit(self, item: Item) -> Result:
        await asyncio.sleep(0)  # requests the loop has already read get to register first: a burst is not "alone"
        if self.active <= 1 and not self._busy and not self._waiting:
            self.stats.inline += 1
            return self._run([item])[0]
        waiting = _Waiting(item, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._maybe_dispatch()
        return await waiting.future

    @property
    def concurrency(self) -> int:
        return max(self.active, self._peak, self._previous_peak)

    @property
    def fill(self) -> int:
        return max(1, min(self.max_batch_size, math.ceil(self.fill_fraction * self.concurrency)))

    def _maybe_dispatch(self) -> None:
        if self._busy or not self._waiting:
            return
        waited = time.perf_counter() - max(self._waiting[0].since, self._idle_since)  # with the engine idle
        if len(self._waiting) >= self.fill or waited >= self.max_wait_s:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s - waited, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_dispatch()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting[: self.max_batch_size], self._waiting[self.max_batch_size :]
        self._busy = True
        self.stats.batched += 1
        self.stats.batched_rows += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        loop = asyncio.get_running_loop()
        computing = loop.run_in_executor(self._thread, self._run_batch, [waiting.item for waiting in batch])
        computing.add_done_callback(lambda done: self._finish(batch, done))

    def _finish(self, batch: list[_Waiting[Item, Result]], done: asyncio.Future[list[Result]]) -> None:
        self._busy = False
        self._idle_since = time.perf_counter()
        self._previous_peak, self._peak = self._peak, self.active  # the batch's requests are still active here
        error = done.exception()
        for index, waiting in enumerate(batch):
            if waiting.future.done():  # its request was cancelled (client gone)
                continue
            if error is not None:
                waiting.future.set_exception(error)
            else:
                waiting.future.set_result(done.result()[index])
        self._maybe_dispatch()

    def after_pending(self, task: Callable[[], object]) -> None:
        """Run `task` on the inference thread after every batch already dispatched to it."""
        self._thread.submit(task)

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False)
