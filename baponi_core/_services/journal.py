"""The event log of one running execution: what streaming clients and reconnects read.

Every event gets the next ``seq``. Keepalives are events of the log too, not of one
connection, so that every reader sees the same numbering and can resume after any of them.

Memory is bounded whatever the readers do: once events are in the store (:meth:`stored`),
the journal keeps only the last WINDOW_BYTES of them, and a reader behind that window
reads the rest from the store (its :class:`Spill`) in pages before following live again.
Once the execution's end is recorded too (:meth:`release`), it keeps nothing: readers
still open read the rest from the store, the result's output a piece at a time from the
record, so that a reader that never reads holds a page, not the execution's output.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator
from typing import Protocol

import anyio

from baponi_core._events import (
    Event,
    KeepaliveEvent,
    OutputEvent,
    ResultEvent,
    pieces,
    size,
    stored_result_pieces,
)
from baponi_core._sandbox.spec import Stream

STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


class Spill(Protocol):
    """Where a journal's events are once stored: what it reads back instead of keeping."""

    async def events(self, after_seq: int) -> list[Event]:
        """The stored events after ``after_seq``, a page of them (none: no more)."""
        ...

    async def output(self, stream: Stream, offset: int) -> str:
        """A piece of the recorded output of ``stream`` from ``offset`` ("" at its end);
        stored results leave it out, the record holds it."""
        ...


KEEPALIVE_S = 5.0
COALESCE_S = 0.025  # at most one output event per stream in this window, so tiny writes
# cannot turn into millions of events
MAX_OUTPUT_CHARS = 64 << 10  # of one output event: a burst is cut into several
WINDOW_BYTES = 256 << 10  # stored events still kept in memory, for readers close behind


class Journal:
    def __init__(self, trace_id: str, spill: Spill | None = None) -> None:
        self.trace_id = trace_id
        self.events: list[Event] = []  # in memory: seq ``first`` onwards
        self.first = 1
        self.closed = False
        self._spill = spill  # where evicted events are; without one nothing is evicted
        self._stored = 0  # events up to this seq are in the store
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
        if self._spill is None:
            return
        self._stored = seq
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

    def release(self) -> None:
        """The end is recorded and every event stored: let all of them go."""
        if self._spill is not None and self.closed and self._stored == self._next - 1:
            self.first, self.events, self._held = self._next, [], 0

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
        """Events with ``seq > after_seq``, live until the result event (whole)."""
        async for event in self._follow(after_seq):
            if isinstance(event, ResultEvent) and event.seq not in range(self.first, self._next):
                event = await self._whole(event)
            yield event

    async def _whole(self, stored: ResultEvent) -> ResultEvent:
        """A result read back from the store, with its output from the record."""
        assert self._spill is not None
        output: dict[str, str] = {}
        for stream in STREAMS:
            output[stream] = ""
            while text := await self._spill.output(stream, len(output[stream])):
                output[stream] += text
        result = stored.result.model_copy(update=output)
        return stored.model_copy(update={"result": result})

    async def _follow(self, after_seq: int) -> AsyncIterator[Event]:
        """Events with ``seq > after_seq``, live until the result event; those evicted
        from memory are read from the store first (a result from there without output)."""
        position = max(after_seq, 0)
        while True:
            changed = self._changed
            if position + 1 < self.first and self._spill is not None:
                stored = await self._spill.events(position)
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
        async for event in self._follow(after_seq):
            if isinstance(event, ResultEvent) and event.seq < self.first:
                assert self._spill is not None
                async for piece in stored_result_pieces(event, self._spill.output):
                    yield piece
            else:
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
