"""uvicorn's server: draining executions at shutdown for ``baponi serve``, and embedded in
another program's event loop for ``baponi-mcp``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import uvicorn
from starlette.applications import Starlette

from baponi_http._protocol import BoundedHttpTools

EMBEDDED_GRACE_S = 5  # for downloads in flight when the embedding program stops
# A connection idle, or stalled mid-request, for this long is closed (BoundedHttpTools).
IDLE_TIMEOUT_S = 30


class DrainingServer(uvicorn.Server):
    """uvicorn waits for open connections before the application's own shutdown; inline and
    streaming requests stay open until their execution ends, so the drain (finish within the
    grace period, then stop) has to start with the shutdown, not after it."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        core = getattr(self.app.state, "core", None)
        if core is None:  # never started
            await super().shutdown(sockets)
            return
        drain = asyncio.ensure_future(core.executions.drain(core.settings.shutdown_grace_s))
        try:
            await super().shutdown(sockets)
        finally:
            await drain


class EmbeddedServer(uvicorn.Server):
    """A server inside a program that owns the signals (uvicorn would take SIGINT and
    SIGTERM from it) and stdout (uvicorn's access log goes there)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(
    app: Starlette, host: str, port: int, idle_timeout: int = IDLE_TIMEOUT_S
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: any free port) while the block runs; gives the
    server's base URL. The socket listens before the block starts, so the URL works at once.
    A connection idle, or stalled mid-request, for ``idle_timeout`` seconds is closed."""
    sock = socket.create_server((host, port))
    config = uvicorn.Config(
        app,
        lifespan="off",  # the app's state is the embedding program's
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=EMBEDDED_GRACE_S,
        http=BoundedHttpTools,
        timeout_keep_alive=idle_timeout,
    )
    server = EmbeddedServer(config)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(server.serve, [sock])
            try:
                name = f"[{host}]" if ":" in host else host
                yield f"http://{name}:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True
    finally:
        sock.close()
