"""One long-lived sandbox on this server: its record and the handle kept open for it.

Every process of it is started here, as the sandbox's user, with the sandbox's
environment (its runtime's, its egress proxy's, then the variables it was created with,
then the process's own). Everything a process says is its own: it is copied, bounded,
never interpreted. A paused sandbox starts nothing; a sandbox whose init has gone
(killed from inside, say) refuses at once, never hangs.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

from baponi_core._errors import Conflict
from baponi_core._records import Sandbox as SandboxRecord
from baponi_core._records import SandboxState
from baponi_core._sandbox import Command, Process, Sandbox, SandboxError
from baponi_core._sandbox.pipes import PipeReader
from baponi_core._sandbox.rootfs import HOME
from baponi_core._sandbox.warm import base_env

RUN_TIMEOUT_S = 30.0  # the default for the server's own short processes (file work)
RUN_OUTPUT_BYTES = 64 << 20  # what such a process may say, each stream
ENDED = (SandboxState.TERMINATED, SandboxState.FAILED)
DRAIN_S = 1.0  # how long output is still read after the process has ended


class SandboxEnded(Conflict):
    """The sandbox's init has gone, so has every process it ran."""

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} has ended; create a new one")


class SandboxPaused(Conflict):
    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} is paused; resume it first")


@dataclass(frozen=True)
class Completed:
    """A process run to its end: its status (the exit code, or 128 + the signal) and
    what it wrote, each stream cut at the bound it was run with."""

    status: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


class Live:
    """A sandbox kept open. ``token`` opens its execd endpoint and no other sandbox's."""

    def __init__(self, record: SandboxRecord, handle: Sandbox) -> None:
        self.record = record
        self.handle = handle
        self.token = secrets.token_urlsafe(32)
        self.paused_at: float | None = None  # since when it is frozen
        self.last_used = time.time()  # its last request (its idle lifetime counts from it)
        self.changing = anyio.Lock()  # one pause, resume or end at a time

    @property
    def id(self) -> str:
        return self.record.id

    def grants(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.token.encode())

    def touch(self) -> None:
        self.last_used = time.time()

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**base_env(self.handle.shape), **self.record.env, **(extra or {})}

    def check_usable(self) -> None:
        """Raise unless a process can be started now."""
        state = self.record.state
        if self.handle.ended or state in (SandboxState.STOPPING, *ENDED):
            raise SandboxEnded(self.id)
        if self.paused_at is not None or state in (SandboxState.PAUSING, SandboxState.PAUSED):
            raise SandboxPaused(self.id)

    async def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        files: Mapping[str, bytes] | None = None,
    ) -> Process:
        """Start a process; its pipes are the caller's to read and close. ``files`` are
        written first, at ``/run/baponi/<name>`` (a name taken already is an error)."""
        self.check_usable()
        command = Command(tuple(argv), self.env(env), cwd or HOME, files or {}, stdin=stdin)
        try:
            return await self.handle.start(command)
        except SandboxError as exc:
            if self.handle.ended:
                raise SandboxEnded(self.id) from None
            raise Conflict(exc.args[0]) from None

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float = RUN_TIMEOUT_S,
        output_bytes: int = RUN_OUTPUT_BYTES,
    ) -> Completed:
        """Run a process to its end, ``stdin`` written to it; killed (its process group)
        after ``timeout_s``. Output past ``output_bytes`` per stream is read and dropped,
        so that the process is never blocked on a full pipe."""
        process = await self.start(argv, env=env, cwd=cwd, stdin=stdin is not None)
        out, err = bytearray(), bytearray()
        timed_out = False
        try:
            async with anyio.create_task_group() as tasks:
                readers = [
                    Drain(process.stdout, out, output_bytes),
                    Drain(process.stderr, err, output_bytes),
                ]
                for reader in readers:
                    tasks.start_soon(reader.run)
                if stdin is not None and process.stdin is not None:
                    tasks.start_soon(_feed, process, stdin)
                with anyio.move_on_after(timeout_s) as scope:
                    status = await process.wait()
                if scope.cancelled_caught:
                    timed_out = True
                    await process.signal(9)
                    status = await _wait_or_gone(self, process)
                await drained(*(reader.done for reader in readers))
                tasks.cancel_scope.cancel()
        finally:
            process.close()
        return Completed(status, bytes(out), bytes(err), timed_out)


async def drained(*ends: anyio.Event) -> None:
    """Wait, :data:`DRAIN_S` at most, for the readers of an ended process to reach the
    end of its pipes: what it left running may hold them open (what came is kept)."""
    with anyio.move_on_after(DRAIN_S):
        for end in ends:
            await end.wait()


class Drain:
    """Reads one pipe to its end into ``into``, keeping at most ``limit`` bytes."""

    def __init__(self, pipe: PipeReader, into: bytearray, limit: int) -> None:
        self.pipe, self.into, self.limit = pipe, into, limit
        self.done = anyio.Event()

    async def run(self) -> None:
        try:
            while chunk := await self.pipe.receive():
                self.into += chunk[: max(0, self.limit - len(self.into))]
        finally:
            self.done.set()


async def _feed(process: Process, data: bytes) -> None:
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, OSError):
        await process.stdin.send(data)
    process.stdin.close()


async def _wait_or_gone(live: Live, process: Process) -> int:
    """The status of a killed process; the sandbox's own end if that comes first."""
    with anyio.move_on_after(5):
        return await process.wait()
    raise SandboxEnded(live.id)
