"""HTTP request and response models of the serving API, and the checks on bars.

    POST /v1/predict        PredictRequest  -> PredictResponse
    POST /v1/predict/batch  BatchRequest    -> BatchResponse
    GET  /v1/health         HealthResponse
    GET  /v1/model          ModelSummary
    any 4xx/5xx             ErrorResponse   {"error": code, "field": "bars[12]" | null, "detail": "..."}

Bars come as rows `[[open, high, low, close, volume], ...]` (oldest first) or as columns
`{"open": [...], "high": [...], "low": [...], "close": [...], "volume": [...]}`, whose keys match in any case
(`Open`, `CLOSE`) as file headers do (`data.ohlcv.column_key`). Pydantic checks the structure (types, row
length, unknown fields); `check_bars` then checks what needs the model or the server's limits (how many bars,
serve.max_price_ratio) and the values themselves with `data.ohlcv.find_bar_problem`, the same check the file
loader applies, so the server and `hrm data` reject the same bars. JSON has no NaN literal, but Python's
json module reads `NaN` and `Infinity` tokens, so the value check is what catches them.

The OpenAPI examples (`predict_examples`, `batch_examples`, the response models' `examples`) are real
requests: EXAMPLE_BARS bars cover the default model's bars_needed, so "Try it out" on /docs gets a 200 (from a
server without a bearer token: the schema declares no security scheme).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, model_validator

from hrm_platform.actions import ACTIONS
from hrm_platform.data.ohlcv import BAR_COLUMNS, bars_valid, column_key, find_bar_problem

Action = Literal[ACTIONS]  # "hold", "buy", "sell"
Number = Annotated[float, Strict()]  # JSON numbers only: "1.5" as a string is rejected, not coerced
BarRow = Annotated[list[Number], Field(min_length=5, max_length=5, description="[open, high, low, close, volume]")]
ROWS_TAG, COLUMNS_TAG = "rows", "columns"
MAX_BATCH_REQUESTS = 256  # /v1/predict/batch; its body limit is serve.max_batch_body_bytes, sized for this many
EXAMPLE_BARS = 128  # bars in the OpenAPI examples: >= bars_needed of the default model (112) and the smoke preset (64)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BarColumns(_Strict):
    """Bars as five equal-length columns, oldest first. Keys match in any case: `Open`, `CLOSE` and `close` are
    the same column (one of them per column)."""

    open: list[Number]
    high: list[Number]
    low: list[Number]
    close: list[Number]
    volume: list[Number]

    @model_validator(mode="before")
    @classmethod
    def _keys_in_any_case(cls, value: Any) -> Any:
        """{"Open": [...], "CLOSE": [...]} -> {"open": ..., "close": ...}. A key that names no column stays as sent,
        so the unknown-field error names it as the client wrote it."""
        if not isinstance(value, dict):
            return value
        renamed: dict[Any, Any] = {}
        for key, column in value.items():
            name = column_key(key) if column_key(key) in BAR_COLUMNS else key
            if name in renamed:
                raise ValueError(f"column {name!r} is given twice (keys match in any case)")
            renamed[name] = column
        return renamed

    @model_validator(mode="after")
    def _equal_lengths(self) -> BarColumns:
        lengths = {name: len(getattr(self, name)) for name in BAR_COLUMNS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns must have equal lengths, got {lengths}")
        return self


def _bars_layout(value: Any) -> str | None:
    if isinstance(value, list):
        return ROWS_TAG
    if isinstance(value, dict | BarColumns):
        return COLUMNS_TAG
    return None


Bars = Annotated[
    Annotated[list[BarRow], Tag(ROWS_TAG)] | Annotated[BarColumns, Tag(COLUMNS_TAG)],
    Discriminator(
        _bars_layout,
        custom_error_type="bars_layout",
        custom_error_message="bars must be a list of [open, high, low, close, volume] rows or an object of "
        "equal-length columns open, high, low, close, volume",
    ),
]


def bars_to_array(bars: list[list[float]] | BarColumns) -> np.ndarray:
    """Parsed `Bars` in either layout -> (N, 5) float64 in BAR_COLUMNS order (also the stream routes')."""
    if isinstance(bars, BarColumns):
        return np.column_stack([np.asarray(getattr(bars, name), dtype=np.float64) for name in BAR_COLUMNS])
    return np.asarray(bars, dtype=np.float64).reshape(-1, len(BAR_COLUMNS))


class PredictRequest(_Strict):
    """One decision request: recent bars (oldest first) and the current position."""

    bars: Bars
    position: float = Field(
        0.0, ge=-1.0, le=1.0, allow_inf_nan=False,
        description="current position as a fraction of the maximum: -1 full short .. 0 flat .. 1 full long",
    )
    max_segments: int | None = Field(
        None, ge=1, description="ACT segment budget (capped at the model's maximum); null = the model's maximum"
    )
    deadline_ms: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="latency budget; the server turns it into a segment budget from its measured segment time",
    )

    def bars_array(self) -> np.ndarray:
        """(N, 5) float64 in BAR_COLUMNS order, whichever layout the client used."""
        return bars_to_array(self.bars)


