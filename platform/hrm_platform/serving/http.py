"""The HTTP layer: FastAPI routes, JSON errors, bearer token and body-size limit, independent of Ray.

`create_api(service, serve, auth_token)` builds the FastAPI app around any object with the `Service`
methods. The Serve deployment (serving/app.py) passes itself; unit tests pass a fake. Every error leaves as
`ErrorResponse` JSON:

    401 unauthorized            missing or wrong bearer token (only when a token is configured)
    413 body_too_large          Content-Length or the streamed body over serve.max_body_bytes
                                (serve.max_batch_body_bytes for /v1/predict/batch), before any parsing
    415 unsupported_media_type  a POST body whose Content-Type is not application/json (or +json); none counts
    409 stream_unknown, ...     a stream request this replica cannot apply (serving/stream_http.py)
    422 invalid_request         a field that fails validation; `field` names it (bars[12], position, requests[3].bars)
    400 invalid_json            a body that is not JSON
    503 overloaded              the replica is over its memory limit (Retry-After) or has no model yet

/docs (Swagger UI) and /redoc load their scripts and styles from the app itself (the fastapi-offline
package's copies under DOCS_ASSETS_URL), so they render on a machine with no internet.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Protocol

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hrm_platform.config import ServeConfig
from hrm_platform.serving.errors import (
    JSON_MEDIA_TYPE,
    STARTED_KEY,
    STATUS_CODES,
    error_response,
    http_error_response,
    internal_error_response,
    invalid_request_response,
    started_at,
)
from hrm_platform.serving.lean_path import LeanPredict
from hrm_platform.serving.schemas import (
    MAX_BATCH_REQUESTS,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    InvalidRequest,
    ModelSummary,
    PredictRequest,
    PredictResponse,
    batch_examples,
    field_name,
    predict_examples,
)
from hrm_platform.serving.stream_http import STREAMS_PREFIX, add_stream_routes

PROTECTED_PREFIXES = ("/v1/predict", "/v1/model", STREAMS_PREFIX)  # every route that runs or describes the model
BATCH_PATH = "/v1/predict/batch"
BYTES_PER_BAR = 55  # a real row as JSON, e.g. `[172.216, 172.283, 172.139, 172.262, 12640.5], `: sizes the docs
DOCS_ASSETS_URL = "/docs/assets"
DOCS_ASSETS_PACKAGE = ("fastapi_offline", "static")  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": STATUS_CODES[status]} for status in statuses}


ERROR_RESPONSES = _error_responses(400, 401, 413, 422, 503)  # documented in the OpenAPI schema of every route
JSON_BODY_RESPONSES = _error_responses(415)  # and of the routes that take a body


class Service(Protocol):
    """What the routes call. `started` is time.perf_counter() when the request reached the server."""

    async def predict(self, request: PredictRequest, started: float) -> PredictResponse: ...

    async def predict_batch(self, batch: BatchRequest, started: float) -> BatchResponse: ...

    async def health(self) -> HealthResponse: ...

    def model_summary(self) -> ModelSummary: ...

    streams: Any  # serving.stream_service.StreamService: what the /v1/streams routes call


def create_api(service: Service, serve: ServeConfig, auth_token: str | None) -> FastAPI:
    def front(app: ASGIApp) -> ASGIApp:
        """The token is checked before the body is read, and the body limit holds before the lean path
        (serve.lean_path) reads a prediction's body; what the lean path does not take goes on to `app`."""
        if serve.lean_path:
            app = LeanPredict(app, service=service)
        app = BodyLimit(app, default=ByteLimit(serve.max_body_bytes, "serve.max_body_bytes"),
                        by_path={BATCH_PATH: ByteLimit(serve.max_batch_body_bytes, "serve.max_batch_body_bytes")})
        return BearerToken(app, token=auth_token, protected_prefixes=PROTECTED_PREFIXES)

    api = FrontedAPI(
        front=front,
        title="HRM trading decisions",
        version="1",
        description="Raw OHLCV bars in, a hold/buy/sell decision with quantity and confidence out. Send "
        "`Authorization: Bearer <token>` when the server has one (every route but /v1/health).",
        responses=ERROR_RESPONSES,
        docs_url=None,  # FastAPI's own pages load Swagger UI and ReDoc from a CDN: _add_docs serves local copies
        redoc_url=None,
    )
    _add_routes(api, service, serve)
    _add_docs(api)
    _add_error_handlers(api)
    return api


