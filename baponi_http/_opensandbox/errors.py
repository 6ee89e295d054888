"""The one mapping from core errors to OpenSandbox's error body, ``{"code", "message"}``,
for both of its APIs. The execd API's own codes (upper case) pass as they are; the
others are named as execd names them."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from baponi_core._errors import BaponiError

log = logging.getLogger(__name__)

CODES = {
    "validation_error": "INVALID_REQUEST_BODY",
    "unauthorized": "UNAUTHORIZED",
    "forbidden": "FORBIDDEN",
    "not_found": "NOT_FOUND",
    "conflict": "CONFLICT",
    "rate_limited": "RATE_LIMITED",
    "service_unavailable": "UNAVAILABLE",
    "internal_error": "UNKNOWN",
}
HTTP_CODES = {400: "INVALID_REQUEST_BODY", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


async def baponi_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BaponiError)
    if exc.status >= 500 and exc.__cause__ is not None:
        log.warning(
            "%s %s: %s (%r)", _method(request), request.url.path, exc.message, exc.__cause__
        )
    return refusal(exc)


def refusal(exc: BaponiError) -> JSONResponse:
    """The body and status of a refusal (also a WebSocket's, before its handshake)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    code = exc.code if exc.code.isupper() else CODES.get(exc.code, "UNKNOWN")
    return error_response(exc.status, code, exc.message, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    code = HTTP_CODES.get(exc.status_code, "UNKNOWN")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", _method(request), request.url.path, exc_info=exc)
    return error_response(500, "UNKNOWN", "internal server error")


def _method(connection: HTTPConnection) -> str:
    """The request's method; a WebSocket has none (its handlers get these errors too)."""
    method: str = connection.scope.get("method", "WEBSOCKET")
    return method


HANDLERS = {BaponiError: baponi_error, HTTPException: http_error, Exception: internal_error}
