"""The one mapping from core errors to HTTP responses: ``{"error", "message"}`` always."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from baponi_core._errors import BaponiError
from baponi_core._models import ErrorBody

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=code, message=message).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def error_for(exc: BaponiError) -> JSONResponse:
    """The response for a core error."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(exc.status, exc.code, exc.message, headers)


async def baponi_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BaponiError)
    if exc.status >= 500 and exc.__cause__ is not None:  # what the client is not told
        log.warning("%s %s: %s (%r)", request.method, request.url.path, exc.message, exc.__cause__)
    return error_for(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


HANDLERS = {BaponiError: baponi_error, HTTPException: http_error, Exception: internal_error}
