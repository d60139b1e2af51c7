"""Concurrent cache misses -> engine calls that fill, on one inference thread; a lone miss runs at once.

    batcher = EngineBatcher(run, max_batch_size=32, max_wait_s=0.003)
    prediction = await batcher.submit(item)     # counted in `active` until it returns

A miss that finds the replica otherwise empty (no other request active, nothing queued, the engine idle) runs on
the event loop at once: at concurrency 1 a queue and a thread hop only add latency. Otherwise it queues, and a
batch leaves for the inference thread when the engine is idle and either `fill` items wait or the oldest has
waited `max_wait_s`. `fill` is half the requests active in the replica (at most max_batch_size): with the engine
computing one half while the event loop parses and answers the other, batches stay near half the concurrency
instead of taking the one or two requests that happened to be parsed when the engine came free (small batches
cost more engine time per row, and each batch costs the loop a thread hand-off). How far the engine's work
overlaps the loop's depends on the variant: TorchScript and the default `compiled` (AOTInductor's kernels called
through ctypes, serving/aoti_gil_free.py) release the GIL while they compute; the engine's feature columns and
its ACT loop's Python between segments still hold it (benchmarks/engine_gil.py measures this per variant).

Why not `@serve.batch`: it has no "alone: run inline" path and no fill target that follows the load; it waits
for max_batch_size or its timeout whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
                 run_batch: Callable[[list[Item]], list[Result]] | None = None) -> None:
        self._run = run  # items -> results in order; raises for the whole batch
        self._run_batch = run_batch or run  # the same for a batch on the inference thread (e.g. in another process)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self.active = 0  # requests in submit(): queued, computing, or run inline
        self._waiting: list[_Waiting[Item, Result]] = []
        self._busy = False  # a batch is on the inference thread
        self._timer: asyncio.TimerHandle | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hrm-engine")

    async def submit(self, item: Item) -> Result:
        self.active += 1
        try:
            return await self._submit(item)
        finally:
            self.active -= 1
            self._maybe_dispatch()  # a smaller fill may now be met

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
    def fill(self) -> int:
        return max(1, min(self.max_batch_size, (self.active + 1) // 2))  # half, rounded up

    def _maybe_dispatch(self) -> None:
        if self._busy or not self._waiting:
            return
        waited = time.perf_counter() - self._waiting[0].since
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