class BatchRequest(_Strict):
    requests: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH_REQUESTS)


class PredictResponse(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "action": "buy", "quantity": 0.42, "confidence": 0.81,
        "probabilities": {"hold": 0.1, "buy": 0.81, "sell": 0.09}, "segments": 2, "cached": False,
        "model_version": "6ed127efcf54", "latency_ms": 1.9, "target_position": 0.42, "trade": 0.17,
    }]})

    action: Action
    quantity: float = Field(description="fraction of the maximum position to hold, 0..1")
    confidence: float
    probabilities: dict[str, float]
    segments: int = Field(description="ACT segments this answer used")
    cached: bool
    model_version: str
    latency_ms: float = Field(description="time spent in the server for this request")
    target_position: float = Field(description="+quantity (buy), -quantity (sell), 0 (hold = flat), as in the backtest")
    trade: float = Field(description="target_position - position: what to buy (+) or sell (-) now")


class BatchResponse(_Strict):
    responses: list[PredictResponse]


class ErrorResponse(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": "invalid_request", "field": "bars[111]",
        "detail": "bar 111 (0 = oldest): high is more than 10x above or below the median close (100.4) of the bars: "
        "an implausible jump",
    }]})

    error: str = Field(description="machine-readable code, e.g. invalid_request, body_too_large, unauthorized")
    field: str | None = Field(None, description="the offending field, e.g. bars[12] or position")
    detail: str


class HealthResponse(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "ok", "model_version": "6ed127efcf54", "variant": "jit_int8", "replica": "r7k2p9xq",
        "memory": {"directive": "ok", "cleanups": 0, "rss_bytes": 451_000_000, "gpu_bytes": None,
                   "limit_bytes": 4_294_967_296, "soft_bytes": 3_650_722_201},
        "cache": {"hits": 12, "misses": 30, "evictions": 0, "expirations": 5, "size": 25, "maxsize": 1000,
                  "ttl_s": 2.0},
        "engine_calls": {"inline": 20, "batched": 3, "batched_rows": 10, "largest_batch": 5}, "reload_error": None,
        "streams": {"count": 40, "max_streams": 10000, "idle_s": 900.0, "bytes": 205_000, "created": 41,
                    "expired": 1, "evicted": 0, "deleted": 0},
    }]})

    status: Literal["ok", "shedding", "loading"]
    model_version: str | None
    variant: str | None
    replica: str
    memory: dict[str, Any]
    cache: dict[str, float]
    engine_calls: dict[str, int] = Field(
        default_factory=dict, description="inline (a lone miss), batched (calls, rows, largest) since start"
    )
    reload_error: str | None = Field(None, description="why the last checkpoint reload failed (old model kept)")
    engine_process: Literal["loading", "ready", "failed", "exited", "closed"] | None = Field(
        None, description="the engine process computing batches (serve.engine_process); null when off or on a GPU"
    )
    streams: dict[str, float] = Field(
        default_factory=dict, description="streams this replica holds (/v1/streams), their bytes and what left"
    )


class ModelSummary(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model_version": "6ed127efcf54", "variant": "jit_int8", "checkpoint": "runs/demo/epoch_0002",
        "created_at": "2026-12-01T09:30:00+00:00", "git_revision": "3f2a9c1", "epoch": 2, "bars_needed": 112,
        "window": 64, "max_segments": 4, "features": ["ret_1", "ret_4", "ret_16", "ret_48", "volume_z"],
        "metrics": {"epoch": 2, "val_loss": 0.98, "val_accuracy": 0.47},
    }]})

    model_version: str
    variant: str
    checkpoint: str
    created_at: str | None
    git_revision: str | None
    epoch: int | None
    bars_needed: int
    window: int
    max_segments: int
    features: list[str]
    metrics: dict[str, Any]


