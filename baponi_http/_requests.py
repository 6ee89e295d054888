"""What every handler needs of its request: the core, the caller, a JSON body."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import HTTPConnection, Request

from baponi_core._app import Core
from baponi_core._errors import ValidationError
from baponi_core._limits import MAX_REQUEST_BYTES
from baponi_core._models import decimal
from baponi_core._records import Principal


def core_of(request: HTTPConnection) -> Core:
    core: Core = request.app.state.core
    return core


async def principal_of(request: Request) -> Principal:
    client = request.client.host if request.client else None
    return await core_of(request).auth.authenticate(request.headers.get("authorization"), client)


async def json_body(request: Request, *, optional: bool = False) -> Any:
    """The request's JSON body; with ``optional``, an empty body is an empty object."""
    declared = decimal(request.headers.get("content-length", ""))
    if declared is not None and declared > MAX_REQUEST_BYTES:
        raise ValidationError("request body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise ValidationError("request body too large")
    if optional and not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ValidationError("request body is not valid JSON") from None
