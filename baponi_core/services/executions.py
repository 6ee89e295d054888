"""Executions: admit a request against the caller's plan, run it in the background, record it.

Every execution runs as a task of the service, not of the request that started it, so the
three delivery modes differ only in how they wait: inline awaits the result, streaming
follows the journal, webhook answers at once and leaves delivery to :mod:`webhooks`.
A client going away never stops an execution; a cancel or a shutdown does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from baponi_core.errors import (
    BaponiError,
    Conflict,
    NotFound,
    RateLimited,
    Unavailable,
    ValidationError,
)
from baponi_core.ids import new_trace_id
from baponi_core.limits import TRACE_ID_PATTERN
from baponi_core.models import ExecuteRequest, ExecutionView, SandboxResult
from baponi_core.sandbox import (
    CodeRun,
    Ending,
    Limits,
    Mount,
    MountError,
    Outcome,
    SandboxError,
    SandboxRuntime,
    Shape,
    run_code,
    volume_mounts,
)
from baponi_core.sandbox.spec import MiB
from baponi_core.services.concurrency import ConcurrencyLimiter
from baponi_core.services.journal import Journal, encode
from baponi_core.services.threads import ThreadClaims
from baponi_core.services.webhooks import Webhooks
from baponi_core.storage.local import LocalTree, TooDeep
from baponi_core.storage.places import Place, Storage
from baponi_core.store import Execution, Principal, Profile, Store, Volume

log = logging.getLogger(__name__)

RETENTION_S = 300  # output is kept for timeout + this, after the start
PERSIST_EVERY_S = 0.5
PURGE_EVERY_S = 60
STOP_WAIT_S = 10
QUOTA_SAMPLE_S = 0.1  # at least this long between two measures of a thread home
CANCELLED = "Cancelled by user"
SERVER_STOPPED = "server_stopped"  # the server went down while the execution ran
DISK_QUOTA_EXCEEDED = "disk_quota_exceeded"  # the thread home outgrew --thread-quota

# How each ending shows in the record (status) and the SandboxResult (error).
ENDINGS: dict[Ending, tuple[str, str | None]] = {
    Ending.OOM: ("oom", "memory_limit_exceeded"),
    Ending.TIMEOUT: ("timeout", "timeout"),
    Ending.OUTPUT_LIMIT: ("failed", "output_limit_exceeded"),
    Ending.SECCOMP: ("seccomp", "security_policy_violation"),
}
STOPS = {
    "cancel": ("cancelled", CANCELLED),
    "shutdown": ("failed", SERVER_STOPPED),
    "quota": ("failed", DISK_QUOTA_EXCEEDED),
}


@dataclass
class Run:
    """An execution in progress."""

    record: Execution
    request: ExecuteRequest
    profile: Profile
    volumes: tuple[Volume, ...]  # mounted at /data/<slug>
    held: contextlib.ExitStack  # its concurrency slot and thread claim
    journal: Journal
    stop: anyio.Event = field(default_factory=anyio.Event)
    stop_reason: str = "cancel"
    done: anyio.Event = field(default_factory=anyio.Event)
    result: SandboxResult | None = None
    failure: BaponiError | None = None  # a platform fault an inline caller should see
    persisted: int = 0  # journal events already in the store

    @property
    def trace_id(self) -> str:
        return self.record.trace_id

    @property
    def kept(self) -> bool:
        """Whether its events are stored for reconnects (streaming and webhook delivery)."""
        return self.record.delivery_mode != "inline"

    async def outcome(self) -> SandboxResult:
        """Wait for the end; a platform fault is raised rather than returned."""
        await self.done.wait()
        if self.failure is not None:
            raise self.failure
        assert self.result is not None
        return self.result


class Executions:
    def __init__(
        self,
        store: Store,
        runtime: SandboxRuntime,
        storage: Storage,
        limiter: ConcurrencyLimiter,
        webhooks: Webhooks,
        quota: int,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.storage = storage
        self.threads = ThreadClaims()
        self.quota = quota  # bytes a thread home may hold
        self.limiter = limiter
        self.webhooks = webhooks
        self.accepting = True
        self._live: dict[str, Run] = {}
        self._tasks: TaskGroup | None = None

    async def start(self, tasks: TaskGroup) -> None:
        """Settle what a previous server left unfinished, then start the housekeeping."""
        stranded = await self.store.fail_unfinished(SERVER_STOPPED, time.time())
        if stranded:
            log.warning("%d execution(s) were cut short by a server stop", len(stranded))
        for org_id, trace_id in stranded:
            await self._recover_output(org_id, trace_id)
        self._tasks = tasks
        tasks.start_soon(self._purge)

    async def _recover_output(self, org_id: str, trace_id: str) -> None:
        """Put the output a stranded execution streamed before the stop into its record."""
        record = await self.store.get_execution(org_id, trace_id)
        lines = await self.store.get_events(trace_id, 0, time.time())
        if record is None or not lines:
            return
        output = {"stdout": "", "stderr": ""}
        for event in map(json.loads, lines):
            if event["type"] == "output":
                output[event["stream"]] += event["data"]
        record.stdout, record.stderr = output["stdout"], output["stderr"]
        await self.store.update_execution(record)

    # admission

    async def submit(
        self, principal: Principal, request: ExecuteRequest, mode: str = "inline"
    ) -> Run:
        """Admit ``request`` and start it; refusals (plan, limits, busy thread) raise."""
        if not self.accepting or self._tasks is None:
            raise Unavailable("the server is shutting down; try again shortly")
        if request.webhook_url is not None:
            if mode != "webhook":
                raise ValidationError("webhook_url requires the header Prefer: respond-async")
            self.webhooks.check(request.webhook_url)
        profile = principal.profile
        check_sub_paths(principal.volumes, request.sub_paths)
        if request.timeout > profile.max_timeout:
            raise RateLimited(
                f"timeout {request.timeout}s exceeds the plan limit of {profile.max_timeout}s",
            )
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.limiter.slot(principal.org))
            if request.thread_id is not None:
                stack.enter_context(self.threads.claim(principal.org.id, request.thread_id))
            record = Execution(
                trace_id=new_trace_id(),
                org_id=principal.org.id,
                key_id=principal.key.id,
                language=request.language,
                delivery_mode=mode,
                created_at=time.time(),
                timeout=request.timeout,
                status="queued" if mode == "webhook" else "running",
                thread_id=request.thread_id,
                metadata=dict(request.metadata or {}),
                webhook_url=request.webhook_url,
                webhook_delivery_status="pending" if request.webhook_url else None,
            )
            await self.store.insert_execution(record)
            run = Run(
                record,
                request,
                profile,
                principal.volumes,
                stack.pop_all(),
                Journal(record.trace_id),
            )
        self._live[record.trace_id] = run
        self._tasks.start_soon(self._lifecycle, run, name=f"execution {record.trace_id}")
        return run

    # the run itself

    async def _lifecycle(self, run: Run) -> None:
        try:
            with run.held:
                async with anyio.create_task_group() as helpers:
                    helpers.start_soon(run.journal.run)
                    if run.kept:
                        helpers.start_soon(self._persist_loop, run)
                    await self._run(run)
                    helpers.cancel_scope.cancel()
        except Exception:
            log.exception("execution %s failed", run.trace_id)
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle(run)

    async def _run(self, run: Run) -> None:
        record, request = run.record, run.request
        if record.status == "queued":
            record.status = "running"
            await self.store.update_execution(record)
        run.journal.append({"type": "status", "trace_id": record.trace_id, "status": "running"})
        if run.stop.is_set():  # cancelled before it started
            _finish(run, *STOPS[run.stop_reason], exit_code=-1)
            return
        thread = (
            self.storage.thread(record.org_id, request.thread_id) if request.thread_id else None
        )
        volumes = [(v, self.storage.volume(v)) for v in run.volumes]
        places = ([thread] if thread else []) + [place for _, place in volumes]
        mounts = await self._bring_in(run, places, volumes)
        if mounts is None:  # nothing ran, so there is nothing to store
            return
        home = thread.workspace if thread else None
        job = CodeRun(
            language=request.language,
            code=request.code.encode(),
            env=dict(request.env_vars or {}),
            shape=Shape(limits_for(run.profile)),
            home=home,
            mounts=mounts,
            timeout_s=float(request.timeout),
            output_bytes=run.profile.output_kb * 1024,
        )
        try:
            outcome = await self._sandboxed(run, job)
        finally:
            with anyio.CancelScope(shield=True):
                await _write_back(run, places)
        if outcome is not None:
            _from_outcome(run, outcome)

    async def _bring_in(
        self, run: Run, places: list[Place], volumes: list[tuple[Volume, Place]]
    ) -> tuple[Mount, ...] | None:
        """Sync every root in and build the volume mounts; on failure the run ends with
        the root's mount error and its code never runs."""
        for place in places:
            try:
                await place.backend.pull(place.key)
            except Exception:
                log.exception("could not bring in %s for %s", place.key, run.trace_id)
                _finish(run, "failed", place.mount_error, exit_code=-1)
                return None
        try:
            return await anyio.to_thread.run_sync(
                _mounts, volumes, run.request.sub_paths, self.runtime.uid
            )
        except (BaponiError, OSError):
            log.exception("could not mount the volumes of %s", run.trace_id)
            _finish(run, "failed", "volume_mount_error", exit_code=-1)
            return None

    async def _sandboxed(self, run: Run, job: CodeRun) -> Outcome | None:
        """Run the sandbox, stopped early if the thread home outgrows its quota."""
        async with anyio.create_task_group() as watch:
            if job.home is not None:
                watch.start_soon(self._watch_quota, run, job.home)
            try:
                return await run_code(
                    self.runtime, job, on_output=run.journal.output, stop=run.stop
                )
            except MountError as exc:  # a volume directory swapped for a link meanwhile
                log.error("mounts of %s failed: %s", run.trace_id, exc)
                _finish(run, "failed", "volume_mount_error", exit_code=-1)
            except SandboxError as exc:
                log.error("sandbox for %s failed: %s", run.trace_id, exc)
                _finish(run, "failed", "service_unavailable", exit_code=-1)
                run.failure = Unavailable("the sandbox runtime is unavailable; try again")
            finally:
                watch.cancel_scope.cancel()
        return None

    async def _watch_quota(self, run: Run, workspace: Path) -> None:
        """Sample the home's size while code runs; growing past the quota (or past its size
        at the start, for a home already over it) stops the run. Scans are spaced so that
        they cost at most a twentieth of one core."""
        tree = LocalTree(workspace, owner=None)
        allowed: int | None = None
        while not run.stop.is_set():
            started = time.monotonic()
            try:
                used: int | None = await anyio.to_thread.run_sync(tree.usage, ())
            except TooDeep:  # nested beyond what the server accounts for
                used = None
            if allowed is None and used is not None:
                allowed = max(self.quota, used)
            if used is None or allowed is None or used > allowed:
                log.warning("%s exceeded the thread disk quota", run.trace_id)
                run.stop_reason = "quota"
                run.stop.set()
                return
            await anyio.sleep(max(QUOTA_SAMPLE_S, 20 * (time.monotonic() - started)))

    async def _settle(self, run: Run) -> None:
        """Record the end, whatever happened; then let waiters and the webhook go."""
        if run.result is None:  # crashed: never leave a record running
            _finish(run, "failed", "internal_error", exit_code=-1)
        record = run.record
        if record.webhook_delivery_status == "pending":
            record.webhook_next_at = record.completed_at
        try:
            await self.store.update_execution(record)
            if run.kept:
                await self._persist(run)
        except Exception:
            log.exception("could not record the end of %s", run.trace_id)
        self._live.pop(run.trace_id, None)
        run.done.set()
        if record.webhook_delivery_status == "pending":
            self.webhooks.wake()

    async def _persist_loop(self, run: Run) -> None:
        while True:
            await anyio.sleep(PERSIST_EVERY_S)
            await self._persist(run)

    async def _persist(self, run: Run) -> None:
        events = run.journal.events[run.persisted :]
        if not events:
            return
        await self.store.add_events(
            run.trace_id, [(e["seq"], encode(e)) for e in events], _expiry(run.record)
        )
        run.persisted += len(events)

    async def _purge(self) -> None:
        while True:
            try:
                await self.store.purge_events(time.time())
            except Exception:
                log.exception("could not purge expired output")
            await anyio.sleep(PURGE_EVERY_S)

    # reading and controlling executions

    async def get(self, principal: Principal, trace_id: str) -> ExecutionView:
        return ExecutionView.of(await self._record(principal, trace_id))

    async def cancel(self, principal: Principal, trace_id: str) -> dict[str, str]:
        record = await self._record(principal, trace_id)
        run = self._live.get(trace_id)
        if run is None or run.result is not None:
            raise Conflict(f"execution {trace_id} has already ended ({record.status})")
        run.stop_reason = "cancel"
        run.stop.set()
        return {"trace_id": trace_id, "status": "cancelling"}

    async def events(
        self, principal: Principal, trace_id: str, after_seq: int = 0
    ) -> AsyncIterator[str]:
        """NDJSON lines after ``after_seq``: live while running, then from the store."""
        record = await self._record(principal, trace_id)
        return self._events(record, after_seq)

    async def _events(self, record: Execution, after_seq: int) -> AsyncIterator[str]:
        run = self._live.get(record.trace_id)
        if run is not None:
            async for line in run.journal.lines(after_seq):
                yield line
            return
        stored = await self.store.get_events(record.trace_id, 0, time.time())
        for line in stored[after_seq:]:
            yield line + "\n"
        # A server stop can leave stored output without its result event: end it properly.
        if stored and json.loads(stored[-1])["type"] != "result" and len(stored) >= after_seq:
            yield encode(_result_event(record, len(stored) + 1)) + "\n"

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
            if not run.stop.is_set():
                run.stop_reason = "shutdown"
                run.stop.set()
        await self._settled(within=STOP_WAIT_S)

    async def _settled(self, within: float) -> None:
        """Wait, at most ``within`` seconds, until every running execution has ended."""
        with anyio.move_on_after(within):
            for run in list(self._live.values()):
                await run.done.wait()


