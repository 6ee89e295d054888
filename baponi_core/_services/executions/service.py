"""Executions: admit a request against the caller's plan, run it in the background, and
answer for it (its record, its events, a cancel) until and after it ends.

Every execution runs as a task of the service, not of the request that started it, so the
three delivery modes differ only in how they wait: inline awaits the result, streaming
follows the events, webhook answers at once and leaves delivery to :mod:`webhooks`.
A client going away never stops an execution; a cancel or a shutdown does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from anyio.abc import TaskGroup

from baponi_core._errors import Conflict, NotFound, Unavailable, ValidationError
from baponi_core._limits import TRACE_ID_PATTERN
from baponi_core._models import Cancelling, ExecuteRequest, ExecutionView
from baponi_core._records import DeliveryMode, Execution, Principal
from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import SandboxRuntime
from baponi_core._sandbox.pool import Pool
from baponi_core._services.concurrency import ConcurrencyLimiter
from baponi_core._services.connectors import Connectors
from baponi_core._services.executions import admission
from baponi_core._services.executions.lifecycle import Lifecycle
from baponi_core._services.executions.log import ExecutionLog
from baponi_core._services.executions.run import Run, StopReason, Submission
from baponi_core._services.journal import Journal
from baponi_core._services.streams import Counted, OpenStreams
from baponi_core._services.threads import ThreadClaims
from baponi_core._services.webhooks import Webhooks
from baponi_core._storage.places import Storage
from baponi_core._storage.space import Space
from baponi_core._store import Store

log = logging.getLogger(__name__)

STOP_WAIT_S = 10


class Executions:
    def __init__(
        self,
        store: Store,
        runtime: SandboxRuntime,
        runtimes: Runtimes,
        storage: Storage,
        limiter: ConcurrencyLimiter,
        webhooks: Webhooks,
        connectors: Connectors,
        quota: int,
        space: Space,
        pool: Pool | None = None,
    ) -> None:
        self.store = store
        self.space = space
        self.limiter = limiter
        self.threads = ThreadClaims()
        self.webhooks = webhooks
        self.runtimes = runtimes
        self.log = ExecutionLog(store)
        self.accepting = True
        self.streams = OpenStreams()
        self._live: dict[str, Run] = {}
        self._lifecycle = Lifecycle(
            store, runtime, storage, self.log, webhooks, connectors, quota, self._live, pool
        )
        self._tasks: TaskGroup | None = None

    async def start(self, tasks: TaskGroup) -> None:
        """Settle what a previous server left unfinished, then start the housekeeping."""
        await self.log.recover()
        self._tasks = tasks
        tasks.start_soon(self.log.purge)

    async def submit(
        self,
        principal: Principal,
        request: ExecuteRequest,
        mode: DeliveryMode = DeliveryMode.INLINE,
    ) -> Submission:
        """Admit ``request`` and start it; refusals (plan, limits, busy thread) raise."""
        if not self.accepting or self._tasks is None:
            raise Unavailable("the server is shutting down; try again shortly")
        self.space.check()  # its record, its output, its thread home: nowhere to go
        image = admission.check(principal, request, mode, self.webhooks, self.runtimes)
        with contextlib.ExitStack() as stream:
            if mode is DeliveryMode.STREAMING:
                stream.enter_context(self.streams.claim(principal.org))
            with admission.hold(self.limiter, self.threads, principal, request) as held:
                record = admission.record_for(principal, request, mode)
                kept = mode is not DeliveryMode.INLINE  # its events go to the store
                spill = self.log.spill(record.trace_id) if kept else None
                journal = Journal(record.trace_id, spill)
                run = Run(
                    record,
                    request,
                    principal.profile,
                    image,
                    principal.volumes,
                    held.pop_all(),
                    journal,
                )
            claim = stream.pop_all()
        # It starts at once, its sandbox being set up while the record is inserted; the
        # caller has its trace id only once the record is there.
        self._live[record.trace_id] = run
        self._tasks.start_soon(self._lifecycle, run, name=f"execution {record.trace_id}")
        try:
            await self.store.insert_execution(record)
        except BaseException:
            run.insert_failed = True
            run.request_stop(StopReason.SHUTDOWN)
            claim.close()
            raise
        finally:
            run.inserted.set()
        return Submission(run, claim)

    async def get(self, principal: Principal, trace_id: str) -> ExecutionView:
        record = await self._record(principal, trace_id)
        run = self._live.get(trace_id)
        if run is not None and run.result is not None:  # ended, its record maybe not stored yet
            record = run.record
        return ExecutionView.of(record)

    async def cancel(self, principal: Principal, trace_id: str) -> Cancelling:
        record = await self._record(principal, trace_id)
        run = self._live.get(trace_id)
        if run is None or run.result is not None:
            raise Conflict(f"execution {trace_id} has already ended ({record.status})")
        run.request_stop(StopReason.CANCEL)
        return Cancelling(trace_id=trace_id)

    async def events(
        self, principal: Principal, trace_id: str, after_seq: int = 0
    ) -> AsyncIterator[str]:
        """NDJSON lines after ``after_seq``: live while running, then from the store; an
        open stream of the caller's organisation until read to the end or closed."""
        record = await self._record(principal, trace_id)
        return Counted(self.streams.claim(principal.org), self._events(record, after_seq))

    async def _events(self, record: Execution, after_seq: int) -> AsyncIterator[str]:
        run = self._live.get(record.trace_id)
        lines = run.journal.lines(after_seq) if run else self.log.replay(record, after_seq)
        async for line in lines:
            yield line

    async def _record(self, principal: Principal, trace_id: str) -> Execution:
        if not TRACE_ID_PATTERN.fullmatch(trace_id):
            raise ValidationError("invalid trace_id format")
        record = await self.store.get_execution(principal.org.id, trace_id)
        if record is None:
            raise NotFound(f"Execution {trace_id} not found")
        return record

    async def drain(self, grace: float) -> None:
        """Refuse new work, let running executions end within ``grace`` seconds, then stop
        the rest (recorded as failed with ``server_stopped``)."""
        self.accepting = False
        await self._settled(within=grace)
        if self._live:
            log.warning("stopping %d execution(s) still running at shutdown", len(self._live))
        for run in list(self._live.values()):
            run.request_stop(StopReason.SHUTDOWN)
        await self._settled(within=STOP_WAIT_S)

    async def _settled(self, within: float) -> None:
        """Wait, at most ``within`` seconds, until every running execution has ended."""
        with anyio.move_on_after(within):
            for run in list(self._live.values()):
                await run.done.wait()
