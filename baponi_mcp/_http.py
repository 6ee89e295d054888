"""Streamable HTTP at ``/mcp`` of ``baponi serve``: the same keys, organisations and limits
as REST.

Stateless, like the reference: every POST is served on its own (``tools/list`` and
``tools/call`` need no ``initialize`` first), so replicas need no sticky sessions. The
Bearer key is checked before the SDK sees the request, by the same authenticator as REST
(failed-key block included); the principal travels in the ASGI scope to the tools.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from baponi_core._app import Core
from baponi_core._config import Settings
from baponi_core._errors import BaponiError, Unauthorized
from baponi_core._limits import MAX_REQUEST_BYTES
from baponi_http import Answer, Operation, app_url, error_for
from baponi_mcp._errors import refusal
from baponi_mcp._server import Caller, build_server

PATH = "/mcp"
PRINCIPAL = "baponi.principal"  # ASGI scope key the authenticated principal travels under
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
OPERATION = Operation(
    "post",
    PATH,
    "MCP over streamable HTTP, stateless: one JSON-RPC message a request (tools/list, "
    "tools/call of sandbox_execute and files_download); see docs/mcp.md.",
    {
        200: Answer(
            "The JSON-RPC response: server-sent events (progress notifications first), or JSON.",
            {"text/event-stream": {"type": "string"}, "application/json": {"type": "object"}},
        ),
        202: Answer("A notification or a response, accepted."),
        400: Answer("Not a JSON-RPC message: a JSON-RPC error, or a plain reason."),
        403: Answer("An Origin that is not this server's."),
        406: Answer("Accept must name application/json and text/event-stream."),
        421: Answer("A Host that is not this server's."),
    },
    body={"application/json": {"schema": {"type": ["object", "array"]}}},
)


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection: the Host (and any Origin) must name this server, as
    loopback or as the configured public URL (behind a proxy or on a real host name)."""
    hosts = [name for host in LOOPBACK for name in (host, f"{host}:*")]
    origins = [f"{scheme}://{name}" for scheme in ("http", "https") for name in hosts]
    if settings.public_url:
        public = urllib.parse.urlsplit(settings.public_url)
        if public.netloc:
            hosts.append(public.netloc)
            origins.append(f"{public.scheme}://{public.netloc}")
            if public.port is None and public.hostname:  # Host may carry the default port
                default = 443 if public.scheme == "https" else 80
                hosts.append(f"{public.netloc}:{default}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


class HttpAccess:
    """The caller of an HTTP request: the principal its key authenticated (set in the
    scope by :class:`McpEndpoint`), the core of the app serving it."""

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        request = ctx.request_context.request
        if not isinstance(request, Request) or PRINCIPAL not in request.scope:
            # Unreachable through McpEndpoint; never fall back to anyone's rights.
            raise refusal(Unauthorized("missing API key: send Authorization: Bearer <key>"))
        core: Core = request.app.state.core
        base_url = core.settings.base_url(app_url(request))
        return Caller(core, request.scope[PRINCIPAL], base_url)


class McpEndpoint:
    """The ASGI app at ``/mcp``: authenticate, then hand over to the SDK's transport. An
    :class:`baponi_http.Extension` of the REST app, which enters :meth:`running`; served
    at ``path`` of the app (the root of :func:`baponi_mcp.mcp_app`'s)."""

    def __init__(self, settings: Settings, path: str = PATH) -> None:
        self.path = path
        self.server = build_server(HttpAccess())
        self.server.streamable_http_app(  # sets up the session manager; its app is unused
            streamable_http_path=PATH,
            stateless_http=True,
            max_request_body_size=MAX_REQUEST_BYTES,
            transport_security=transport_security(settings),
        )

    def routes(self) -> list[BaseRoute]:
        # POST only: stateless, there is no session to end (DELETE) and nothing a GET stream
        # could ever carry, and the SDK would hold such a stream open for good.
        return [Route(self.path, self, methods=["POST"])]

    def operations(self) -> list[Operation]:
        return [dataclasses.replace(OPERATION, path=self.path)]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        core: Core = request.app.state.core
        client = request.client.host if request.client else None
        try:
            principal = await core.auth.authenticate(request.headers.get("authorization"), client)
        except BaponiError as exc:  # 401 (or 429 once blocked), as REST answers it
            await error_for(exc)(scope, receive, send)
            return
        scope[PRINCIPAL] = principal
        await self.server.session_manager.handle_request(scope, receive, send)
