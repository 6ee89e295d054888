"""OpenSandbox's lifecycle API (``/opensandbox/v1/sandboxes...``): thin handlers over the
core's :class:`~baponi_core._sandboxes.service.Sandboxes`. The key comes in
``OPEN-SANDBOX-API-KEY`` (or ``Authorization: Bearer``); every sandbox is its
organisation's, and another's is not found."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from baponi_core._errors import Unauthorized, ValidationError
from baponi_core._models import decimal, parse
from baponi_core._net.policy import NetworkPolicy
from baponi_core._records import Principal, SandboxState
from baponi_core._sandboxes.service import NewSandbox
from baponi_core._sandboxes.wire import (
    CreateSandboxRequest,
    Endpoint,
    NetworkPolicyBody,
    Pagination,
    RenewExpirationRequest,
    RenewExpirationResponse,
    SandboxBody,
    SandboxList,
    timestamp,
)
from baponi_http._requests import core_of, json_body

EXECD_PORT = 44772  # where the SDK finds a sandbox's execd
TOKEN_HEADER = "X-EXECD-ACCESS-TOKEN"  # noqa: S105 (a header name)
MAX_PAGE_SIZE = 200


async def principal_of(request: Request) -> Principal:
    key = request.headers.get("open-sandbox-api-key")
    authorization = f"Bearer {key}" if key else request.headers.get("authorization")
    if not authorization:
        raise Unauthorized("missing API key: send OPEN-SANDBOX-API-KEY: <key>")
    client = request.client.host if request.client else None
    return await core_of(request).auth.authenticate(authorization, client)


def body(model: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(by_alias=True), status_code=status)


async def create(request: Request) -> Response:
    principal = await principal_of(request)
    asked = parse(CreateSandboxRequest, await json_body(request))
    if asked.snapshot_id or asked.template_id:
        raise ValidationError("sandboxes from snapshots or templates are not supported here")
    if asked.image is None:
        raise ValidationError("image.uri is required: the name of one of the server's runtimes")
    if asked.volumes:
        raise ValidationError("volumes are not supported on long-lived sandboxes yet")
    new = NewSandbox(
        runtime=asked.image.uri,
        timeout_s=asked.timeout,
        resources=asked.resource_limits,
        entrypoint=tuple(asked.entrypoint or ()),
        env=asked.env or {},
        metadata=asked.metadata or {},
        network=None if asked.network_policy is None else network_of(asked.network_policy),
    )
    record = await core_of(request).sandboxes.create(principal, new)
    return body(SandboxBody.of(record), 202)


def network_of(policy: NetworkPolicyBody) -> NetworkPolicy:
    """OpenSandbox's egress policy in our terms: deny by default with allow rules is an
    allowlist, allow by default is open minus its deny rules."""
    rules = policy.egress or []
    allow = [r.target for r in rules if r.action == "allow"]
    deny = [r.target for r in rules if r.action == "deny"]
    try:
        if policy.default_action == "allow":
            return NetworkPolicy.of("open", (), deny)
        return NetworkPolicy.of("allowlist", allow, deny) if allow else NetworkPolicy()
    except ValueError as exc:
        raise ValidationError(f"networkPolicy: {exc}") from None


async def list_sandboxes(request: Request) -> Response:
    principal = await principal_of(request)
    query = request.query_params
    try:
        states = [SandboxState(s) for s in query.getlist("state")]
    except ValueError:
        raise ValidationError(
            f"state must be one of {', '.join(s.value for s in SandboxState)}"
        ) from None
    metadata = dict(parse_qsl(query.get("metadata", ""), keep_blank_values=True))
    page, size = _number(query, "page", 1), _number(query, "pageSize", 20)
    if size > MAX_PAGE_SIZE:
        raise ValidationError(f"pageSize is at most {MAX_PAGE_SIZE}")
    records, total = await core_of(request).sandboxes.list(
        principal.org.id, states, metadata, page, size
    )
    pages = math.ceil(total / size)
    return body(
        SandboxList(
            items=[SandboxBody.of(r) for r in records],
            pagination=Pagination(
                page=page,
                pageSize=size,
                totalItems=total,
                totalPages=pages,
                hasNextPage=page < pages,
            ),
        )
    )


def _number(query: Any, name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    number = decimal(text)
    if number is None or not 1 <= number <= 1_000_000:
        raise ValidationError(f"{name} must be a whole number from 1")
    return number


async def get_sandbox(request: Request) -> Response:
    principal = await principal_of(request)
    record = await core_of(request).sandboxes.get(principal.org.id, _id(request))
    return body(SandboxBody.of(record))


async def delete_sandbox(request: Request) -> Response:
    principal = await principal_of(request)
    await core_of(request).sandboxes.delete(principal.org.id, _id(request))
    return Response(status_code=204)


async def pause(request: Request) -> Response:
    principal = await principal_of(request)
    await core_of(request).sandboxes.pause(principal.org.id, _id(request))
    return Response(status_code=202)


async def resume(request: Request) -> Response:
    principal = await principal_of(request)
    await core_of(request).sandboxes.resume(principal.org.id, _id(request))
    return Response(status_code=202)


async def renew(request: Request) -> Response:
    principal = await principal_of(request)
    asked = parse(RenewExpirationRequest, await json_body(request))
    when = asked.expires_at
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    record = await core_of(request).sandboxes.renew(
        principal.org.id, _id(request), when.timestamp()
    )
    return body(RenewExpirationResponse(expiresAt=timestamp(record.expires_at)))


async def endpoint(request: Request) -> Response:
    """How to reach a port of the sandbox: its execd (44772) is served by this server
    under a prefix of the sandbox's own, opened by a token of its own; any other port
    through that execd's ``/proxy/{port}``."""
    principal = await principal_of(request)
    port = request.path_params["port"]
    if not 1 <= port <= 65535:
        raise ValidationError("port must be from 1 to 65535")
    live = core_of(request).sandboxes.live(principal.org.id, _id(request))
    base = f"{request.url.netloc}{request.scope.get('root_path', '')}/execd/{live.id}"
    where = base if port == EXECD_PORT else f"{base}/proxy/{port}"
    return body(Endpoint(endpoint=where, headers={TOKEN_HEADER: live.token}))


def _id(request: Request) -> str:
    sandbox_id: str = request.path_params["sandbox_id"]
    return sandbox_id


ROUTES = [
    Route("/v1/sandboxes", create, methods=["POST"]),
    Route("/v1/sandboxes", list_sandboxes, methods=["GET"]),
    Route("/v1/sandboxes/{sandbox_id}", get_sandbox, methods=["GET"]),
    Route("/v1/sandboxes/{sandbox_id}", delete_sandbox, methods=["DELETE"]),
    Route("/v1/sandboxes/{sandbox_id}/pause", pause, methods=["POST"]),
    Route("/v1/sandboxes/{sandbox_id}/resume", resume, methods=["POST"]),
    Route("/v1/sandboxes/{sandbox_id}/renew-expiration", renew, methods=["POST"]),
    Route("/v1/sandboxes/{sandbox_id}/endpoints/{port:int}", endpoint, methods=["GET"]),
]
