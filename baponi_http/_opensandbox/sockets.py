"""What the WebSocket handlers of execd share."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import anyio
from starlette.websockets import WebSocketDisconnect


async def first_to_end(*parts: Callable[[], Awaitable[None]]) -> None:
    """Run ``parts`` at once until one of them ends (or its client goes): the others
    are cancelled then."""
    async with anyio.create_task_group() as tasks:
        for part in parts:
            tasks.start_soon(_then_cancel, part, tasks.cancel_scope)


async def _then_cancel(part: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
    try:
        with contextlib.suppress(WebSocketDisconnect):
            await part()
    finally:
        scope.cancel()
