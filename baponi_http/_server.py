"""uvicorn's server: draining executions at shutdown for ``baponi serve``, and embedded in
another program's event loop for ``baponi-mcp``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

EMBEDDED_GRACE_S = 5  # for downloads in flight when the embedding program stops
# A connection idle, or stalled mid-request, for this long is closed (IdleTimeoutH11).
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


class IdleTimeoutH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, which closes a connection that has not sent a whole
    request head within ``timeout_keep_alive`` seconds of opening, or of its last
    response, or that sends no byte of a request body for as long while the server is
    reading it. uvicorn's own keep-alive timer stops at the first byte, so a client that
    connects and sends nothing, or a few bytes at a time, or a body that never ends,
    would hold the connection (and its memory, and an upload's open file) forever."""

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_body()

    def handle_events(self) -> None:
        super().handle_events()
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._head_timer.cancel()  # a whole request head is in
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _watch_body(self) -> None:
        """Restart the body's clock at each byte of it; stop it once the body is in."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self.timeout_keep_alive, self._body_timeout)

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # The server is not reading (the application has not asked for more, or the
            # client waits to be told to go on): the stall is ours, not the client's.
            self._watch_body()
            return
        self.transport.close()


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
        http=IdleTimeoutH11,
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
