"""Per-replica stream state: each stream's recent bars, bounded in count and expired when idle.

    store = StreamStore(max_streams=serve.max_streams, idle_s=serve.stream_idle_s)
    store.put("AAPL-1m", Stream.seed(bars, timestamps, capacity=engine.bars_needed, settings=...))
    stream = store.get("AAPL-1m")          # None: never created here, expired or evicted (-> 409 stream_unknown)
    new, new_times = plan_append(stream, bars, timestamps)   # drops repeats, refuses older bars (StreamConflict)
    stream.append(new, new_times)         # the window the next decision reads: stream.bars[-bars_needed:]

A stream holds raw bars only, never features: its decision is computed from `stream.bars[-bars_needed:]` by the
same code as a /v1/predict carrying those bars (the same cache key, batching and engine call), so the two agree
exactly by construction. The store is an OrderedDict in least-recently-used order; as every request moves its
stream to the end, that is also the order of idleness, so expiry and eviction both pop from the front. It is
used from the replica's event loop only (no lock): a request's read-check-append runs without an await between.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

BAR_WIDTH = 5  # open, high, low, close, volume
STREAM_OVERHEAD_BYTES = 600  # a Stream object, its settings and its dict slot, beside its arrays (measured ~550)


class StreamConflict(Exception):
    """A stream request that cannot be applied to the state this replica holds; becomes a 409 naming `error`.

    `stream_unknown`: no such stream here (never created on this replica, expired, evicted, or the model now needs
    more bars); the client re-seeds it with a PUT of `bars_needed` bars. `bar_out_of_order`: a bar older than the
    stream's last. `bar_conflict`: a bar with the timestamp of one the stream holds, but other values."""

    def __init__(self, error: str, detail: str, bars_needed: int | None = None) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.bars_needed = bars_needed


@dataclass(frozen=True)
class StreamSettings:
    """What a stream's requests default to; a POST may override the budget for itself."""

    position: float = 0.0
    max_segments: int | None = None
    deadline_ms: float | None = None


@dataclass(eq=False)
class Stream:
    """One stream's state: the last `capacity` bars, oldest first, and their timestamps."""

    bars: np.ndarray  # (<= capacity, 5) float64, oldest first
    times: np.ndarray  # (<= capacity,) float64 epoch seconds; NaN for a bar sent without a timestamp
    capacity: int  # bars_needed of the model when the stream was seeded
    settings: StreamSettings
    bars_seen: int  # every bar taken in since the PUT, its history included
    last_used: float = field(default=0.0)  # the store's timer at the stream's last request
    generation: str | None = None  # the client's token for the PUT that seeded it (stream_service.py); None: none

    @classmethod
    def seed(
        cls, bars: np.ndarray, times: np.ndarray | None, capacity: int, settings: StreamSettings,
        generation: str | None = None,
    ) -> Stream:
        times = _times_or_nan(times, len(bars))
        return cls(np.ascontiguousarray(bars[-capacity:], dtype=np.float64), times[-capacity:].copy(), capacity,
                   settings, bars_seen=len(bars), generation=generation)

    @property
    def last_time(self) -> float:
        """The newest timestamp the stream holds; NaN when its bars came without any."""
        known = self.times[~np.isnan(self.times)]
        return float(known[-1]) if known.size else float("nan")

    @property
    def nbytes(self) -> int:
        return self.bars.nbytes + self.times.nbytes + STREAM_OVERHEAD_BYTES

    def append(self, bars: np.ndarray, times: np.ndarray | None) -> None:
        """Take in (k, 5) new bars, keeping the last `capacity`; k = 0 (all repeats) changes nothing."""
        if len(bars) == 0:
            return
        # A new contiguous array each time (~4.5 kB at 112 bars): the cache key and the engine read it as is.
        self.bars = np.concatenate([self.bars, bars])[-self.capacity:]
        self.times = np.concatenate([self.times, _times_or_nan(times, len(bars))])[-self.capacity:]
        self.bars_seen += len(bars)


