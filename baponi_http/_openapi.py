"""The OpenAPI 3.1 document of every route the server answers, served at ``/openapi.json``.

The schemas are the wire models' own (pydantic's JSON schema of ``baponi_core._models`` and
``baponi_core._events``); this module holds only the table of operations: which body and
parameters each route takes, what it answers, and which errors it can give. Every error is
the standard body, with the one code of its status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from baponi_core import _limits as limits
from baponi_core._events import KeepaliveEvent, OutputEvent, ResultEvent, StatusEvent
from baponi_core._models import (
    Cancelling,
    Deleted,
    ErrorBody,
    ExecuteRequest,
    ExecutionView,
    FileList,
    FileRequest,
    Health,
    Queued,
    Ready,
    SandboxResult,
    SignedUrl,
)
from baponi_http._errors import HTTP_CODES

VERSION = "3.1.0"
NDJSON = "application/x-ndjson"
BINARY = "application/octet-stream"
REF = "#/components/schemas/{model}"
KEY = "apiKey"  # the security scheme's name
EVENTS = (StatusEvent, OutputEvent, KeepaliveEvent, ResultEvent)
RESPONSES = (
    SandboxResult,
    Queued,
    ExecutionView,
    Cancelling,
    FileList,
    SignedUrl,
    Deleted,
    Health,
    Ready,
    ErrorBody,
    *EVENTS,
)
REQUESTS = (ExecuteRequest, FileRequest)


class Auth(Enum):
    KEY = "key"  # Authorization: Bearer <API key>
    SIGNED = "signed"  # a signed URL: the token in its path is the authorisation
    NONE = "none"


@dataclass(frozen=True)
class Answer:
    """A response of the operation's own (a success, or one that is not the standard error
    body): its description and its body by media type, as a model, a schema, or a whole
    media type object (one with a ``schema``)."""

    description: str
    content: dict[str, type[BaseModel] | dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    answers: dict[int, Answer]
    errors: tuple[int, ...] = ()  # besides those of its auth (401 and 429 for a key)
    auth: Auth = Auth.KEY
    body: dict[str, Any] | None = None  # the request body's content, by media type
    parameters: tuple[dict[str, Any], ...] = ()


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def file_body(*required: str) -> dict[str, Any]:
    """The Files API's one request model, with the fields this endpoint needs (present, and
    not null)."""
    schema = {
        "allOf": [ref(FileRequest)],
        "required": ["id", *required],
        "properties": {name: {"not": {"type": "null"}} for name in required},
    }
    return {"application/json": {"schema": schema}}


def path_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


TRACE_ID = path_parameter(
    "trace_id",
    {"type": "string", "pattern": limits.TRACE_ID_PATTERN.pattern},
    "The execution's trace id; anything else is a 400.",
)
TOKEN = path_parameter(
    "token",
    {"type": "string", "minLength": 1},
    "The signed grant (method, storage root, path, upload size, expiry), as handed out by "
    "upload_url or download_url: it is the authorisation.",
)
PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "With respond-async among its preferences: answer 202 at once and "
    "deliver the result by webhook. Other preferences are ignored (RFC 7240).",
}
AFTER_SEQ = {
    "name": "after_seq",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1, "default": 0},
    "description": "Only the events with a larger seq.",
}
STREAM = {
    "schema": {"type": "string", "description": "One event a line (x-ndjson-line-schema)."},
    "x-ndjson-line-schema": {"$ref": REF.format(model="Event")},
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/v1/sandbox/execute",
        "Run code in a fresh sandbox: inline, streaming (Accept: application/x-ndjson) or "
        "webhook (Prefer: respond-async).",
        {
            200: Answer(
                "The result (inline), or its event stream.",
                {"application/json": SandboxResult, NDJSON: STREAM},
            ),
            202: Answer(
                "Queued: the result goes to webhook_url, or is polled.",
                {"application/json": Queued},
            ),
        },
        errors=(400, 409, 503),
        body={"application/json": {"schema": ref(ExecuteRequest)}},
        parameters=(PREFER,),
    ),
    Operation(
        "get",
        "/v1/executions/{trace_id}",
        "An execution's record.",
        {200: Answer("The record.", {"application/json": ExecutionView})},
        errors=(400, 404),
        parameters=(TRACE_ID,),
    ),
    Operation(
        "get",
        "/v1/executions/{trace_id}/output",
        "An execution's events after after_seq: live while it runs, stored afterwards.",
        {200: Answer("The events; empty once they have expired.", {NDJSON: STREAM})},
        errors=(400, 404),
        parameters=(TRACE_ID, AFTER_SEQ),
    ),
    Operation(
        "post",
        "/v1/executions/{trace_id}/cancel",
        "Cancel a running execution.",
        {200: Answer("The sandbox is being killed.", {"application/json": Cancelling})},
        errors=(400, 404, 409),
        parameters=(TRACE_ID,),
    ),
    Operation(
        "post",
        "/v1/files/list",
        "The files under a path of a thread or volume, recursively.",
        {200: Answer("The entries.", {"application/json": FileList})},
        errors=(400, 404),
        body=file_body(),
    ),
    Operation(
        "post",
        "/v1/files/upload_url",
        "A signed URL to PUT exactly content_length bytes to.",
        {200: Answer("The URL and the headers to send with it.", {"application/json": SignedUrl})},
        errors=(400, 403, 404),
        body=file_body("path", "content_length"),
    ),
    Operation(
        "post",
        "/v1/files/download_url",
        "A signed URL to GET a file from.",
        {200: Answer("The URL.", {"application/json": SignedUrl})},
        errors=(400, 404),
        body=file_body("path"),
    ),
    Operation(
        "delete",
        "/v1/files",
        "Delete a file, a link or a whole directory.",
        {200: Answer("Deleted.", {"application/json": Deleted})},
        errors=(400, 403, 404),
        body=file_body("path"),
    ),
    Operation(
        "get",
        "/v1/files/signed/{token}",
        "Download through a signed URL (local storage).",
        {200: Answer("The file's bytes.", {BINARY: {"type": "string", "format": "binary"}})},
        errors=(403, 404),
        auth=Auth.SIGNED,
        parameters=(TOKEN,),
    ),
    Operation(
        "put",
        "/v1/files/signed/{token}",
        "Upload through a signed URL: exactly the signed number of bytes.",
        {200: Answer("Stored.")},
        errors=(400, 403, 404, 429),
        auth=Auth.SIGNED,
        body={BINARY: {"schema": {"type": "string", "format": "binary"}}},
        parameters=(TOKEN,),
    ),
    Operation(
        "get",
        "/health",
        "Whether the server answers.",
        {200: Answer("It does.", {"application/json": Health})},
        auth=Auth.NONE,
    ),
    Operation(
        "get",
        "/ready",
        "Whether the database, storage and sandbox runtime answer.",
        {200: Answer("They do.", {"application/json": Ready})},
        errors=(503,),
        auth=Auth.NONE,
    ),
    Operation(
        "get",
        "/openapi.json",
        "This document.",
        {200: Answer("OpenAPI 3.1.", {"application/json": {"type": "object"}})},
        auth=Auth.NONE,
    ),
)

ERROR_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    429: {"Retry-After": {"schema": {"type": "integer", "minimum": 0}}},
}
ERROR_MEANINGS = {
    400: "The request is malformed.",
    401: "No API key, or not a valid one.",
    403: "Not allowed: a read-only volume, or a signed URL that does not grant this.",
    404: "Nothing of that name for this caller.",
    409: "Collides with the state: a busy thread, an execution that has ended.",
    429: "A limit: the plan's, the server's, or the failed-key block; see Retry-After.",
    503: "The server cannot serve it now (starting, stopping, a component down).",
}


def document(operations: Sequence[Operation] = OPERATIONS) -> dict[str, Any]:
    """The OpenAPI document of ``operations``."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method] = _operation(operation)
    return {
        "openapi": VERSION,
        "info": {
            "title": "Baponi",
            "version": "1",
            "description": "Baponi's REST API: sandboxed code execution and its files.",
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": _security_schemes()},
        "security": [{KEY: []}],
    }


def _operation(operation: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, answer in operation.answers.items():
        responses[str(status)] = _answer(answer)
    errors = set(operation.errors) | ({401, 429} if operation.auth is Auth.KEY else set())
    for status in sorted(errors):
        responses[str(status)] = _error(status)
    described: dict[str, Any] = {
        "operationId": _operation_id(operation),
        "summary": operation.summary,
        "responses": responses,
    }
    if operation.auth is not Auth.KEY:
        described["security"] = []
    if operation.parameters:
        described["parameters"] = list(operation.parameters)
    if operation.body is not None:
        described["requestBody"] = {"required": True, "content": operation.body}
    return described


def _operation_id(operation: Operation) -> str:
    words = [w for w in operation.path.replace(".", "_").split("/") if w and w != "v1"]
    return "_".join([operation.method, *(w.strip("{}") for w in words)])


def _answer(answer: Answer) -> dict[str, Any]:
    described: dict[str, Any] = {"description": answer.description}
    if answer.content:
        described["content"] = {media: _media(body) for media, body in answer.content.items()}
    return described


def _media(body: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        return body if "schema" in body else {"schema": body}
    return {"schema": ref(body)}


def _error(status: int) -> dict[str, Any]:
    schema = {
        "allOf": [ref(ErrorBody)],
        "properties": {"error": {"const": HTTP_CODES[status]}},
    }
    described: dict[str, Any] = {
        "description": ERROR_MEANINGS[status],
        "content": {"application/json": {"schema": schema}},
    }
    if status in ERROR_HEADERS:
        headers = ERROR_HEADERS[status]
        described["headers"] = {name: {"required": True, **h} for name, h in headers.items()}
    return described


def _schemas() -> dict[str, Any]:
    models = [(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES]
    _, found = models_json_schema(models, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = found["$defs"]
    schemas["Event"] = {
        "oneOf": [ref(event) for event in EVENTS],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                event.model_fields["type"].default: REF.format(model=event.__name__)
                for event in EVENTS
            },
        },
    }
    return schemas


def _security_schemes() -> dict[str, Any]:
    return {
        KEY: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, sk-local-...: `baponi keys create`.",
        }
    }
