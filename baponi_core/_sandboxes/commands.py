"""execd's commands in one long-lived sandbox: ``bash -c`` in a process group of its own,
in the foreground (its output streamed to the caller) or in the background (its output
kept for ``logs``), each with a status, an optional timeout and an interrupt.

Output is kept per command in a bounded log (the last :data:`LOG_BYTES`, with byte
offsets counted from its start, as execd's cursor is), and only so many commands are
remembered per sandbox: the oldest finished ones are forgotten first. A foreground
caller gets its output as it comes, at the pace it reads; one that goes away leaves the
command running, its output to the log.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from baponi_core._errors import RateLimited, ValidationError
from baponi_core._sandbox import Process
from baponi_core._sandbox.pipes import PipeReader
from baponi_core._sandbox.rootfs import SANDBOX_UID
from baponi_core._sandbox.spec import Stream
from baponi_core._sandboxes.errors import RuntimeFailure
from baponi_core._sandboxes.live import Live, drained

LOG_BYTES = 4 << 20  # what is kept of one command's output
MAX_COMMANDS = 32  # remembered per sandbox
INTERRUPT_GRACE_S = 3.0  # between SIGTERM and SIGKILL
SIGNALLED = -1  # the exit code of a command a signal ended, as execd (Go) reports it


class Log:
    """The tail of a command's output, addressed by offsets from its first byte."""

    def __init__(self, limit: int = LOG_BYTES) -> None:
        self.limit = limit
        self.data = bytearray()
        self.start = 0  # the offset of data[0]

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.start += excess

    def since(self, cursor: int) -> bytes:
        """What came at or after ``cursor`` (from the oldest kept, if that is later)."""
        return bytes(self.data[max(0, cursor - self.start) :])


@dataclass
class CommandRun:
    id: str
    content: str
    background: bool
    started_at: float
    process: Process
    log: Log = field(default_factory=Log)
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    output: MemoryObjectReceiveStream[tuple[Stream, bytes]] | None = None  # foreground only

    @property
    def running(self) -> bool:
        return not self.done.is_set()


@dataclass(frozen=True)
class NewCommand:
    command: str
    cwd: str | None = None
    background: bool = False
    timeout_ms: int | None = None
    uid: int | None = None
    gid: int | None = None
    envs: Mapping[str, str] = field(default_factory=dict)
    argv: Sequence[str] = ()  # what runs, if not ``bash -c command`` (a bash session's run)


class Commands:
    """The commands of one sandbox; their readers run in ``tasks`` (the service's), so
    that they outlive the request that started them."""

    def __init__(self, live: Live, tasks: TaskGroup) -> None:
        self.live, self.tasks = live, tasks
        self._runs: dict[str, CommandRun] = {}

    async def start(self, new: NewCommand) -> CommandRun:
        if new.gid is not None and new.uid is None:
            raise ValidationError("gid needs uid")
        for name, given in (("uid", new.uid), ("gid", new.gid)):
            if given is not None and given != SANDBOX_UID:
                raise ValidationError(f"{name}: commands run as the sandbox's user ({SANDBOX_UID})")
        self._make_room()
        argv = new.argv or ("bash", "-c", new.command)
        process = await self.live.start(argv, env=new.envs, cwd=new.cwd)
        run = CommandRun(secrets.token_hex(16), new.command, new.background, time.time(), process)
        sender: MemoryObjectSendStream[tuple[Stream, bytes]] | None = None
        if not new.background:
            sender, run.output = anyio.create_memory_object_stream[tuple[Stream, bytes]](16)
        self._runs[run.id] = run
        self.tasks.start_soon(self._follow, run, sender, new.timeout_ms)
        return run

    def _make_room(self) -> None:
        if len(self._runs) < MAX_COMMANDS:
            return
        finished = [r for r in self._runs.values() if not r.running]
        if not finished:
            raise RateLimited(f"this sandbox runs {MAX_COMMANDS} commands already", 1)
        del self._runs[min(finished, key=lambda r: r.started_at).id]

    @property
    def busy(self) -> bool:
        """Whether any of its commands still runs."""
        return any(run.running for run in self._runs.values())

    def get(self, command_id: str) -> CommandRun | None:
        return self._runs.get(command_id)

    async def interrupt(self, command_id: str) -> None:
        """SIGTERM to its process group; SIGKILL if it has not ended 3 s later."""
        run = self._runs.get(command_id)
        if run is None or not run.running:
            raise RuntimeFailure(f"command {command_id} is not running")
        await run.process.signal(signal.SIGTERM)
        with anyio.move_on_after(INTERRUPT_GRACE_S):
            await run.done.wait()
            return
        await run.process.signal(signal.SIGKILL)

    async def _follow(
        self,
        run: CommandRun,
        sender: MemoryObjectSendStream[tuple[Stream, bytes]] | None,
        timeout_ms: int | None,
    ) -> None:
        process = run.process
        try:
            async with anyio.create_task_group() as readers:
                ends = [anyio.Event(), anyio.Event()]
                pipes: tuple[tuple[Stream, PipeReader], ...] = (
                    ("stdout", process.stdout),
                    ("stderr", process.stderr),
                )
                for (name, pipe), end in zip(pipes, ends, strict=True):
                    readers.start_soon(_read, run, name, pipe, sender, end)
                limit = None if timeout_ms is None else timeout_ms / 1000
                with anyio.move_on_after(limit) as scope:
                    await process.wait()
                if scope.cancelled_caught:
                    await process.signal(signal.SIGKILL)
                    await process.wait()
                await drained(*ends)
                readers.cancel_scope.cancel()
        finally:
            if sender is not None:
                sender.close()
            process.close()
            status = process.status
            run.exit_code = SIGNALLED if process.signal_number is not None else status
            if run.exit_code != 0:
                run.error = f"exit status {run.exit_code}"
            run.finished_at = time.time()
            run.done.set()


async def _read(
    run: CommandRun,
    name: Stream,
    pipe: PipeReader,
    sender: MemoryObjectSendStream[tuple[Stream, bytes]] | None,
    end: anyio.Event,
) -> None:
    """Copy one pipe to the log, and to a foreground caller while it reads."""
    try:
        while chunk := await pipe.receive():
            run.log.append(chunk)
            if sender is not None:
                try:
                    await sender.send((name, chunk))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    sender = None  # the caller went away: the log has it
    finally:
        end.set()