class FrontedAPI(FastAPI):
    """A FastAPI app with `front(app)` wrapped around its whole middleware stack: our own layers (token, body
    limit, lean path) run before Starlette's error middleware and router, so a prediction the lean path answers
    passes through none of FastAPI's layers (on the replica's event loop, the limit on c=32 throughput). Serve
    still sees a FastAPI app: its routes name the request metrics, and /docs is served."""

    def __init__(self, *, front: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        self._front = front
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return self._front(super().build_middleware_stack())


def _add_routes(api: FastAPI, service: Service, serve: ServeConfig) -> None:
    takes_json = {"dependencies": [Depends(require_json)], "responses": JSON_BODY_RESPONSES}

    @api.post("/v1/predict", response_model=PredictResponse, summary="One decision from recent bars",
              description=predict_description(serve), **takes_json)
    async def predict(
        request: Annotated[PredictRequest, Body(openapi_examples=predict_examples())], http_request: Request
    ) -> PredictResponse:
        return await service.predict(request, _started(http_request))

    @api.post(BATCH_PATH, response_model=BatchResponse, summary=f"Up to {MAX_BATCH_REQUESTS} decisions in one call",
              description=batch_description(serve), **takes_json)
    async def predict_batch(
        batch: Annotated[BatchRequest, Body(openapi_examples=batch_examples())], http_request: Request
    ) -> BatchResponse:
        return await service.predict_batch(batch, _started(http_request))

    @api.get("/v1/health", response_model=HealthResponse, summary="Readiness, memory, cache and engine counters",
             description=HEALTH_DESCRIPTION)
    async def health() -> HealthResponse:
        return await service.health()

    @api.get("/v1/model", response_model=ModelSummary, summary="The model being served",
             description=MODEL_DESCRIPTION)
    async def model() -> ModelSummary:
        return service.model_summary()

    add_stream_routes(api, lambda: service.streams, serve, takes_json, started=_started)


def predict_description(serve: ServeConfig) -> str:
    return (
        "Takes `bars`, oldest first, as rows `[[open, high, low, close, volume], ...]` or as columns "
        '`{"open": [...], "high": [...], "low": [...], "close": [...], "volume": [...]}` (column keys in any case: '
        "`Open`, `CLOSE`): at least `bars_needed` of them (GET /v1/model; only the last `bars_needed` matter) and at "
        f"most {serve.max_bars} (serve.max_bars). Optional: `position` (-1 full short .. 1 full long), `max_segments` "
        "(an ACT segment budget), `deadline_ms` (a latency budget). The answer's `trade` is `target_position - "
        "position`.\n\n"
        "Refused with 422 naming the field (`bars[12]`: the bar index, 0 = oldest): NaN or Infinity, a non-positive "
        "price, high < low, open or close outside [low, high], negative volume, and an implausible jump: any price "
        f"more than {serve.max_price_ratio:g}x above or below the median close of the request's bars "
        "(serve.max_price_ratio). The body must be JSON (`Content-Type: application/json`, else 415) of at most "
        f"{serve.max_body_bytes} bytes (serve.max_body_bytes, else 413)."
    )


def batch_description(serve: ServeConfig) -> str:
    bars_each = serve.max_batch_body_bytes // (MAX_BATCH_REQUESTS * BYTES_PER_BAR)
    return (
        f'`{{"requests": [...]}}`: 1 to {MAX_BATCH_REQUESTS} requests, each as for POST /v1/predict, answered in order '
        '`{"responses": [...]}` by one model. A bad item refuses the whole batch with 422 naming it '
        f"(`requests[3].bars[12]`). The body may hold {serve.max_batch_body_bytes} bytes "
        f"(serve.max_batch_body_bytes, else 413): {MAX_BATCH_REQUESTS} requests of about {bars_each} bars each, at "
        f"~{BYTES_PER_BAR} bytes for a bar of real prices such as `[172.216, 172.283, 172.139, 172.262, 12640.5]`."
    )


HEALTH_DESCRIPTION = (
    "No token needed (for probes). `status`: `ok`, `shedding` (over the memory limit: predictions get 503 with "
    "Retry-After) or `loading` (no model yet); the memory guard's view of this replica, the cache counters, the "
    "engine calls (inline and batched), and `reload_error` when the last hot reload failed (the old model serves)."
)
MODEL_DESCRIPTION = (
    "The manifest summary of the model being served: version, engine variant, checkpoint, `bars_needed` (the fewest "
    "bars a request must carry: window + feature lookback), window, ACT segments, features and the latest metrics."
)


def _add_docs(api: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, whose scripts, styles and icon the app serves itself: nothing off-host."""
    api.mount(DOCS_ASSETS_URL, StaticFiles(packages=[DOCS_ASSETS_PACKAGE]), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # a route prefix the app is mounted under
        return get_swagger_ui_html(
            openapi_url=root + api.openapi_url,
            title=f"{api.title} - docs",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # else Swagger UI fetches a badge from swagger.io
        )

    @api.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + api.openapi_url,
            title=f"{api.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _started(request: Request) -> float:
    return started_at(request.scope)


class NotJSON(Exception):
    """A body declared as something other than JSON; becomes a 415 ErrorResponse naming Content-Type."""

    def __init__(self, media_type: str) -> None:
        declared = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        super().__init__(f"{declared}: send the body as {JSON_MEDIA_TYPE} (curl: -H 'Content-Type: {JSON_MEDIA_TYPE}')")


async def require_json(request: Request) -> None:
    """Refuse a body not declared JSON (application/json or application/*+json). curl -d without -H declares a
    form; no Content-Type at all counts as not JSON too. FastAPI would hand either to pydantic as bytes, and the
    client would get a puzzling 422 'Input should be a valid dictionary' with no field."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    main_type, _, subtype = media_type.partition("/")
    if main_type != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise NotJSON(media_type)


# ------------------------------------------------------------------------------------------------ errors


def _add_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", first["msg"])
            return error_response(400, "invalid_json", f"body is not valid JSON: {reason}")
        location = tuple(first["loc"])
        field = field_name(location)
        if first["type"] == "missing" and field is None:
            return error_response(422, "invalid_request", "the body must be a JSON object (see /docs)")
        detail = f"unknown field {field!r}" if first["type"] == "extra_forbidden" else first["msg"]
        return error_response(422, "invalid_request", detail, field=field)

    @api.exception_handler(InvalidRequest)
    async def invalid_request(_: Request, error: InvalidRequest) -> JSONResponse:
        return invalid_request_response(error)

    @api.exception_handler(NotJSON)
    async def not_json(_: Request, error: NotJSON) -> JSONResponse:
        return error_response(415, STATUS_CODES[415], str(error), field="Content-Type")

    @api.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return http_error_response(error)

    @api.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        return internal_error_response(error)


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
        scope[STARTED_KEY] = time.perf_counter()
        if self.expected is not None and scope["path"].startswith(self.protected_prefixes):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = error_response(401, "unauthorized", "missing or wrong bearer token",
                                          field="Authorization", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class ByteLimit:
    max_bytes: int
    setting: str  # the ServeConfig key that sets it, named in the 413 detail

    def detail(self) -> str:
        return f"request body over {self.max_bytes} bytes ({self.setting})"


class BodyLimit:
    """413 before parsing: on a Content-Length over the path's limit, or once the streamed body passes it."""

    def __init__(self, app: ASGIApp, default: ByteLimit, by_path: dict[str, ByteLimit]) -> None:
        self.app = app
        self.default = default
        self.by_path = by_path  # exact paths with their own limit (the batch route's is larger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit.max_bytes):
            await error_response(413, "body_too_large", limit.detail())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing unchanged (other errors become 400).
                    raise HTTPException(413, limit.detail())
            return message

        await self.app(scope, limited_receive, send)

