"""The lean request path of POST /v1/predict and /v1/predict/batch: JSON body -> typed request -> answer bytes,
without FastAPI's routing, dependency solving and pydantic's per-element validation.

    LeanPredict(app, service)   an ASGI middleware, inside the bearer-token and body-limit ones and outside
                                FastAPI's own stack (http.create_api)

For a POST to either route with a JSON Content-Type and a Content-Length, it reads the body and decodes it with
msgspec straight into `LeanPredictRequest`s: bars as rows of exactly five JSON numbers (not strings, not
booleans), `position` in [-1, 1], `max_segments` >= 1, `deadline_ms` > 0, no unknown field. Such a request is
answered by the same service method as the FastAPI route (`service.predict` / `predict_batch`: the same bar
checks, cache, batching and engine), and the response is serialised by pydantic in one call. Anything msgspec
does not accept, including every malformed or invalid body, bars given as columns, NaN tokens and numbers out of
float range, goes on to the FastAPI route with its body replayed, which parses it exactly as it always has: the
lean path decides nothing about a request it does not take, so its errors are the route's by construction.
Errors raised while answering (a 422 from the bar checks, a 503 while shedding, a 500 for anything unexpected)
are rendered with the same `error_response` as the route's exception handlers, so they are the same JSON.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import msgspec
import numpy as np
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hrm_platform.serving.errors import (
    JSON_MEDIA_TYPE,
    http_error_response,
    internal_error_response,
    invalid_request_response,
    started_at,
)
from hrm_platform.serving.schemas import MAX_BATCH_REQUESTS, InvalidRequest

PREDICT_PATH = "/v1/predict"
BATCH_PATH = "/v1/predict/batch"

Row = tuple[float, float, float, float, float]  # [open, high, low, close, volume]: exactly five numbers


class LeanPredictRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A /v1/predict body in the rows layout, with the constraints of schemas.PredictRequest."""

    bars: list[Row]
    position: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)] = 0.0
    max_segments: Annotated[int, msgspec.Meta(ge=1)] | None = None
    deadline_ms: Annotated[float, msgspec.Meta(gt=0.0)] | None = None

    def bars_array(self) -> np.ndarray:
        """(N, 5) float64 in BAR_COLUMNS order, as PredictRequest.bars_array."""
        flat = itertools.chain.from_iterable(self.bars)  # fromiter over the flat values beats np.array on tuples
        return np.fromiter(flat, dtype=np.float64, count=5 * len(self.bars)).reshape(-1, 5)


class LeanBatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    requests: Annotated[list[LeanPredictRequest], msgspec.Meta(min_length=1, max_length=MAX_BATCH_REQUESTS)]


DECODERS = {PREDICT_PATH: msgspec.json.Decoder(LeanPredictRequest), BATCH_PATH: msgspec.json.Decoder(LeanBatchRequest)}


def decode(path: str, body: bytes) -> LeanPredictRequest | LeanBatchRequest | None:
    """The typed request, or None when the lean path does not take this body (the FastAPI route will)."""
    try:
        return DECODERS[path].decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class LeanPredict:
    """ASGI middleware answering the prediction routes' well-formed requests itself (module docstring)."""

    def __init__(self, app: ASGIApp, service: Any) -> None:
        self.app = app
        self.service = service  # http.Service: predict(request, started), predict_batch(batch, started)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _takes(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        request = decode(route_path(scope), body)
        if request is None:
            await self.app(scope, _replay(body, receive), send)
            return
        response = await self._answer(request, started_at(scope))
        await response(scope, receive, send)

    async def _answer(self, request: LeanPredictRequest | LeanBatchRequest, started: float) -> Response:
        """The service's answer as JSON bytes; its errors as the route's exception handlers render them."""
        try:
            if isinstance(request, LeanBatchRequest):
                answer = await self.service.predict_batch(request, started)
            else:
                answer = await self.service.predict(request, started)
        except InvalidRequest as error:
            return invalid_request_response(error)
        except HTTPException as error:
            return http_error_response(error)
        except Exception as error:  # outside FastAPI's error middleware: answered as its handler would
            return internal_error_response(error)
        return Response(answer.model_dump_json(), media_type=JSON_MEDIA_TYPE)


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the full path and the prefix as root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _takes(scope: Scope) -> bool:
    """A POST to a prediction route, declared JSON, with a Content-Length (bodies sent chunked take the route)."""
    if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in DECODERS:
        return False
    headers = dict(scope["headers"])
    if b"content-length" not in headers:
        return False
    media_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
    return media_type == b"application/json"  # +json types, and the 415 for other types: the route's own check


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the route: the body already read, once, then whatever the server sends next (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
