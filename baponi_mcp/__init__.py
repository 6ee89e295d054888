"""The MCP adapter: one server definition (:mod:`baponi_mcp.server`) over the core's
services, served on stdio by ``baponi-mcp`` (:mod:`baponi_mcp.cli`) and over streamable
HTTP at ``/mcp`` of ``baponi serve`` (:mod:`baponi_mcp.http`)."""

from baponi_mcp.server import Access, Caller, LocalAccess, build_server

__all__ = ["Access", "Caller", "LocalAccess", "build_server"]
