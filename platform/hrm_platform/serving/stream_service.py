"""What the stream routes call: validate, update the replica's StreamStore, and decide through the replica.

    service = StreamService(store, serve, current_model=replica._current_model, decide=replica.decide)
    await service.create("AAPL-1m", StreamCreate(...), started)   # -> StreamDecision for the history's last bar
    await service.append("AAPL-1m", StreamBars(...), started)     # -> StreamDecision for the newest bar

The decision comes from `decide(model, window, position, settings, started, route)`, the replica's own path
for /v1/predict after its checks (cache key, engine batcher, engine call), on the stream's last bars_needed bars:
a stream's answer is the one /v1/predict gives for the same bars, by construction. Bars pass the checks of
/v1/predict (`check_bars` on a PUT; `find_bar_problem` on the held bars plus the new ones on a POST, reported
with the new bar's index) and get the same 422.

Generations: a client may name each seeding (PUT) of a stream with a token of its own, and send it with every
later request (STREAM_GENERATION_HEADER; `StreamClient` does). A replica whose copy of the stream comes from
another seeding answers 409 stream_unknown, as if it held none: its copy is stale, left behind when the stream
moved to another replica (a restart, a scale-out) and was re-seeded there, and a new bar appended to it would
give a wrong decision with no error. Requests without the token are not checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from hrm_platform.config import ServeConfig
from hrm_platform.data.ohlcv import find_bar_problem
from hrm_platform.serving.schemas import InvalidRequest, PredictResponse, check_bars
from hrm_platform.serving.stream_schemas import StreamBars, StreamCreate, StreamDecision, StreamDeleted, StreamInfo
from hrm_platform.serving.streams import Stream, StreamConflict, StreamSettings, StreamStore, plan_append

STREAM_ROUTE = "stream"  # the latency metric's route tag for stream decisions
STREAM_GENERATION_HEADER = "X-Stream-Generation"  # the client's token for one seeding (PUT) of a stream

# (model, window (bars_needed, 5), position, settings with max_segments/deadline_ms, started, route) -> answer
Decide = Callable[[Any, np.ndarray, float, StreamSettings, float, str], Awaitable[PredictResponse]]


class StreamService:
    """The stream API of one replica. `current_model()` returns the served model (an object with `.engine` and
    `.version`) or raises the 503 of a shedding or loading replica."""

    def __init__(
        self, store: StreamStore, serve: ServeConfig, current_model: Callable[[], Any], decide: Decide
    ) -> None:
        self.store = store
        self._serve = serve
        self._current_model = current_model
        self._decide = decide

    async def create(
        self, stream_id: str, request: StreamCreate, started: float, generation: str | None = None
    ) -> StreamDecision:
        """Create or reset the stream from its history, as `generation`; the decision for the history's last bar."""
        model = self._current_model()
        bars_needed = model.engine.bars_needed
        bars = request.bars_array()
        check_bars(bars, bars_needed, self._serve.max_bars, self._serve.max_price_ratio)  # /v1/predict's 422
        times = request.times_array(len(bars))
        settings = StreamSettings(request.position or 0.0, request.max_segments, request.deadline_ms)
        stream = Stream.seed(bars, times, capacity=bars_needed, settings=settings, generation=generation)
        self.store.put(stream_id, stream)
        return await self._answer(stream_id, stream, model, settings, started)

    async def append(
        self, stream_id: str, request: StreamBars, started: float, generation: str | None = None
    ) -> StreamDecision:
        """Take in new bars (repeats skipped); the decision for the stream's newest bar. 409 stream_unknown when the
        replica holds no such stream, or (with `generation`) a copy from another seeding."""
        model = self._current_model()
        bars = request.bars_array()
        _check_count(len(bars), self._serve.max_bars)
        times = request.times_array(len(bars))
        stream = self._held(stream_id, model.engine.bars_needed, generation)
        new_bars, new_times = plan_append(stream, bars, times)  # 409 on an older or conflicting bar
        _check_new_bars(stream.bars, new_bars, skipped=len(bars) - len(new_bars), ratio=self._serve.max_price_ratio)
        stream.append(new_bars, new_times)
        if request.position is not None:
            stream.settings = dataclasses.replace(stream.settings, position=request.position)
        settings = dataclasses.replace(
            stream.settings,
            max_segments=request.max_segments if request.max_segments is not None else stream.settings.max_segments,
            deadline_ms=request.deadline_ms if request.deadline_ms is not None else stream.settings.deadline_ms,
        )
        return await self._answer(stream_id, stream, model, settings, started)

    def describe(self, stream_id: str, generation: str | None = None) -> StreamInfo:
        stream = self.store.peek(stream_id)
        if stream is None:
            raise stream_unknown(stream_id, bars_needed=None)
        if not self._is_generation(stream, generation):
            raise stream_unknown(stream_id, bars_needed=None, stale=True)
        last = stream.last_time
        return StreamInfo(
            stream_id=stream_id, bars_seen=stream.bars_seen, bars_held=len(stream.bars), bars_needed=stream.capacity,
            position=stream.settings.position, max_segments=stream.settings.max_segments,
            deadline_ms=stream.settings.deadline_ms,
            last_timestamp=_utc_datetime(last),
            idle_s=round(self.store.idle_seconds(stream), 3),
        )

    def delete(self, stream_id: str) -> StreamDeleted:
        return StreamDeleted(stream_id=stream_id, deleted=self.store.delete(stream_id))

    def _held(self, stream_id: str, bars_needed: int, generation: str | None) -> Stream:
        """The stream, or 409 stream_unknown; also when it holds fewer bars than the served model needs (a reload
        to a model with a longer window), and when it comes from another seeding than `generation`."""
        stream = self.store.get(stream_id)
        if stream is None or len(stream.bars) < bars_needed:
            raise stream_unknown(stream_id, bars_needed)
        if not self._is_generation(stream, generation):
            raise stream_unknown(stream_id, bars_needed, stale=True)
        return stream

    def _is_generation(self, stream: Stream, generation: str | None) -> bool:
        """Whether the request may use this copy: it names no generation, or the one the copy was seeded as."""
        return generation is None or stream.generation == generation

    async def _answer(
        self, stream_id: str, stream: Stream, model: Any, settings: StreamSettings, started: float
    ) -> StreamDecision:
        # Read before the await: a concurrent append replaces stream.bars (never writes into it) meanwhile.
        window, bars_seen = stream.bars[-model.engine.bars_needed:], stream.bars_seen  # (bars_needed, 5)
        decision = await self._decide(model, window, settings.position, settings, started, STREAM_ROUTE)
        return StreamDecision(**decision.model_dump(), stream_id=stream_id, bars_seen=bars_seen)


