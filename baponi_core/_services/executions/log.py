"""The execution log in the store: the events of streaming and webhook executions, kept
for reconnects until ``timeout + RETENTION_S`` after the start, and what a previous server
left unfinished."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio

from baponi_core._errors import BaponiError
from baponi_core._events import (
    PIECE_CHARS,
    Event,
    OutputEvent,
    ResultEvent,
    decode,
    encode,
    pieces,
    stored_result_pieces,
)
from baponi_core._records import Execution
from baponi_core._sandbox.spec import Stream
from baponi_core._services.executions.run import Run
from baponi_core._services.executions.status import SERVER_STOPPED, result_event
from baponi_core._store import Store

log = logging.getLogger(__name__)

RETENTION_S = 300  # output is kept for timeout + this, after the start
PERSIST_EVERY_S = 0.5
PURGE_EVERY_S = 60
STORE_BATCH_BYTES = 1 << 20
BACKLOG_PAGE = 4  # stored events a lagging reader holds at once: 4 x MAX_OUTPUT_CHARS


class ExecutionLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def recover(self) -> None:
        """Settle what a previous server left unfinished: nothing of it can still run,
        since sandboxes die with their server. Their pending webhooks become due."""
        stranded = await self.store.fail_unfinished(SERVER_STOPPED, time.time())
        if stranded:
            log.warning("%d execution(s) were cut short by a server stop", len(stranded))
        for org_id, trace_id in stranded:
            await self._recover_output(org_id, trace_id)

    async def _recover_output(self, org_id: str, trace_id: str) -> None:
        """Put the output a stranded execution streamed before the stop into its record."""
        record = await self.store.get_execution(org_id, trace_id)
        lines = await self.store.get_events(trace_id, 0, time.time())
        if record is None or not lines:
            return
        output = {"stdout": "", "stderr": ""}
        for event in map(decode, lines):
            if isinstance(event, OutputEvent):
                output[event.stream] += event.data
        record.stdout, record.stderr = output["stdout"], output["stderr"]
        await self.store.update_execution(record)

    async def keep(self, run: Run) -> None:
        """Store the run's new events every PERSIST_EVERY_S, until cancelled. A store that
        refuses (locked, full) only delays them: the next round, or the settle, stores them."""
        if not await run.recorded():
            return
        while True:
            await anyio.sleep(PERSIST_EVERY_S)
            try:
                await self.persist(run)
            except BaponiError as exc:
                log.warning("could not store the events of %s yet: %s", run.trace_id, exc.message)

    async def persist(self, run: Run) -> None:
        """Store the events not stored yet, about STORE_BATCH_BYTES at a time (no write
        of megabytes at once); the journal may then let them go from memory."""
        batch: list[tuple[int, str]] = []
        held = 0
        for event in run.journal.after(run.persisted):
            line = encode(_hollow(event))
            batch.append((event.seq, line))
            held += len(line)
            if held >= STORE_BATCH_BYTES:
                await self._store(run, batch)
                batch, held = [], 0
        if batch:
            await self._store(run, batch)
        run.journal.stored(run.persisted)

    async def _store(self, run: Run, batch: list[tuple[int, str]]) -> None:
        await self.store.add_events(run.trace_id, batch, _expiry(run.record))
        run.persisted = batch[-1][0]

    def spill(self, trace_id: str) -> StoredEvents:
        """Where the journal of ``trace_id`` reads back what it let go."""
        return StoredEvents(self.store, trace_id)

    async def purge(self) -> None:
        """Delete expired events, every PURGE_EVERY_S, forever."""
        while True:
            try:
                await self.store.purge_events(time.time())
            except Exception:
                log.exception("could not purge expired output")
            await anyio.sleep(PURGE_EVERY_S)

    async def replay(self, record: Execution, after_seq: int) -> AsyncIterator[str]:
        """The stored NDJSON of an execution no longer live after ``after_seq``, read a
        page at a time and sent in pieces (see :meth:`Journal.lines`)."""
        spill = self.spill(record.trace_id)
        position = max(after_seq - 1, 0)  # the event at after_seq itself says if one is missing
        last: Event | None = None
        while events := await spill.events(position):
            for event in events:
                position, last = event.seq, event
                if event.seq <= after_seq:
                    continue
                if isinstance(event, ResultEvent):  # stored without the output: the record has it
                    async for piece in stored_result_pieces(event, spill.output):
                        yield piece
                else:
                    for piece in pieces(event):
                        yield piece
        # A server stop can leave stored output without its result event: end it properly.
        if last is not None and not isinstance(last, ResultEvent):
            event = result_event(record)
            event.seq = last.seq + 1
            for piece in pieces(event):
                yield piece


class StoredEvents:
    """The stored events of one execution, and its recorded output (a journal's Spill)."""

    def __init__(self, store: Store, trace_id: str) -> None:
        self.store = store
        self.trace_id = trace_id

    async def events(self, after_seq: int) -> list[Event]:
        lines = await self.store.get_events(self.trace_id, after_seq, time.time(), BACKLOG_PAGE)
        return [decode(line) for line in lines]

    async def output(self, stream: Stream, offset: int) -> str:
        return await self.store.get_output(self.trace_id, stream, offset, PIECE_CHARS)


def _hollow(event: Event) -> Event:
    """The event as stored: a result without the output it repeats (the record holds it)."""
    if not isinstance(event, ResultEvent):
        return event
    result = event.result.model_copy(update={"stdout": "", "stderr": ""})
    return event.model_copy(update={"result": result})


def _expiry(record: Execution) -> float:
    return record.created_at + record.timeout + RETENTION_S
