"""How the serving API's errors leave: one ErrorResponse JSON shape, its status codes, and the renderers that
both request paths (the FastAPI routes' exception handlers in http.py, and lean_path.py) use, so that an
error reads the same whichever path answered."""

from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope

from hrm_platform.serving.schemas import ErrorResponse, InvalidRequest

logger = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"
RETRY_AFTER_S = 1
STATUS_CODES = {400: "invalid_json", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_request", 503: "overloaded"}
STARTED_KEY = "hrm.started"  # the ASGI scope key holding time.perf_counter() at the request's arrival


def error_response(status: int, error: str, detail: str, field: str | None = None, headers=None) -> JSONResponse:
    body = ErrorResponse(error=error, field=field, detail=detail).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def invalid_request_response(error: InvalidRequest) -> JSONResponse:
    """422 naming the field, e.g. bars[12]."""
    return error_response(422, STATUS_CODES[422], error.detail, field=error.field)


def http_error_response(error: HTTPException) -> JSONResponse:
    """An HTTPException (503 overloaded with Retry-After, 413, ...) as ErrorResponse JSON."""
    code = STATUS_CODES.get(error.status_code, "error")
    return error_response(error.status_code, code, str(error.detail), headers=error.headers)


def internal_error_response(error: Exception) -> JSONResponse:
    """500 for an error no handler expected, logged with its traceback; the client sees only its type."""
    logger.exception("unhandled error in a request", exc_info=error)
    return error_response(500, "internal_error", f"{type(error).__name__}: the server could not answer")


def overloaded(detail: str) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def started_at(scope: Scope) -> float:
    """When the request reached the server (stamped by http.BearerToken), for latency_ms."""
    return scope.get(STARTED_KEY, time.perf_counter())