def stream_unknown(stream_id: str, bars_needed: int | None, stale: bool = False) -> StreamConflict:
    bars = f"at least {bars_needed} bars" if bars_needed is not None else "its history (GET /v1/model: bars_needed)"
    held = (f"holds a stale copy of stream {stream_id!r} (another {STREAM_GENERATION_HEADER}: it was re-seeded "
            "elsewhere since)" if stale else f"holds no stream {stream_id!r} (never created here, expired or evicted)")
    return StreamConflict("stream_unknown", f"this replica {held}: PUT /v1/streams/{stream_id} with {bars}",
                          bars_needed)


def _utc_datetime(epoch_s: float) -> datetime | None:
    """None for NaN (bars sent without timestamps) and for an instant before year 1 (pydantic reads
    0001-01-01T00:00+23:59, which UTC cannot hold)."""
    try:
        return None if np.isnan(epoch_s) else datetime.fromtimestamp(epoch_s, timezone.utc)
    except (OverflowError, ValueError, OSError):
        return None


def _check_count(count: int, max_bars: int) -> None:
    if count == 0:
        raise InvalidRequest("bars", "got no bars; send at least one new bar")
    if count > max_bars:
        raise InvalidRequest("bars", f"got {count} bars; at most {max_bars} are accepted per request")


def _check_new_bars(held: np.ndarray, new: np.ndarray, skipped: int, ratio: float) -> None:
    """/v1/predict's value checks on the held bars followed by the new ones, whose index (0 = the request's
    oldest, repeats counted) names the bad bar. The held bars passed before; only the price-jump check, against the
    median close of all of them, can flag one of them again, which is reported as a problem of the request."""
    if len(new) == 0:
        return
    problem = find_bar_problem(np.concatenate([held, new]), ratio)
    if problem is None:
        return
    row, what = problem
    if row < len(held):
        raise InvalidRequest("bars", f"with these bars, held bar {row - len(held)} (-1 = newest) fails: {what}")
    index = row - len(held) + skipped
    raise InvalidRequest(f"bars[{index}]", f"bar {index} (0 = oldest): {what}")
