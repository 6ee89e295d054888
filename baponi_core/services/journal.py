"""The event log of one running execution: what streaming clients and reconnects read.

Every event gets the next ``seq``. Keepalives are events of the log too, not of one
connection, so that every reader sees the same numbering and can resume after any of them.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator

import anyio

from baponi_core.events import Event, KeepaliveEvent, OutputEvent, ResultEvent, encode
from baponi_core.sandbox.spec import Stream

KEEPALIVE_S = 5.0
COALESCE_S = 0.025  # at most one output event per stream in this window, so tiny writes
# cannot turn into millions of events


class Journal:
    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        self.events: list[Event] = []
        self.closed = False
        self._changed = anyio.Event()
        self._last_event = time.monotonic()
        self._pending: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in self._pending
        }
        self._output = anyio.Event()
        self._last_output = 0.0

    def append(self, event: Event) -> Event:
        if self.closed:
            raise RuntimeError("journal is closed")
        event.seq = len(self.events) + 1
        self.events.append(event)
        self._last_event = time.monotonic()
        self._changed.set()
        self._changed = anyio.Event()
        return event

    def close(self, result: ResultEvent) -> None:
        """Append the final ``result`` event (after any output still waiting)."""
        self.flush_output(final=True)
        self.append(result)
        self.closed = True

    def output(self, stream: Stream, data: bytes) -> None:
        """Take output as the sandbox writes it; :meth:`run` turns it into events."""
        self._pending[stream] += data
        self._output.set()

    def flush_output(self, final: bool = False) -> None:
        for stream, pending in self._pending.items():
            text = self._decoders[stream].decode(bytes(pending), final=final)
            pending.clear()
            if text:
                self.append(OutputEvent(stream=stream, data=text))
        self._last_output = time.monotonic()

    async def run(self) -> None:
        """Emit output events and keepalives until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._emit_output)
            await self._keepalives()

    async def _emit_output(self) -> None:
        while True:
            await self._output.wait()
            self._output = anyio.Event()
            wait = self._last_output + COALESCE_S - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            if not self.closed:
                self.flush_output()

    async def _keepalives(self) -> None:
        while not self.closed:
            idle = time.monotonic() - self._last_event
            if idle >= KEEPALIVE_S:
                self.append(KeepaliveEvent())
                continue
            with anyio.move_on_after(KEEPALIVE_S - idle):
                await self._changed.wait()

    async def follow(self, after_seq: int = 0) -> AsyncIterator[Event]:
        """Events with ``seq > after_seq``, live until the result event."""
        position = max(after_seq, 0)
        while True:
            changed = self._changed
            while position < len(self.events):
                position += 1
                yield self.events[position - 1]
            if self.closed:
                return
            await changed.wait()

    async def lines(self, after_seq: int = 0) -> AsyncIterator[str]:
        """:meth:`follow` as NDJSON lines, as streams and reconnects send them."""
        async for event in self.follow(after_seq):
            yield encode(event) + "\n"
