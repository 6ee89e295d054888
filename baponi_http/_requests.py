"""What every handler needs of its request: the core, the caller, a JSON body."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from baponi_core._app import Core
from baponi_core._errors import ValidationError
from baponi_core._limits import MAX_REQUEST_BYTES
from baponi_core._models import decimal
from baponi_core._records import Principal


def core_of(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


async def principal_of(request: Request) -> Principal:
    client = request.client.host if request.client else None
    return await core_of(request).auth.authenticate(request.headers.get("authorization"), client)


async def json_body(request: Request) -> Any:
    declared = decimal(request.headers.get("content-length", ""))
    if declared is not None and declared > MAX_REQUEST_BYTES:
        raise ValidationError("request body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise ValidationError("request body too large")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ValidationError("request body is not valid JSON") from None
