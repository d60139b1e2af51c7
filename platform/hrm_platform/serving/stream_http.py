"""The stream routes (/v1/streams), added to the app by `http.create_api`; the replica's `streams` answers them.

    PUT    /v1/streams/{stream_id}       create or reset from history -> the decision for its last bar
    POST   /v1/streams/{stream_id}/bars  one or more new bars          -> the decision for the newest bar
    GET    /v1/streams/{stream_id}       the stream's state
    DELETE /v1/streams/{stream_id}       forget it

Besides the errors of every route (401, 413, 415, 422, 503 as for /v1/predict; a bad stream id is a 422 naming
`stream_id`), a stream request can get 409 `StreamErrorResponse`: `stream_unknown` (this replica holds no such
stream: PUT it again with `bars_needed` bars, which the body names), `bar_out_of_order` or `bar_conflict`.

Each request should repeat its id in the `X-Stream-Id` header (ingress.STREAM_ID_HEADER): HAProxy hashes that
header to pick the replica, so a stream's requests reach the replica that holds it. One whose header names
another stream gets 400 `stream_id_mismatch`: it was routed as that other stream, to a replica that may hold a
stale copy of this one, and answering would let two copies of one stream drift apart. Without the header it is
answered wherever it lands (round robin, so the client re-seeds often). `X-Stream-Generation` (optional, see
stream_service.py) names the PUT a request builds on, so that a stale copy of the stream is refused (409).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Path, Request
from fastapi.responses import JSONResponse

from hrm_platform.config import ServeConfig
from hrm_platform.serving.ingress import STREAM_ID_HEADER
from hrm_platform.serving.schemas import ErrorResponse
from hrm_platform.serving.stream_schemas import (
    STREAM_ID_DESCRIPTION,
    STREAM_ID_MAX_LENGTH,
    STREAM_ID_PATTERN,
    StreamBars,
    StreamCreate,
    StreamDecision,
    StreamDeleted,
    StreamErrorResponse,
    StreamInfo,
    append_examples,
    create_examples,
)
from hrm_platform.serving.stream_service import STREAM_GENERATION_HEADER
from hrm_platform.serving.streams import StreamConflict

STREAMS_PREFIX = "/v1/streams"
CONFLICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": StreamErrorResponse, "description": "stream_unknown, bar_out_of_order or bar_conflict"},
}
MISMATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": f"invalid_json, or stream_id_mismatch: {STREAM_ID_HEADER} names "
          "another stream than the path"},
}
StreamId = Annotated[str, Path(min_length=1, max_length=STREAM_ID_MAX_LENGTH, pattern=STREAM_ID_PATTERN,
                               description=STREAM_ID_DESCRIPTION, examples=["AAPL-1m"])]
RoutedAs = Annotated[str | None, Header(
    alias=STREAM_ID_HEADER, description="the path's stream id again: the HAProxy ingress routes a stream's requests "
    "to the replica that holds it by this header (without it they go round robin and re-seed often)",
)]

Generation = Annotated[str | None, Header(
    alias=STREAM_GENERATION_HEADER, max_length=STREAM_ID_MAX_LENGTH,
    description="optional: the client's token for the PUT that seeded the stream, sent again with every later "
    "request; a replica whose copy comes from another PUT (stale: the stream was re-seeded elsewhere) answers 409 "
    "stream_unknown instead of deciding on old bars",
)]


class StreamHeaderMismatch(Exception):
    """A stream request whose X-Stream-Id header names another stream; becomes 400 stream_id_mismatch."""

    def __init__(self, stream_id: str, routed_as: str) -> None:
        super().__init__(
            f"{STREAM_ID_HEADER} {routed_as!r} differs from the path's stream id {stream_id!r}: the ingress routes by "
            f"the header, so this request may have reached another stream's replica; send {STREAM_ID_HEADER}: "
            f"{stream_id}"
        )


async def routed_stream_id(stream_id: StreamId, routed_as: RoutedAs = None) -> str:
    """The path's stream id, once the X-Stream-Id header (when sent) names the same stream. Async on purpose:
    FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request (~1 ms on 2 busy cores)."""
    if routed_as is not None and routed_as != stream_id:
        raise StreamHeaderMismatch(stream_id, routed_as)
    return stream_id


CheckedStreamId = Annotated[str, Depends(routed_stream_id)]


def add_stream_routes(
    api: FastAPI, streams_of: Callable[[], Any], serve: ServeConfig, takes_json: dict[str, Any],
    started: Callable[[Request], float],
) -> None:
    """`streams_of()`: the service's StreamService (looked up per request: a fake service without one still
    builds the app). `takes_json`: the JSON-body dependency and its documented 415; `started`: the request's
    arrival time, as for /v1/predict."""
    path = STREAMS_PREFIX + "/{stream_id}"
    creates_json = {**takes_json, "responses": {**takes_json["responses"], **MISMATCH_RESPONSES}}
    appends_json = {**creates_json, "responses": {**creates_json["responses"], **CONFLICT_RESPONSES}}

    @api.put(path, response_model=StreamDecision, summary="Create or reset a stream from its history",
             description=create_description(serve), **creates_json)
    async def create_stream(
        stream_id: CheckedStreamId, request: Annotated[StreamCreate, Body(openapi_examples=create_examples())],
        http_request: Request, generation: Generation = None,
    ) -> StreamDecision:
        return await streams_of().create(stream_id, request, started(http_request), generation)

    @api.post(path + "/bars", response_model=StreamDecision, summary="New bars in, a decision for the newest out",
              description=APPEND_DESCRIPTION, **appends_json)
    async def append_bars(
        stream_id: CheckedStreamId, request: Annotated[StreamBars, Body(openapi_examples=append_examples())],
        http_request: Request, generation: Generation = None,
    ) -> StreamDecision:
        return await streams_of().append(stream_id, request, started(http_request), generation)

    @api.get(path, response_model=StreamInfo, summary="A stream's state", description=GET_DESCRIPTION,
             responses={**MISMATCH_RESPONSES, **CONFLICT_RESPONSES})
    async def describe_stream(stream_id: CheckedStreamId, generation: Generation = None) -> StreamInfo:
        return streams_of().describe(stream_id, generation)

    @api.delete(path, response_model=StreamDeleted, summary="Forget a stream", description=DELETE_DESCRIPTION,
                responses=MISMATCH_RESPONSES)
    async def delete_stream(stream_id: CheckedStreamId) -> StreamDeleted:
        return streams_of().delete(stream_id)

    @api.exception_handler(StreamConflict)
    async def conflict(_: Request, error: StreamConflict) -> JSONResponse:
        body = StreamErrorResponse(error=error.error, detail=error.detail, bars_needed=error.bars_needed)
        return JSONResponse(body.model_dump(), status_code=409)

    @api.exception_handler(StreamHeaderMismatch)
    async def mismatch(_: Request, error: StreamHeaderMismatch) -> JSONResponse:
        body = ErrorResponse(error="stream_id_mismatch", field=STREAM_ID_HEADER, detail=str(error))
        return JSONResponse(body.model_dump(), status_code=400)


def create_description(serve: ServeConfig) -> str:
    return (
        "`bars` (either layout of /v1/predict, same checks and 422s): at least `bars_needed` (GET /v1/model); the "
        "stream keeps the last `bars_needed`. Optional: `timestamps` (one per bar, increasing), `position`, and "
        "`max_segments` / `deadline_ms`, which the stream's later requests default to. A PUT on an existing stream "
        "resets it. The answer is /v1/predict's for these bars, plus `stream_id` and `bars_seen`.\n\n"
        f"Send the stream id again in the `{STREAM_ID_HEADER}` header, on every stream request: the ingress routes a "
        "stream's requests to one replica by it (400 `stream_id_mismatch` when it names another stream).\n\n"
        f"Streams live in the replica that answered: one idle for {serve.stream_idle_s:g} s (serve.stream_idle_s) "
        f"is dropped, and past {serve.max_streams} streams (serve.max_streams) the least recently used goes. A "
        "request that reaches a replica without the stream gets 409 `stream_unknown` with `bars_needed`: PUT it "
        "again (the Python client, `hrm_platform.serving.client.StreamClient`, does so from its own buffer)."
    )


APPEND_DESCRIPTION = (
    "One or more new `bars`, oldest first; the answer is /v1/predict's for the stream's last `bars_needed` bars "
    "after them (equal to it: the same checks, cache and engine call), plus `stream_id` and `bars_seen`. "
    "`position`, when given, replaces the stream's; `max_segments` / `deadline_ms` apply to this request only.\n\n"
    "With `timestamps`, a bar at or before the stream's newest one is skipped when the stream holds it with the "
    "same values (a retried request is idempotent), and refused with 409 otherwise: `bar_out_of_order` (older than "
    "the newest) or `bar_conflict` (same timestamp, other values). Without timestamps every bar is new. "
    "409 `stream_unknown` (with `bars_needed`): this replica holds no such stream; PUT it again."
)
GET_DESCRIPTION = (
    "The stream's bar counts, position and budget defaults, newest timestamp and idle time, without touching it "
    "(it still expires). 409 `stream_unknown` when this replica does not hold it."
)
DELETE_DESCRIPTION = (
    "Drops the stream from the replica that answers; `deleted` is false when it held none (deleting twice is "
    "fine). An undeleted stream expires after serve.stream_idle_s without requests."
)