def check_sub_paths(volumes: tuple[Volume, ...], sub_paths: list[str] | None) -> None:
    """Refuse, before anything runs, a sub-path outside the key's volumes."""
    try:
        volume_mounts(((v.slug, Path("/"), v.read_only) for v in volumes), sub_paths or ())
    except ValueError as exc:
        raise ValidationError(f"sub_paths: {exc}") from None


def _mounts(
    volumes: list[tuple[Volume, Place]], sub_paths: list[str] | None, owner: int | None
) -> tuple[Mount, ...]:
    """The volume mounts of one run; narrowed sub-directories of a writable volume are made
    (without following links) when missing. Blocking."""
    mounts = volume_mounts(
        ((v.slug, place.workspace, v.read_only) for v, place in volumes), sub_paths or ()
    )
    for mount in mounts:  # a missing directory of a read-only volume is a mount error
        with LocalTree(mount.source, owner).directory(mount.names, create=not mount.read_only):
            pass
    return mounts


async def _write_back(run: Run, places: list[Place]) -> None:
    """Store what the run changed. A failure loses nothing: the files stay in the
    workspace and go with the next push."""
    for place in places:
        if place.read_only:
            continue
        try:
            await place.backend.push(place.key)
        except Exception:
            log.exception("could not store %s after %s", place.key, run.trace_id)


