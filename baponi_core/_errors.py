"""The error hierarchy. Adapters map it once each to their wire form."""

from __future__ import annotations


class BaponiError(Exception):
    """A refusal with a public code and message; never carries host details."""

    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None  # seconds after which trying again is worth it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(BaponiError):
    """The request is malformed, or asks for something no caller may have."""

    status, code = 400, "validation_error"


class Unauthorized(BaponiError):
    status, code = 401, "unauthorized"  # no API key, or one that is not (or no more) valid


class Forbidden(BaponiError):
    """The caller may see this, but not change it (a read-only volume), or a signed URL
    does not grant what is asked."""

    status, code = 403, "forbidden"


class NotFound(BaponiError):
    status, code = 404, "not_found"  # nothing of that name for this caller


class Conflict(BaponiError):
    """The request is sound but collides with the state: a busy thread, an execution that
    has already ended, a name already taken."""

    status, code = 409, "conflict"


class RateLimited(BaponiError):
    """A limit of the caller's plan or of the server; worth trying again after
    ``retry_after`` seconds."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(BaponiError):
    """The server cannot serve it now; not the caller's fault. With ``retry_after`` when
    the condition is expected to pass (a database locked by another process)."""

    status, code = 503, "service_unavailable"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoSpace(Unavailable):
    """The server's disk is full: nothing new can be written until space is freed."""

    RETRY_S = 30

    def __init__(self) -> None:
        super().__init__("storage: no free space", retry_after=self.RETRY_S)


class RuntimeMissing(Unavailable):
    """The runtime a profile names is not installed: the operator's to fix (``baponi
    runtimes import``), not the caller's."""

    def __init__(self, name: str) -> None:
        super().__init__(f"runtime {name} is not installed on this server")
        self.name = name


class RuntimeRefused(ValidationError):
    """An image, or a source of one, that cannot be made a runtime (for the operator)."""


class CredentialError(BaponiError):
    """Connector values that cannot be opened (the key file is missing or holds other
    keys, a value is damaged) or injected. For the operator and the log; an execution
    shows it only as its ``credential_mount_error``."""


class CannotStart(Exception):
    """A known reason the server cannot start (a damaged database, a port in use...), for
    the operator: one line, which may name host paths, never a client's to see."""
