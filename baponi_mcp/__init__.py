"""The MCP adapter: one server definition (:mod:`baponi_mcp._server`) over the core's
services, served on stdio (:func:`serve_stdio`) and over streamable HTTP at ``/mcp`` of
the REST app (:class:`McpEndpoint`).

For programs embedding Baponi (docs/library.md): :func:`add_tools` (our tools on the
program's own MCP server) and :func:`mcp_app` (the HTTP endpoint, to mount).
"""

from baponi_mcp._embedded import add_tools, mcp_app
from baponi_mcp._http import McpEndpoint
from baponi_mcp._server import Access, Caller, LocalAccess, build_server
from baponi_mcp._stdio import serve_stdio

__all__ = [
    "Access",
    "Caller",
    "LocalAccess",
    "McpEndpoint",
    "add_tools",
    "build_server",
    "mcp_app",
    "serve_stdio",
]
