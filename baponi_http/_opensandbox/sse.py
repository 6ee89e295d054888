"""execd's event stream: one JSON object per event on one line, followed by a blank line
and no ``data:`` prefix (what execd sends and both SDK parsers read), a ``timestamp`` in
Unix milliseconds on every event, and a ``ping`` every 3 s while nothing else comes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.responses import StreamingResponse

PING_S = 3.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
T = TypeVar("T")


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields, "timestamp": int(time.time() * 1000)}) + "\n\n"


def stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)


async def pinged(source: MemoryObjectReceiveStream[T]) -> AsyncIterator[T | None]:
    """What ``source`` gives until it ends, with None whenever nothing came for
    :data:`PING_S` (a ping is due)."""
    while True:
        with anyio.move_on_after(PING_S) as idle:
            try:
                item = await source.receive()
            except anyio.EndOfStream:
                return
        yield None if idle.cancelled_caught else item
