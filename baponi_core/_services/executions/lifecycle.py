"""The life of one admitted execution: storage brought in, the code run in a sandbox of
its own under the thread quota, storage written back, the end recorded."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from pathlib import Path

import anyio

from baponi_core._errors import BaponiError, Unavailable
from baponi_core._events import StatusEvent
from baponi_core._records import ExecutionStatus, Profile, Volume, WebhookStatus
from baponi_core._sandbox import (
    CodeRun,
    Limits,
    Mount,
    MountError,
    SandboxError,
    SandboxRuntime,
    SecretsError,
    Shape,
    run_code,
    volume_mounts,
)
from baponi_core._sandbox.pool import Pool
from baponi_core._sandbox.spec import MiB
from baponi_core._services.connectors import Connectors, Injection
from baponi_core._services.executions import status
from baponi_core._services.executions.log import ExecutionLog
from baponi_core._services.executions.run import Run, StopReason
from baponi_core._services.webhooks import Webhooks
from baponi_core._storage.disks import DiskError
from baponi_core._storage.local import LocalTree, TooDeep
from baponi_core._storage.places import Place, Storage
from baponi_core._store import Store

log = logging.getLogger(__name__)

QUOTA_SAMPLE_S = 0.1  # at least this long between two measures of a thread home
RECORD_RETRY_S = (0.5, 1.0, 2.0, 5.0)  # between tries to record an end, the last repeated


class Lifecycle:
    def __init__(
        self,
        store: Store,
        runtime: SandboxRuntime,
        storage: Storage,
        log: ExecutionLog,
        webhooks: Webhooks,
        connectors: Connectors,
        quota: int,
        live: dict[str, Run],
        pool: Pool | None = None,
    ) -> None:
        self.store = store
        self.connectors = connectors
        self.runtime = runtime
        self.storage = storage
        self.log = log
        self.webhooks = webhooks
        self.quota = quota  # bytes a thread home may hold
        self.live = live  # the service's live runs; a run leaves it when it has settled
        self.pool = pool  # sandboxes prepared ahead, taken by every kind of execution
        if pool is not None:  # the default profile's, before its first request
            pool.want(Shape(limits_for(Profile(id="", org_id="", name="default"))))

    async def __call__(self, run: Run) -> None:
        """Run ``run`` to its end; whatever happens, its record is finished."""
        try:
            with run.held:
                async with anyio.create_task_group() as helpers:
                    helpers.start_soon(run.journal.run)
                    if run.kept:
                        helpers.start_soon(self.log.keep, run)
                    await self._run(run)
                    helpers.cancel_scope.cancel()
        except Exception:
            log.exception("execution %s failed", run.trace_id)
        finally:
            with anyio.CancelScope(shield=True):
                recorded = await self._settle(run)
            try:
                if not recorded:
                    await self._retry(run)
            finally:
                self._release(run)

    async def _run(self, run: Run) -> None:
        record, request = run.record, run.request
        if record.status is ExecutionStatus.QUEUED and await run.recorded():
            record.status = ExecutionStatus.RUNNING
            try:  # only a step on the way: the end is what must be recorded
                await self.store.update_execution(record)
            except BaponiError as exc:
                log.warning("could not record %s as running: %s", run.trace_id, exc.message)
        run.journal.append(StatusEvent(trace_id=record.trace_id, status=ExecutionStatus.RUNNING))
        if run.stop.is_set():  # cancelled before it started
            status.stopped(run)
            return
        thread = (
            self.storage.thread(record.org_id, request.thread_id) if request.thread_id else None
        )
        volumes = [(v, self.storage.volume(v)) for v in run.volumes]
        places = ([thread] if thread else []) + [place for _, place in volumes]
        async with contextlib.AsyncExitStack() as held:
            for place in places:
                try:
                    await held.enter_async_context(self.storage.held(place))
                except DiskError:
                    log.exception("could not mount %s for %s", place.key, run.trace_id)
                    status.finish(run, ExecutionStatus.FAILED, place.mount_error, exit_code=-1)
                    return
            await self._in_places(run, thread, places, volumes)

    async def _in_places(
        self,
        run: Run,
        thread: Place | None,
        places: list[Place],
        volumes: list[tuple[Volume, Place]],
    ) -> None:
        request = run.request
        injection = await self._credentials(run)
        if injection is None:
            return
        mounts = await self._bring_in(run, places, volumes)
        if mounts is None:  # nothing ran, so there is nothing to store
            return
        run.record.connectors = list(injection.names)
        job = CodeRun(
            language=request.language,
            code=request.code.encode(),
            # A connector's variable wins over the request's of the same name: code given
            # a key bound to a connector must not be able to replace what it injects.
            env={**(request.env_vars or {}), **injection.env},
            secrets=injection.files,
            shape=Shape(limits_for(run.profile), run.runtime, run.profile.network),
            home=thread.workspace if thread else None,
            mounts=mounts,
            timeout_s=float(request.timeout),
            output_bytes=run.profile.output_kb * 1024,
        )
        # With nothing to write back, the end is stored while the sandbox ends.
        early = not any(p.backend.writes_back and not p.read_only for p in places)
        try:
            await self._sandboxed(run, job, thread, store_early=early)
        finally:
            with anyio.CancelScope(shield=True):
                await _write_back(run, places)

    async def _credentials(self, run: Run) -> Injection | None:
        """What the connectors bound to the run's key inject; on failure the run ends
        with ``credential_mount_error`` and its code never runs."""
        if run.record.key_id is None:
            return Injection()
        try:
            return await self.connectors.for_key(run.record.key_id)
        except BaponiError as exc:  # a CredentialError names the connector, never a value
            log.error("connectors of %s cannot be injected: %s", run.trace_id, exc.message)
        status.finish(run, ExecutionStatus.FAILED, "credential_mount_error", exit_code=-1)
        return None

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
                status.finish(run, ExecutionStatus.FAILED, place.mount_error, exit_code=-1)
                return None
        if not volumes:
            return ()
        try:
            return await anyio.to_thread.run_sync(
                _mounts, volumes, run.request.sub_paths, self.runtime.owner
            )
        except (BaponiError, OSError):
            log.exception("could not mount the volumes of %s", run.trace_id)
            status.finish(run, ExecutionStatus.FAILED, "volume_mount_error", exit_code=-1)
            return None

    async def _sandboxed(
        self, run: Run, job: CodeRun, thread: Place | None, store_early: bool
    ) -> None:
        """Run the code. A thread home with a filesystem of its own cannot outgrow it; one
        without is sampled, and the run stopped when it outgrows its quota. The result is
        known as soon as the program has ended; the journal's result event waits until
        the sandbox has too (the settle closes it), so that a client that has the result
        finds the thread free."""
        async with anyio.create_task_group() as tasks:
            quota = anyio.CancelScope()
            if thread is not None and thread.size is None:
                tasks.start_soon(self._watch_quota, run, thread.workspace, quota)
            try:
                observed = run_code(
                    self.runtime, job, on_output=run.journal.output, stop=run.stop, pool=self.pool
                )
                async with observed as outcome:
                    quota.cancel()
                    full = thread is not None and self.storage.full(thread)
                    status.from_outcome(run, outcome, home_full=full)
                    if store_early:
                        tasks.start_soon(self._store_end, run, thread is None and not run.kept)
            except MountError as exc:  # a volume directory swapped for a link meanwhile
                log.error("mounts of %s failed: %s", run.trace_id, exc)
                status.finish(run, ExecutionStatus.FAILED, "volume_mount_error", exit_code=-1)
            except SecretsError as exc:  # connector files that could not be handed out
                log.error("connectors of %s cannot be injected: %s", run.trace_id, exc)
                run.record.connectors = []
                status.finish(run, ExecutionStatus.FAILED, "credential_mount_error", exit_code=-1)
            except SandboxError as exc:
                log.error("sandbox for %s failed: %s", run.trace_id, exc)
                status.finish(run, ExecutionStatus.FAILED, "service_unavailable", exit_code=-1)
                run.failure = Unavailable("the sandbox runtime is unavailable; try again")
            finally:
                quota.cancel()

    async def _store_end(self, run: Run, answer: bool) -> None:
        """Store the end while the sandbox ends; with ``answer``, answer once it is in (if
        it fails, the settle tries again, and the answer waits for it)."""
        if await run.recorded() and await self._record_end(run, events=False) and answer:
            run.answer_early()

    async def _watch_quota(self, run: Run, workspace: Path, scope: anyio.CancelScope) -> None:
        """Sample the home's size while code runs (until ``scope`` is cancelled); growing
        past the quota (or past its size at the start, for a home already over it, which
        can then still be cleaned up) stops the run. Each run may overshoot by what it
        writes between two samples, and overshoots add up: the weak quota of a server that
        cannot give homes filesystems of their own. Scans are spaced so that they cost at
        most a twentieth of one core."""
        with scope:
            await self._sample(run, workspace)

    async def _sample(self, run: Run, workspace: Path) -> None:
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
                run.request_stop(StopReason.QUOTA)
                return
            await anyio.sleep(max(QUOTA_SAMPLE_S, 20 * (time.monotonic() - started)))

    async def _settle(self, run: Run) -> bool:
        """Close the journal with the result and try once to record the end, whatever
        happened; whether it is recorded (or never will be: the submission was refused)."""
        if run.result is None:  # crashed: never leave a record running
            status.finish(run, ExecutionStatus.FAILED, "internal_error", exit_code=-1)
        status.close_journal(run)
        return not await run.recorded() or await self._record_end(run)

    async def _retry(self, run: Run) -> None:
        """Try again until the end is recorded: a store that refuses (locked by another
        process, disk full) must not leave the record running. Waiters are woken
        meanwhile; the run stays live (its journal is what readers follow). A shutdown
        cancels the tries, and the next start settles the record (ExecutionLog.recover)."""
        run.done.set()
        run.answerable.set()
        for attempt in itertools.count():
            await anyio.sleep(RECORD_RETRY_S[min(attempt, len(RECORD_RETRY_S) - 1)])
            if await self._record_end(run):
                log.info("recorded the end of %s after %d retries", run.trace_id, attempt + 1)
                return

    def _release(self, run: Run) -> None:
        """The run leaves the live set; its waiters and its webhook go; its journal keeps
        nothing more in memory (readers still open read the store)."""
        self.live.pop(run.trace_id, None)
        run.journal.release()
        run.done.set()
        run.answerable.set()
        if run.record.webhook_delivery_status is WebhookStatus.PENDING:
            self.webhooks.wake()

    async def _record_end(self, run: Run, events: bool = True) -> bool:
        """Store the completed record and (with ``events``) the last events; whether all
        of it is in."""
        try:
            if not run.stored_end:
                await self.store.update_execution(run.record)
                run.stored_end = True
            if events and run.kept:
                await self.log.persist(run)
        except BaponiError as exc:
            log.warning("could not record the end of %s yet: %s", run.trace_id, exc.message)
            return False
        except Exception:
            log.exception("could not record the end of %s", run.trace_id)
            return False
        return True


def limits_for(profile: Profile) -> Limits:
    return Limits(
        memory_bytes=profile.memory_mb * MiB,
        cpus=profile.cpus,
        pids=profile.pids,
        tmp_bytes=profile.tmp_mb * MiB,
    )


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
