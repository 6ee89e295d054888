"""uvicorn's server, draining running executions as soon as a shutdown begins."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette


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
