"""The HTTP layer: FastAPI routes, JSON errors, bearer token and body-size limit, independent of Ray.

`create_api(service, serve, auth_token)` builds the FastAPI app around any object with the `Service`
methods. The Serve deployment (serving/app.py) passes itself; unit tests pass a fake. Every error leaves as
`ErrorResponse` JSON:

    401 unauthorized     missing or wrong bearer token (only when a token is configured)
    413 body_too_large   Content-Length or the streamed body over serve.max_body_bytes, before any parsing
    422 invalid_request  a field that fails validation; `field` names it (bars[12], position, requests[3].bars)
    400 invalid_json     a body that is not JSON
    503 overloaded       the replica is over its memory limit (Retry-After) or has no model yet
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hrm_platform.config import ServeConfig
from hrm_platform.serving.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    InvalidRequest,
    ModelSummary,
    PredictRequest,
    PredictResponse,
    field_name,
)

logger = logging.getLogger(__name__)

PROTECTED_PREFIXES = ("/v1/predict", "/v1/model")  # every route that runs or describes the model
RETRY_AFTER_S = 1
STATUS_CODES = {400: "invalid_json", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large", 422: "invalid_request", 503: "overloaded"}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # documented in the OpenAPI schema of every route
    status: {"model": ErrorResponse, "description": STATUS_CODES[status]} for status in (400, 401, 413, 422, 503)
}


class Service(Protocol):
    """What the routes call. `started` is time.perf_counter() when the request reached the server."""

    async def predict(self, request: PredictRequest, started: float) -> PredictResponse: ...

    async def predict_batch(self, batch: BatchRequest, started: float) -> BatchResponse: ...

    async def health(self) -> HealthResponse: ...

    def model_summary(self) -> ModelSummary: ...


def create_api(service: Service, serve: ServeConfig, auth_token: str | None) -> FastAPI:
    api = FastAPI(
        title="HRM trading decisions",
        version="1",
        description="Raw OHLCV bars in, a hold/buy/sell decision with quantity and confidence out.",
        responses=ERROR_RESPONSES,
    )
    _add_routes(api, service)
    _add_error_handlers(api)
    # Starlette runs the middleware added last first: the token is checked before the body is read.
    api.add_middleware(BodyLimit, max_body_bytes=serve.max_body_bytes)
    api.add_middleware(BearerToken, token=auth_token, protected_prefixes=PROTECTED_PREFIXES)
    return api


def _add_routes(api: FastAPI, service: Service) -> None:
    @api.post("/v1/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest, http_request: Request) -> PredictResponse:
        return await service.predict(request, _started(http_request))

    @api.post("/v1/predict/batch", response_model=BatchResponse)
    async def predict_batch(batch: BatchRequest, http_request: Request) -> BatchResponse:
        return await service.predict_batch(batch, _started(http_request))

    @api.get("/v1/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return await service.health()

    @api.get("/v1/model", response_model=ModelSummary)
    async def model() -> ModelSummary:
        return service.model_summary()


def _started(request: Request) -> float:
    return request.scope.get("hrm.started", time.perf_counter())


# ------------------------------------------------------------------------------------------------ errors


def error_response(status: int, error: str, detail: str, field: str | None = None, headers=None) -> JSONResponse:
    body = ErrorResponse(error=error, field=field, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            return error_response(400, "invalid_json", f"body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
        location = tuple(first["loc"])
        field = field_name(location)
        if first["type"] == "missing" and field is None:
            return error_response(422, "invalid_request", "the body must be a JSON object (see /docs)")
        detail = f"unknown field {field!r}" if first["type"] == "extra_forbidden" else first["msg"]
        return error_response(422, "invalid_request", detail, field=field)

    @api.exception_handler(InvalidRequest)
    async def invalid_request(_: Request, error: InvalidRequest) -> JSONResponse:
        return error_response(422, "invalid_request", error.detail, field=error.field)

    @api.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        code = STATUS_CODES.get(error.status_code, "error")
        return error_response(error.status_code, code, str(error.detail), headers=error.headers)

    @api.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error in a request")
        return error_response(500, "internal_error", f"{type(error).__name__}: the server could not answer")


def overloaded(detail: str) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


# -------------------------------------------------------------------------------------------- middleware


class BearerToken:
    """401 on protected paths without `Authorization: Bearer <token>`; no-op when no token is configured.
    Also stamps the request's arrival time for latency_ms."""

    def __init__(self, app: ASGIApp, token: str | None, protected_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.protected_prefixes = protected_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["hrm.started"] = time.perf_counter()
        if self.expected is not None and scope["path"].startswith(self.protected_prefixes):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(401, "unauthorized", "missing or wrong bearer token",
                                          field="Authorization", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 before parsing: on a Content-Length over the limit, or once the streamed body passes it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._too_large(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException passes through FastAPI's body parsing unchanged (other errors become 400).
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"request body over {self.max_body_bytes} bytes (serve.max_body_bytes)"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, "body_too_large", self._detail())(scope, receive, send)

