"""HTTP request and response models of the serving API, and the checks on bars.

    POST /v1/predict        PredictRequest  -> PredictResponse
    POST /v1/predict/batch  BatchRequest    -> BatchResponse
    GET  /v1/health         HealthResponse
    GET  /v1/model          ModelSummary
    any 4xx/5xx             ErrorResponse   {"error": code, "field": "bars[12]" | null, "detail": "..."}

Bars come as rows `[[open, high, low, close, volume], ...]` (oldest first) or as columns
`{"open": [...], "high": [...], "low": [...], "close": [...], "volume": [...]}`. Pydantic checks the
structure (types, row length, unknown fields); `check_bars` then checks what needs the model or the server's
limits (how many bars) and the values themselves with `data.ohlcv.find_bar_problem`, the same check the file
loader applies, so the server and `hrm data` reject the same bars. JSON has no NaN literal, but Python's
json module reads `NaN` and `Infinity` tokens, so the value check is what catches them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, model_validator

from hrm_platform.actions import ACTIONS
from hrm_platform.data.ohlcv import BAR_COLUMNS, find_bar_problem

Action = Literal[ACTIONS]  # "hold", "buy", "sell"
Number = Annotated[float, Strict()]  # JSON numbers only: "1.5" as a string is rejected, not coerced
BarRow = Annotated[list[Number], Field(min_length=5, max_length=5, description="[open, high, low, close, volume]")]
ROWS_TAG, COLUMNS_TAG = "rows", "columns"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BarColumns(_Strict):
    """Bars as five equal-length columns, oldest first."""

    open: list[Number]
    high: list[Number]
    low: list[Number]
    close: list[Number]
    volume: list[Number]

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
        if isinstance(self.bars, BarColumns):
            return np.column_stack([np.asarray(getattr(self.bars, name), dtype=np.float64) for name in BAR_COLUMNS])
        return np.asarray(self.bars, dtype=np.float64).reshape(-1, len(BAR_COLUMNS))


class BatchRequest(_Strict):
    requests: list[PredictRequest] = Field(min_length=1, max_length=256)


class PredictResponse(_Strict):
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
    error: str = Field(description="machine-readable code, e.g. invalid_request, body_too_large, unauthorized")
    field: str | None = Field(None, description="the offending field, e.g. bars[12] or position")
    detail: str


class HealthResponse(_Strict):
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


class ModelSummary(_Strict):
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


def check_bars(bars: np.ndarray, bars_needed: int, max_bars: int, field: str = "bars") -> None:
    """Raise InvalidRequest naming the field when the bars are too few, too many or not valid OHLCV."""
    count = bars.shape[0]
    if count < bars_needed:
        raise InvalidRequest(field, f"got {count} bars; this model needs at least {bars_needed}")
    if count > max_bars:
        raise InvalidRequest(field, f"got {count} bars; at most {max_bars} are accepted per request")
    problem = find_bar_problem(bars)
    if problem is not None:
        row, what = problem
        raise InvalidRequest(f"{field}[{row}]", f"bar {row} (0 = oldest): {what}")


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
    """Pydantic/FastAPI error location -> 'requests[2].bars[3]'; drops 'body' and the layout tags."""
    name, previous = "", None
    for part in location:
        skip = (previous is None and part == "body") or (previous == "bars" and part in (ROWS_TAG, COLUMNS_TAG))
        previous = part
        if not skip:
            name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None
