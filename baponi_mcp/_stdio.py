"""The MCP server over stdio, for Claude Desktop and other local clients: the local user,
trusted, with no API key. Nothing but JSON-RPC goes to stdout.

Download URLs of local storage point at this process: it serves the signed-file routes on
loopback while it runs (a home has one server process, so no ``baponi serve`` can).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from baponi_core._app import Core
from baponi_core._records import Principal
from baponi_http import create_files_app, serving
from baponi_mcp._server import LocalAccess, build_server
from baponi_mcp._stdin import RelayedStdin

log = logging.getLogger(__name__)


async def serve_stdio(core: Core, principal: Principal, files_port: int) -> None:
    """Serve one MCP session on stdio as ``principal``, until the client closes stdin or a
    SIGTERM or SIGINT comes. Running calls are cancelled then, and their sandboxes killed."""
    async with anyio.create_task_group() as tasks:
        stdin = RelayedStdin()
        tasks.start_soon(_end_on_signal, stdin)
        async with _file_server(core, files_port) as files_url:
            log.info("serving MCP on stdio (home: %s, files: %s)", core.settings.home, files_url)
            await build_server(LocalAccess(core, principal, files_url)).run_stdio_async()
        tasks.cancel_scope.cancel()


@asynccontextmanager
async def _file_server(core: Core, port: int) -> AsyncIterator[str]:
    """The signed-file routes on loopback, when storage is local. Cloud URLs are the
    provider's own."""
    if not core.files.serves_urls:
        yield f"http://127.0.0.1:{port}"  # never in a URL: nothing is signed locally
        return
    async with serving(create_files_app(core), "127.0.0.1", port) as url:
        yield url


async def _end_on_signal(stdin: RelayedStdin) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal received: ending the session")
            stdin.end()