def plan_append(stream: Stream, bars: np.ndarray, times: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The (k, 5) bars and (k,) times of a request that are new to the stream, oldest first.

    Without timestamps every bar is new. With them (strictly increasing within the request), a bar at or before
    the stream's last timestamp must be one the stream holds, with the same values: it is a repeat (a retried
    request) and is skipped. Any other is refused: older than the last bar (`bar_out_of_order`) or the same
    timestamp with other values (`bar_conflict`). Repeats can only lead the request, since its times increase."""
    last = stream.last_time
    if times is None or np.isnan(last):
        return bars, times
    repeats = int(np.searchsorted(times, last, side="right"))  # bars at or before the stream's last
    for row in range(repeats):
        held = np.flatnonzero(stream.times == times[row])
        if held.size == 0:
            raise StreamConflict("bar_out_of_order", f"bar {row} (timestamp {times[row]:.6f}) is older than the "
                                 f"stream's last bar ({last:.6f}) and not one it holds")
        if not np.array_equal(stream.bars[held[-1]], bars[row]):
            raise StreamConflict("bar_conflict", f"bar {row} has the timestamp ({times[row]:.6f}) of a bar the "
                                 "stream holds, with other values; PUT the stream to rewrite its history")
    return bars[repeats:], times[repeats:]


class StreamStore:
    """Streams by id, least recently used first: bounded by `max_streams`, dropped after `idle_s` unused."""

    def __init__(self, max_streams: int, idle_s: float, timer: Callable[[], float] = time.monotonic) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if idle_s <= 0:
            raise ValueError(f"stream idle_s must be > 0, got {idle_s}")
        self.max_streams = max_streams
        self.idle_s = idle_s
        self._timer = timer
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self.counts = {"created": 0, "expired": 0, "evicted": 0, "deleted": 0}

    def __len__(self) -> int:
        return len(self._streams)

    def put(self, stream_id: str, stream: Stream) -> None:
        """Create or reset a stream; the least recently used one goes when the store is full."""
        self._streams.pop(stream_id, None)
        self.expire()
        while len(self._streams) >= self.max_streams:
            self._streams.popitem(last=False)
            self.counts["evicted"] += 1
        stream.last_used = self._timer()
        self._streams[stream_id] = stream
        self.counts["created"] += 1

    def get(self, stream_id: str) -> Stream | None:
        """The stream, marked as used now; None when absent or idle past `idle_s` (then dropped)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        now = self._timer()
        if now - stream.last_used > self.idle_s:
            del self._streams[stream_id]
            self.counts["expired"] += 1
            return None
        stream.last_used = now
        self._streams.move_to_end(stream_id)
        return stream

    def peek(self, stream_id: str) -> Stream | None:
        """The stream without marking it used (GET describes it); None when absent or expired."""
        stream = self._streams.get(stream_id)
        if stream is None or self._timer() - stream.last_used > self.idle_s:
            return None
        return stream

    def idle_seconds(self, stream: Stream) -> float:
        return self._timer() - stream.last_used

    def delete(self, stream_id: str) -> bool:
        deleted = self._streams.pop(stream_id, None) is not None
        self.counts["deleted"] += deleted
        return deleted

    def expire(self) -> int:
        """Drop every stream idle past `idle_s`; returns how many. The front is the idlest: stop at a fresh one."""
        cutoff = self._timer() - self.idle_s
        dropped = 0
        while self._streams and next(iter(self._streams.values())).last_used < cutoff:
            self._streams.popitem(last=False)
            dropped += 1
        self.counts["expired"] += dropped
        return dropped

    def evict_oldest(self, count: int) -> int:
        """Drop the `count` least recently used streams (memory pressure); returns how many went."""
        dropped = 0
        while self._streams and dropped < count:
            self._streams.popitem(last=False)
            dropped += 1
        self.counts["evicted"] += dropped
        return dropped

    def nbytes(self) -> int:
        """Bytes the streams hold (arrays and a per-stream overhead): part of the replica's RSS that the memory
        guard limits, reported in /v1/health."""
        return sum(stream.nbytes for stream in self._streams.values())

    def stats(self) -> dict[str, float]:
        return {"count": len(self._streams), "max_streams": self.max_streams, "idle_s": self.idle_s,
                "bytes": self.nbytes(), **self.counts}


def _times_or_nan(times: np.ndarray | None, count: int) -> np.ndarray:
    """(count,) float64 epoch seconds; NaN for bars that came without timestamps."""
    if times is None:
        return np.full(count, np.nan)
    return np.asarray(times, dtype=np.float64)
