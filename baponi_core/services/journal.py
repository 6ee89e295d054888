"""The event log of one running execution: what streaming clients and reconnects read.

Every event gets the next ``seq``. Keepalives are events of the log too, not of one
connection, so that every reader sees the same numbering and can resume after any of them.

Memory is bounded whatever the readers do: once events are in the store (:meth:`stored`),
the journal keeps only the last WINDOW_BYTES of them, and a reader behind that window
reads the rest from the store (the ``backlog``) in pages before following live again.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from baponi_core.events import Event, KeepaliveEvent, OutputEvent, ResultEvent, pieces, size
from baponi_core.sandbox.spec import Stream

# The stored events after a seq, a page at a time (empty when there are no more).
Backlog = Callable[[int], Awaitable[list[Event]]]

KEEPALIVE_S = 5.0
COALESCE_S = 0.025  # at most one output event per stream in this window, so tiny writes
# cannot turn into millions of events
MAX_OUTPUT_CHARS = 64 << 10  # of one output event: a burst is cut into several
WINDOW_BYTES = 256 << 10  # stored events still kept in memory, for readers close behind


class Journal:
    def __init__(self, trace_id: str, backlog: Backlog | None = None) -> None:
        self.trace_id = trace_id
        self.events: list[Event] = []  # in memory: seq ``first`` onwards
        self.first = 1
        self.closed = False
        self._backlog = backlog  # where evicted events are; without one nothing is evicted
        self._held = 0  # bytes of the events in memory
        self._next = 1
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
        event.seq = self._next
        self._next += 1
        self.events.append(event)
        self._held += size(event)
        self._last_event = time.monotonic()
        self._changed.set()
        self._changed = anyio.Event()
        return event

    def after(self, seq: int) -> list[Event]:
        """The events in memory with a seq above ``seq``."""
        return self.events[max(seq + 1 - self.first, 0) :]

    def stored(self, seq: int) -> None:
        """Events up to ``seq`` are in the store: keep at most WINDOW_BYTES of them, and
        the last event (the result, which every reader ends with)."""
        if self._backlog is None:
            return
        drop = 0
        while (
            drop < len(self.events) - 1
            and self.events[drop].seq <= seq
            and self._held > WINDOW_BYTES
        ):
            self._held -= size(self.events[drop])
            drop += 1
        del self.events[:drop]
        self.first += drop

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
            for start in range(0, len(text), MAX_OUTPUT_CHARS):
                self.append(OutputEvent(stream=stream, data=text[start : start + MAX_OUTPUT_CHARS]))
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
        """Events with ``seq > after_seq``, live until the result event; those evicted
        from memory are read from the store first."""
        position = max(after_seq, 0)
        while True:
            changed = self._changed
            if position + 1 < self.first and self._backlog is not None:
                stored = await self._backlog(position)
                page = _consecutive([e for e in stored if e.seq < self.first], position)
                for event in page:
                    position = event.seq
                    yield event
                if not page:  # expired from the store meanwhile: go on with what is here
                    position = self.first - 1
                continue
            start = position + 1 - self.first
            if start < len(self.events):
                for event in self.events[start:]:
                    position = event.seq
                    yield event
                continue
            if self.closed:
                return
            await changed.wait()

    async def lines(self, after_seq: int = 0) -> AsyncIterator[str]:
        """:meth:`follow` as NDJSON, as streams and reconnects send it: each line in
        pieces of bounded size (a result repeats all the output), the last one ending
        with its newline."""
        async for event in self.follow(after_seq):
            for piece in pieces(event):
                yield piece


def _consecutive(events: list[Event], after: int) -> list[Event]:
    """The events that follow seq ``after`` without a gap."""
    found = []
    for event in events:
        if event.seq != after + 1:
            break
        found.append(event)
        after = event.seq
    return found
