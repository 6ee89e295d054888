"""Long-lived sandboxes: created from a runtime, kept open between requests, paused and
resumed, renewed, and ended at a delete, at their expiry, when their init dies, or when
the server stops. Each is scoped to its organisation: another's is not found.

Every change of state is stored as it happens, so that what a read shows is what is
true; a sandbox whose record says it is live is open on this server (at a start the
records of a previous server's end, :mod:`recovery`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import anyio
from anyio.abc import TaskGroup

from baponi_core._errors import BaponiError, Conflict, NotFound, Unavailable, ValidationError
from baponi_core._ids import new_id
from baponi_core._net.policy import Mode, NetworkPolicy
from baponi_core._records import Principal, SandboxState
from baponi_core._records import Sandbox as SandboxRecord
from baponi_core._runtimes import Runtimes
from baponi_core._sandbox import Limits, SandboxError, SandboxRuntime, Shape
from baponi_core._sandbox.spec import MiB
from baponi_core._sandboxes.admission import Admission, SandboxLimits
from baponi_core._sandboxes.commands import Commands
from baponi_core._sandboxes.contexts import Contexts
from baponi_core._sandboxes.kernels import Kernels
from baponi_core._sandboxes.live import Drain, Live, SandboxEnded
from baponi_core._sandboxes.recovery import STOPPED_MESSAGE
from baponi_core._sandboxes.resources import resources_for
from baponi_core._sandboxes.sessions import Sessions
from baponi_core._sandboxes.terminals import Terminals
from baponi_core._store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

EXPIRY_CHECK_S = 0.5  # how late past its expiry a sandbox may end
DEFAULT_TIMEOUT_S = 600  # OpenSandbox's default lifetime
# Sandboxes set up at once: more only queue on the CPUs, where the server (serving the
# sandboxes already made) would get a share of one in dozens (measured: 100 creates at
# once answered /ping in 3.6 s unbounded, 2.0 s so).
SETUPS_AT_ONCE = 4 * (os.cpu_count() or 1)
Ending = Literal["DELETED", "EXPIRED", "IDLE", "KILLED", "SANDBOX_EXITED", "SERVER_STOPPED"]
MESSAGES: dict[Ending, str] = {
    "DELETED": "deleted",
    "EXPIRED": "its expiry came",
    "IDLE": "no request and no command for its idle lifetime",
    "KILLED": "killed by the server's operator",
    "SANDBOX_EXITED": "its init ended (killed from inside?); its processes ended with it",
    "SERVER_STOPPED": STOPPED_MESSAGE,
}


@dataclass(frozen=True)
class NewSandbox:
    """What a create asks for, checked for shape by the adapter."""

    runtime: str
    timeout_s: int | None = None
    resources: dict[str, str] | None = None
    entrypoint: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    network: NetworkPolicy | None = None  # None: the profile's


class Sandboxes:
    def __init__(
        self,
        store: Store,
        runtime: SandboxRuntime,
        runtimes: Runtimes,
        limits: SandboxLimits | None = None,
        max_lifetime_s: float = 86400.0,
        idle_s: float = 1800.0,
        paused_counts: bool = False,
    ) -> None:
        self.store, self.runtime, self.runtimes = store, runtime, runtimes
        self.admission = Admission(store, limits or SandboxLimits())
        self.max_lifetime_s, self.idle_s = max_lifetime_s, idle_s
        self.paused_counts = paused_counts  # paused time counts against the expiry
        self._live: dict[str, Live] = {}
        self._commands: dict[str, Commands] = {}
        self._sessions: dict[str, Sessions] = {}
        self._terminals: dict[str, Terminals] = {}
        self._contexts: dict[str, Contexts] = {}
        self._kernels = Kernels()
        self._tasks: TaskGroup | None = None
        self._setting_up = anyio.CapacityLimiter(SETUPS_AT_ONCE)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve: end sandboxes at their expiry, until cancelled (the core closes)."""
        try:
            async with anyio.create_task_group() as self._tasks:
                task_status.started()
                while True:
                    await anyio.sleep(EXPIRY_CHECK_S)
                    for live, why in await self._due():
                        self._tasks.start_soon(self._end, live, why)
        finally:
            self._tasks = None

    async def _due(self) -> list[tuple[Live, Ending]]:
        """The open sandboxes to end now: expired, idle too long, or killed by an
        operator (``baponi sandboxes kill``, from another process, through the store)."""
        now = time.time()
        due: list[tuple[Live, Ending]] = []
        try:
            killed = set(await self.store.sandbox_ends_requested()) if self._live else set()
        except BaponiError as exc:
            log.warning("could not read the sandboxes operators killed: %s", exc.message)
            killed = set()
        for live in list(self._live.values()):
            if live.record.state is SandboxState.STOPPING:
                continue  # ending already
            if live.id in killed:
                due.append((live, "KILLED"))
            elif live.record.expires_at <= now and (live.paused_at is None or self.paused_counts):
                due.append((live, "EXPIRED"))
            elif live.paused_at is not None:
                continue  # paused time counts against its idleness never
            elif now - live.last_used > self.idle_s and not self._busy(live):
                due.append((live, "IDLE"))
        return due

    def _busy(self, live: Live) -> bool:
        """Whether a command or code runs (or a code context is being made), or a terminal
        has its client: not idle, then."""
        return (
            self._commands[live.id].busy
            or self._terminals[live.id].busy
            or self._contexts[live.id].busy
        )

    # the lifecycle

    async def create(self, principal: Principal, new: NewSandbox) -> SandboxRecord:
        if self._tasks is None:
            raise Unavailable("the server is not serving sandboxes yet", retry_after=1)
        runtime = self.runtimes.find(new.runtime)
        if runtime is None:
            raise ValidationError(
                f"image.uri: no runtime named {new.runtime!r} on this server "
                "(its operator lists them with: baponi runtimes list)"
            )
        resources = resources_for(principal.profile, new.resources)
        now = time.time()
        lifetime = min(float(new.timeout_s or DEFAULT_TIMEOUT_S), self.max_lifetime_s)
        record = SandboxRecord(
            id=new_id("sbx"),
            org_id=principal.org.id,
            key_id=principal.key.id,
            runtime=new.runtime,
            created_at=now,
            expires_at=now + lifetime,
            cpus=resources.cpus,
            memory_mb=resources.memory_mb,
            pids=resources.pids,
            env=dict(new.env),
            metadata=dict(new.metadata),
            network=network_within(principal.profile.network, new.network),
            entrypoint=list(new.entrypoint),
        )
        await self.admission.admit(record.org_id, lambda: self.store.insert_sandbox(record))
        limits = Limits(
            memory_bytes=record.memory_mb * MiB,
            cpus=record.cpus,
            pids=record.pids,
            tmp_bytes=principal.profile.tmp_mb * MiB,
        )
        shape = Shape(limits, runtime, record.network, freezable=True)
        try:
            async with self._setting_up:
                live = await self._open(record, shape)
            await self._running(live)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._failed(record, exc)
            raise
        self._live[record.id] = live
        self._commands[record.id] = Commands(live, self._tasks)
        self._sessions[record.id] = Sessions(live, self._commands[record.id])
        self._terminals[record.id] = Terminals(live, self._tasks)
        self._contexts[record.id] = Contexts(live, self._tasks)
        self._tasks.start_soon(self._watch, live)
        return record

    async def _open(self, record: SandboxRecord, shape: Shape) -> Live:
        """The sandbox set up (listening for the SDK's health check if its runtime has a
        kernel), its entrypoint started, its record marked Running (stored by _running)."""
        try:
            handle = await self.runtime.prepare(shape, ahead=False)
        except SandboxError as exc:
            raise Unavailable(f"the sandbox could not be set up: {exc}") from None
        try:
            await handle.attach(None)
            assert self._tasks is not None
            await self._kernels.listen(handle, self._tasks)
            record.state = SandboxState.RUNNING
            live = Live(record, handle)
            if record.entrypoint:
                await self._entrypoint(live)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await handle.close()
            raise
        return live

    async def _running(self, live: Live) -> None:
        """Store the record as Running; out of the set-ups' limiter, which a store write
        held up for the sandboxes waiting behind it. A sandbox that cannot be recorded is
        closed."""
        try:
            await self.store.update_sandbox(live.record)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await live.handle.close()
            raise

    async def _entrypoint(self, live: Live) -> None:
        """Start the entrypoint; what it prints is read and dropped (a container's main
        process, such as the SDK's default ``tail -f /dev/null``)."""
        try:
            process = await live.start(live.record.entrypoint)
        except Conflict as exc:
            raise ValidationError(f"entrypoint: {exc.message}") from None
        assert self._tasks is not None
        for pipe in (process.stdout, process.stderr):
            self._tasks.start_soon(Drain(pipe, bytearray(), 0).run)

    async def _failed(self, record: SandboxRecord, exc: BaseException) -> None:
        record.state, record.ended_at = SandboxState.FAILED, time.time()
        record.reason = "SANDBOX_CREATE_FAILED"
        record.message = exc.message if isinstance(exc, BaponiError) else "the set-up failed"
        try:
            await self.store.update_sandbox(record)
        except BaponiError:
            log.exception("could not record the failed create of %s", record.id)

    async def get(self, org_id: str, sandbox_id: str) -> SandboxRecord:
        live = self._live.get(sandbox_id)
        if live is not None and live.record.org_id == org_id:
            return live.record
        record = await self.store.get_sandbox(org_id, sandbox_id)
        if record is None:
            raise NotFound(f"sandbox {sandbox_id} not found")
        return record

    async def list(
        self,
        org_id: str,
        states: Sequence[SandboxState] = (),
        metadata: dict[str, str] | None = None,
        page: int = 1,
        page_size: int = 20,
    ) -> tuple[list[SandboxRecord], int]:
        records, total = await self.store.list_sandboxes(
            org_id, list(states), metadata or {}, (page - 1) * page_size, page_size
        )
        return [self._current(r) for r in records], total

    def _current(self, record: SandboxRecord) -> SandboxRecord:
        live = self._live.get(record.id)
        return live.record if live is not None else record

    def live(self, org_id: str, sandbox_id: str) -> Live:
        """The open sandbox, for its processes and files."""
        live = self._live.get(sandbox_id)
        if live is None or live.record.org_id != org_id:
            raise NotFound(f"sandbox {sandbox_id} not found or not running")
        live.touch()
        return live

    def commands(self, live: Live) -> Commands:
        """The execd commands of an open sandbox."""
        commands = self._commands.get(live.id)
        if commands is None:
            raise SandboxEnded(live.id)
        return commands

    def sessions(self, live: Live) -> Sessions:
        return _of(self._sessions, live)

    def terminals(self, live: Live) -> Terminals:
        return _of(self._terminals, live)

    def contexts(self, live: Live) -> Contexts:
        return _of(self._contexts, live)

    def opened(self, sandbox_id: str) -> Live | None:
        """The open sandbox of that id, whoever's (its execd token says whose)."""
        return self._live.get(sandbox_id)

    async def delete(self, org_id: str, sandbox_id: str) -> None:
        live = self._live.get(sandbox_id)
        if live is None or live.record.org_id != org_id:
            record = await self.get(org_id, sandbox_id)  # a 404, or one that has ended
            raise Conflict(f"sandbox {record.id} has ended already ({record.state.value})")
        await self._end(live, "DELETED")

    async def pause(self, org_id: str, sandbox_id: str) -> SandboxRecord:
        live = self.live(org_id, sandbox_id)
        async with live.changing:
            self._check_running(live, "paused")
            await self._set(live, SandboxState.PAUSING)
            try:
                await live.handle.freeze()
            except SandboxError as exc:
                await self._set(live, SandboxState.RUNNING)
                raise Conflict(f"sandbox {sandbox_id} could not be paused: {exc}") from None
            live.paused_at = time.time()
            await self._set(live, SandboxState.PAUSED)
        return live.record

    async def resume(self, org_id: str, sandbox_id: str) -> SandboxRecord:
        live = self.live(org_id, sandbox_id)
        async with live.changing:
            if live.record.state is not SandboxState.PAUSED or live.paused_at is None:
                raise Conflict(f"sandbox {sandbox_id} is not paused ({live.record.state.value})")
            await live.handle.thaw()
            if not self.paused_counts:  # paused time does not count against its lifetime
                live.record.expires_at += time.time() - live.paused_at
            live.paused_at = None
            await self._set(live, SandboxState.RUNNING)
        return live.record

    async def renew(self, org_id: str, sandbox_id: str, expires_at: float) -> SandboxRecord:
        live = self.live(org_id, sandbox_id)
        now = time.time()
        if expires_at <= now:
            raise ValidationError("expiresAt must lie in the future")
        async with live.changing:
            if not live.record.state.live:
                raise Conflict(f"sandbox {sandbox_id} has ended")
            live.record.expires_at = min(expires_at, now + self.max_lifetime_s)
            await self.store.update_sandbox(live.record)
        return live.record

    def _check_running(self, live: Live, wanted: str) -> None:
        if live.record.state is not SandboxState.RUNNING:
            raise Conflict(f"sandbox {live.id} cannot be {wanted}: it is {live.record.state.value}")

    async def _set(self, live: Live, state: SandboxState) -> None:
        live.record.state = state
        await self.store.update_sandbox(live.record)

    # the end

    async def _watch(self, live: Live) -> None:
        """End the sandbox's record as soon as its init dies, whatever killed it."""
        await live.handle.wait_ended()
        await self._end(live, "SANDBOX_EXITED")

    async def _end(self, live: Live, why: Ending) -> None:
        """Close the sandbox and store its end; once, whoever asks first."""
        with anyio.CancelScope(shield=True):
            async with live.changing:
                if not live.record.state.live:
                    return
                if why != "SANDBOX_EXITED":
                    live.record.state = SandboxState.STOPPING
                    await _stored(self.store, live.record)
                await live.handle.close()
                self._live.pop(live.id, None)
                self._commands.pop(live.id, None)
                self._sessions.pop(live.id, None)
                self._terminals.pop(live.id, None)
                self._contexts.pop(live.id, None)
                failed = why == "SANDBOX_EXITED"
                live.record.state = SandboxState.FAILED if failed else SandboxState.TERMINATED
                live.record.reason, live.record.message = why, MESSAGES[why]
                live.record.ended_at = time.time()
                await _stored(self.store, live.record)

    async def close(self) -> None:
        """End every open sandbox for the server's stop."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as ending:
                for live in list(self._live.values()):
                    ending.start_soon(self._end, live, "SERVER_STOPPED")


def network_within(profile: NetworkPolicy, asked: NetworkPolicy | None) -> NetworkPolicy:
    """The sandbox's egress: what was asked, never more than its key's profile allows.
    Under an allowlist profile only rules the profile has are kept; every deny rule of
    either holds."""
    if asked is None or profile.mode is Mode.NONE:
        return profile
    deny = tuple(sorted({*profile.deny, *asked.deny}))
    if asked.mode is Mode.NONE:
        return asked
    if profile.mode is Mode.OPEN:
        return NetworkPolicy(asked.mode, asked.allow, deny)
    if asked.mode is Mode.OPEN:
        return NetworkPolicy(Mode.ALLOWLIST, profile.allow, deny)
    allow = tuple(r for r in asked.allow if r in profile.allow)
    return NetworkPolicy(Mode.ALLOWLIST, allow, deny) if allow else NetworkPolicy()


def _of(states: dict[str, T], live: Live) -> T:
    """A per-sandbox state of an open sandbox."""
    state = states.get(live.id)
    if state is None:
        raise SandboxEnded(live.id)
    return state


async def _stored(store: Store, record: SandboxRecord) -> None:
    try:
        await store.update_sandbox(record)
    except BaponiError:
        log.exception("could not store the state of sandbox %s", record.id)