class InvalidRequest(ValueError):
    """A request that is well-formed JSON but cannot be answered; becomes a 422 ErrorResponse."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def check_bars(bars: np.ndarray, bars_needed: int, max_bars: int, max_price_ratio: float, field: str = "bars") -> None:
    """Raise InvalidRequest naming the field when the bars are too few, too many, not valid OHLCV, or hold a price
    more than max_price_ratio from their median close (serve.max_price_ratio)."""
    count = bars.shape[0]
    if count < bars_needed:
        raise InvalidRequest(field, f"got {count} bars; this model needs at least {bars_needed}")
    if count > max_bars:
        raise InvalidRequest(field, f"got {count} bars; at most {max_bars} are accepted per request")
    if bars_valid(bars, max_price_ratio):  # the common case, checked in a few reductions
        return
    problem = find_bar_problem(bars, max_price_ratio)
    if problem is not None:
        row, what = problem
        raise InvalidRequest(f"{field}[{row}]", f"bar {row} (0 = oldest): {what}")


# ----------------------------------------------------------------------------------------- OpenAPI examples


def example_bars(count: int = EXAMPLE_BARS) -> list[list[float]]:
    """A calm, deterministic path near 100 as rows [open, high, low, close, volume], oldest first, 2 decimals."""
    steps = np.arange(count + 1)
    path = 100.0 + 2.0 * np.sin(steps / 9.0) + 0.02 * steps  # (count + 1,): path[i] opens bar i, path[i + 1] closes it
    opens, closes = path[:-1], path[1:]
    highs = np.maximum(opens, closes) + 0.15  # the 0.15 wick survives rounding: high >= open, close >= low
    lows = np.minimum(opens, closes) - 0.15
    volumes = 1500.0 + 500.0 * np.cos(steps[1:] / 5.0)
    return np.round(np.column_stack([opens, highs, lows, closes, volumes]), 2).tolist()


def predict_examples() -> dict[str, dict[str, Any]]:
    """Named request examples of POST /v1/predict (FastAPI's openapi_examples): both layouts and a budget."""
    rows = example_bars()
    columns = {name.capitalize(): [row[i] for row in rows] for i, name in enumerate(BAR_COLUMNS)}
    return {
        "rows": {"summary": "bars as rows, holding a quarter long", "value": {"bars": rows, "position": 0.25}},
        "columns": {"summary": "bars as columns (keys in any case)", "value": {"bars": columns, "position": 0.0}},
        "budget": {
            "summary": "at most 2 ACT segments and 5 ms",
            "value": {"bars": rows, "position": -0.5, "max_segments": 2, "deadline_ms": 5.0},
        },
    }


def batch_examples() -> dict[str, dict[str, Any]]:
    """A request example of POST /v1/predict/batch: two positions on the same bars."""
    rows = example_bars()
    requests = [{"bars": rows, "position": 0.0}, {"bars": rows, "position": 1.0}]
    return {"two": {"summary": "two requests, answered in order", "value": {"requests": requests}}}


def decision_response(
    prediction: Any, *, position: float, cached: bool, model_version: str, latency_ms: float
) -> PredictResponse:
    """The engine's Prediction as the HTTP answer for a caller holding `position` (the trade is from it)."""
    return PredictResponse(
        action=prediction.action,
        quantity=prediction.quantity,
        confidence=prediction.confidence,
        probabilities=prediction.probabilities,
        segments=prediction.segments,
        cached=cached,
        model_version=model_version,
        latency_ms=latency_ms,
        target_position=prediction.target_position,
        trade=prediction.target_position - position,
    )


def field_name(location: tuple[Any, ...] | list[Any]) -> str | None:
    """Pydantic/FastAPI error location -> 'requests[2].bars[3]'; drops 'body' or 'path' and the layout tags."""
    name, previous = "", None
    for part in location:
        skip = (previous is None and part in ("body", "path")) or (
            previous == "bars" and part in (ROWS_TAG, COLUMNS_TAG)
        )
        previous = part
        if not skip:
            name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None
