"""Refusals of the execd API that its clients tell apart by code (OpenSandbox's own
upper-case codes, ``docs/opensandbox.md``). They are ordinary errors of the hierarchy:
every other one reaches an execd client under the code its class maps to."""

from __future__ import annotations

from baponi_core._errors import BaponiError, Conflict, NotFound, ValidationError


class FileNotFound(NotFound):
    code = "FILE_NOT_FOUND"


class ContextNotFound(NotFound):
    code = "CONTEXT_NOT_FOUND"


class UnknownCommand(NotFound):
    code = "INVALID_REQUEST_BODY"  # execd's code for the status of an unknown command


class MissingQuery(ValidationError):
    code = "MISSING_QUERY"


class InvalidFile(ValidationError):
    code = "INVALID_FILE"


class InvalidFileMetadata(ValidationError):
    code = "INVALID_FILE_METADATA"


class InvalidFileContent(ValidationError):
    code = "INVALID_FILE_CONTENT"


class RuntimeFailure(BaponiError):
    """What execd calls RUNTIME_ERROR: the request is sound, the sandbox could not do it
    (a file that exists already, a command that is no longer running)."""

    status, code = 500, "RUNTIME_ERROR"


class RangeNotSatisfiable(BaponiError):
    status, code = 416, "UNKNOWN"  # execd's own code for it


class NotSupported(Conflict):
    code = "NOT_SUPPORTED"
