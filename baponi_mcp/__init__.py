"""The MCP adapter: one server definition (:mod:`baponi_mcp.server`) over the core's
services, served on stdio (:func:`serve_stdio`) and over streamable HTTP at ``/mcp`` of
the REST app (:class:`McpEndpoint`)."""

from baponi_mcp.http import McpEndpoint
from baponi_mcp.server import Access, Caller, LocalAccess, build_server
from baponi_mcp.stdio import serve_stdio

__all__ = ["Access", "Caller", "LocalAccess", "McpEndpoint", "build_server", "serve_stdio"]
