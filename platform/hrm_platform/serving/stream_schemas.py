"""HTTP request and response models of the stream API (serving/stream_http.py has the routes).

    PUT    /v1/streams/{stream_id}       StreamCreate -> StreamDecision   create or reset, decide on the last bar
    POST   /v1/streams/{stream_id}/bars  StreamBars   -> StreamDecision   new bars in, decide on the newest
    GET    /v1/streams/{stream_id}       StreamInfo
    DELETE /v1/streams/{stream_id}       StreamDeleted
    409                                  StreamErrorResponse {"error": "stream_unknown", ..., "bars_needed": 112}

Bars come in either layout of /v1/predict (schemas.Bars) and pass the same checks, with the same 422. Timestamps,
when given, are one per bar, strictly increasing: ISO-8601 strings (no zone = UTC) or Unix seconds (or
milliseconds, as pydantic reads numbers past 2e10).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from pydantic import ConfigDict, Field

from hrm_platform.serving.schemas import (
    Bars,
    ErrorResponse,
    InvalidRequest,
    PredictResponse,
    _Strict,
    bars_to_array,
    example_bars,
)

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"  # safe in a URL path, a log line and a metric tag
STREAM_ID_MAX_LENGTH = 128
STREAM_ID_DESCRIPTION = (
    f"1 to {STREAM_ID_MAX_LENGTH} characters: letters, digits and . _ : - (not first), e.g. AAPL-1m or "
    "binance:BTCUSDT.5m"
)
EXAMPLE_START = datetime(2026, 12, 1, 14, 30, tzinfo=timezone.utc).timestamp()  # the examples' first bar time
EXAMPLE_STEP_S = 60.0


class _StreamRequest(_Strict):
    bars: Bars
    position: float | None = Field(
        None, ge=-1.0, le=1.0, allow_inf_nan=False,
        description="current position, -1 .. 1; kept by the stream for later requests (default 0 at creation)",
    )
    max_segments: int | None = Field(None, ge=1, description="ACT segment budget (as for /v1/predict)")
    deadline_ms: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="latency budget (as for /v1/predict)"
    )
    timestamps: list[datetime] | None = Field(
        None, description="one per bar, strictly increasing: ISO-8601 (no zone = UTC) or Unix seconds; with them "
        "a repeated bar is skipped and an older one refused (409)",
    )

    def bars_array(self) -> np.ndarray:
        """(N, 5) float64 in BAR_COLUMNS order, whichever layout the client used."""
        return bars_to_array(self.bars)

    def times_array(self, count: int) -> np.ndarray | None:
        """(count,) float64 epoch seconds, or None; 422 unless one per bar and strictly increasing."""
        if self.timestamps is None:
            return None
        if len(self.timestamps) != count:
            given = len(self.timestamps)
            raise InvalidRequest("timestamps", f"got {given} timestamps for {count} bars; give one per bar")
        times = np.array([_utc(moment).timestamp() for moment in self.timestamps], dtype=np.float64)
        backwards = np.flatnonzero(np.diff(times) <= 0)
        if backwards.size:
            row = int(backwards[0]) + 1
            raise InvalidRequest(f"timestamps[{row}]", f"timestamp {row} is not after timestamp {row - 1}: "
                                 "timestamps must be strictly increasing, oldest first")
        return times


class StreamCreate(_StreamRequest):
    """History that creates (or resets) a stream: at least bars_needed bars, oldest first."""


class StreamBars(_StreamRequest):
    """One or more new bars, oldest first. `max_segments` and `deadline_ms` apply to this request only."""


class StreamDecision(PredictResponse):
    """The /v1/predict answer for the stream's newest bar, and where the stream stands."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        **PredictResponse.model_config["json_schema_extra"]["examples"][0], "stream_id": "AAPL-1m", "bars_seen": 129,
    }]})

    stream_id: str
    bars_seen: int = Field(
        description="bars the stream has taken in since its PUT, history included; repeats not counted"
    )


class StreamInfo(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "stream_id": "AAPL-1m", "bars_seen": 129, "bars_held": 112, "bars_needed": 112, "position": 0.25,
        "max_segments": 2, "deadline_ms": None, "last_timestamp": "2026-12-01T16:38:00Z", "idle_s": 4.2,
    }]})

    stream_id: str
    bars_seen: int
    bars_held: int = Field(description="bars held for the next decision (the model reads the last bars_needed)")
    bars_needed: int
    position: float
    max_segments: int | None
    deadline_ms: float | None
    last_timestamp: datetime | None = Field(description="the newest bar's timestamp, null when sent without")
    idle_s: float = Field(description="seconds since the stream's last request; it expires after serve.stream_idle_s")


class StreamDeleted(_Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"stream_id": "AAPL-1m", "deleted": True}]}
    )

    stream_id: str
    deleted: bool = Field(description="false when this replica held no such stream (deleting is idempotent)")


class StreamErrorResponse(ErrorResponse):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "error": "stream_unknown", "field": None, "bars_needed": 112,
        "detail": "this replica holds no stream 'AAPL-1m' (never created here, expired or evicted): PUT "
        "/v1/streams/AAPL-1m with at least 112 bars",
    }]})

    bars_needed: int | None = Field(None, description="with stream_unknown: how many bars a PUT must carry")


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


# ----------------------------------------------------------------------------------------- OpenAPI examples


def example_times(count: int, start: float = EXAMPLE_START) -> list[str]:
    """`count` minute bars from `start` as ISO-8601 UTC strings."""
    return [datetime.fromtimestamp(start + i * EXAMPLE_STEP_S, timezone.utc).isoformat() for i in range(count)]


def create_examples() -> dict[str, dict]:
    rows = example_bars()
    return {
        "history": {"summary": "seed with history, flat", "value": {"bars": rows, "position": 0.0}},
        "timestamps": {"summary": "seed with timestamped history and a budget",
                       "value": {"bars": rows, "timestamps": example_times(len(rows)), "position": 0.25,
                                 "max_segments": 2}},
    }


def append_examples() -> dict[str, dict]:
    rows = example_bars()
    following = example_bars(len(rows) + 2)[len(rows):]  # the two bars after the "history" example's
    return {
        "one": {"summary": "one new bar", "value": {"bars": following[:1]}},
        "timestamped": {"summary": "two new bars with timestamps, a new position",
                        "value": {"bars": following, "timestamps": example_times(len(rows) + 2)[len(rows):],
                                  "position": 0.5}},
    }
