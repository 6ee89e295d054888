"""The execution log in the store: the events of streaming and webhook executions, kept
for reconnects until ``timeout + RETENTION_S`` after the start, and what a previous server
left unfinished."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio

from baponi_core.errors import BaponiError
from baponi_core.events import Event, OutputEvent, ResultEvent, decode, encode, pieces
from baponi_core.records import Execution
from baponi_core.services.executions.run import Run
from baponi_core.services.executions.status import SERVER_STOPPED, result_event
from baponi_core.services.journal import Backlog
from baponi_core.store import Store

log = logging.getLogger(__name__)

RETENTION_S = 300  # output is kept for timeout + this, after the start
PERSIST_EVERY_S = 0.5
PURGE_EVERY_S = 60
BACKLOG_PAGE = 8  # stored events a lagging reader holds at once: 8 x MAX_OUTPUT_CHARS


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
        """Store the events not stored yet; the journal may then let them go from memory."""
        events = run.journal.after(run.persisted)
        if events:
            await self.store.add_events(
                run.trace_id, [(e.seq, encode(e)) for e in events], _expiry(run.record)
            )
            run.persisted = events[-1].seq
        run.journal.stored(run.persisted)

    def backlog(self, trace_id: str) -> Backlog:
        """How a journal reads back the events it let go: a page at a time."""

        async def page(after_seq: int) -> list[Event]:
            lines = await self.store.get_events(trace_id, after_seq, time.time(), BACKLOG_PAGE)
            return [decode(line) for line in lines]

        return page

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
        page = self.backlog(record.trace_id)
        position = max(after_seq - 1, 0)  # the event at after_seq itself says if one is missing
        last: Event | None = None
        while events := await page(position):
            for event in events:
                position, last = event.seq, event
                if event.seq > after_seq:
                    for piece in pieces(event):
                        yield piece
        # A server stop can leave stored output without its result event: end it properly.
        if last is not None and not isinstance(last, ResultEvent):
            event = result_event(record)
            event.seq = last.seq + 1
            for piece in pieces(event):
                yield piece


def _expiry(record: Execution) -> float:
    return record.created_at + record.timeout + RETENTION_S