def limits_for(profile: Profile) -> Limits:
    return Limits(
        memory_bytes=profile.memory_mb * MiB,
        cpus=profile.cpus,
        pids=profile.pids,
        tmp_bytes=profile.tmp_mb * MiB,
    )


def _from_outcome(run: Run, outcome: Outcome) -> None:
    if outcome.ending is Ending.EXITED:
        status, error = ("success" if outcome.exit_code == 0 else "failed"), None
    elif outcome.ending is Ending.STOPPED:
        status, error = STOPS[run.stop_reason]
    else:
        status, error = ENDINGS[outcome.ending]
    _finish(
        run,
        status,
        error,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout.decode(errors="replace"),
        stderr=outcome.stderr.decode(errors="replace"),
        duration_ms=outcome.duration_ms,
    )


def _finish(
    run: Run,
    status: str,
    error: str | None,
    *,
    exit_code: int,
    stdout: str = "",
    stderr: str = "",
    duration_ms: int | None = None,
) -> None:
    record = run.record
    now = time.time()
    record.status, record.exit_code, record.error = status, exit_code, error
    record.stdout, record.stderr = stdout, stderr
    record.completed_at = now
    record.duration_ms = (
        duration_ms if duration_ms is not None else int((now - record.created_at) * 1000)
    )
    run.result = _result(record)
    if not run.journal.closed:
        run.journal.close(_result_event(record))


def _result(record: Execution) -> SandboxResult:
    exit_code = -1 if record.exit_code is None else record.exit_code
    return SandboxResult(
        success=exit_code == 0,
        stdout=record.stdout or "",
        stderr=record.stderr or "",
        exit_code=exit_code,
        error=record.error,
        trace_id=record.trace_id,
    )


def _result_event(record: Execution, seq: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "result",
        "trace_id": record.trace_id,
        "status": record.status,
        "result": _result(record).model_dump(),
        "output_truncated": record.error == "output_limit_exceeded",
    }
    if seq is not None:
        event["seq"] = seq
    return event


def _expiry(record: Execution) -> float:
    return record.created_at + record.timeout + RETENTION_S
