"""The MCP server's tools for programs embedding Baponi: on their own MCP server over their
own transport (:func:`add_tools`), or as an ASGI app to mount (:func:`mcp_app`)."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from starlette.applications import Starlette

from baponi_core import Embedded, Session
from baponi_core._embedded import internal_core
from baponi_core._session import principal_of
from baponi_http import create_files_app
from baponi_mcp._http import McpEndpoint
from baponi_mcp._server import Caller, register_tools


class SessionAccess:
    """Every call as ``session``'s principal, read at each call (as a key's is)."""

    def __init__(self, session: Session, base_url: str) -> None:
        self._session = session
        self._base_url = base_url

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        core = internal_core(self._session.embedded)
        return Caller(core, await principal_of(self._session), self._base_url)


def add_tools(server: MCPServer[Any], session: Session, files_url: str | None = None) -> None:
    """Register ``sandbox_execute`` and ``files_download`` on ``server`` (the official SDK's
    ``MCPServer``, served however its program serves it), calling as ``session``. Signed
    download URLs point at ``Settings.public_url`` if set, else at ``files_url``: where the
    program serves :func:`baponi_http.rest_app` or :func:`baponi_http.files_app`."""
    base = session.embedded.settings.public_url or files_url
    if base is None:
        raise ValueError(
            "add_tools needs files_url (or Settings.public_url): where the signed file URLs "
            "it hands out are answered"
        )
    register_tools(server, SessionAccess(session, base))


def mcp_app(embedded: Embedded) -> Starlette:
    """MCP over streamable HTTP at the app's root, with the REST API's API keys and
    limits, and the signed-file routes its download URLs point at: what ``baponi serve``
    serves at ``/mcp``, for ``app.mount("/mcp", mcp_app(embedded))`` (POST to ``/mcp/``).
    Its session manager runs while ``embedded`` is open: call this before opening it.
    Host and Origin must be loopback or ``Settings.public_url``'s (DNS-rebinding
    protection)."""
    endpoint = McpEndpoint(embedded.settings, path="/")
    embedded.attach(endpoint.running)
    return create_files_app(internal_core(embedded), [endpoint])
