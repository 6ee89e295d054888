"""The error hierarchy. Adapters map it once each to their wire form."""

from __future__ import annotations


class BaponiError(Exception):
    """A refusal with a public code and message; never carries host details."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(BaponiError):
    status, code = 400, "validation_error"


class Unauthorized(BaponiError):
    status, code = 401, "unauthorized"


class Forbidden(BaponiError):
    status, code = 403, "forbidden"


class NotFound(BaponiError):
    status, code = 404, "not_found"


class Conflict(BaponiError):
    status, code = 409, "conflict"


class RateLimited(BaponiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(BaponiError):
    status, code = 500, "internal_error"


class Unavailable(BaponiError):
    status, code = 503, "service_unavailable"
