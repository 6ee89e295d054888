"""execd's PTY sessions in one long-lived sandbox: a shell on a terminal of its own (or on
plain pipes), started at its first client, kept running between clients, with its output
kept for replay.

The terminal is made inside the sandbox, by :mod:`ptyrelay` run with the runtime's
``python3``; the server holds only that relay's pipes. Its stdin carries framed input,
resizes and signals; its stdout is the terminal's output, copied as it is into a
bounded :class:`Output` (the last :data:`OUTPUT_BYTES`, addressed by offsets from the
first byte, as execd's ``since`` is) and from there to the one client that holds the
session. In pipe mode the shell itself is the process, stdout and stderr apart.

One client at a time: another is refused unless it takes over, which closes the
holder first. A client's input goes through a bounded queue to one writer, so that a
client cut off mid-way never leaves half a frame in the relay's stdin.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import secrets
import signal
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from baponi_core._errors import Conflict, RateLimited
from baponi_core._sandbox import Process, SandboxError
from baponi_core._sandbox.pipes import PipeReader
from baponi_core._sandboxes.commands import INTERRUPT_GRACE_S, SIGNALLED
from baponi_core._sandboxes.errors import ContextNotFound
from baponi_core._sandboxes.files import resolve
from baponi_core._sandboxes.live import Live, drained

log = logging.getLogger(__name__)

RELAY = Path(__file__).with_name("ptyrelay.py").read_text()
OUTPUT_BYTES = 1 << 20  # kept per session for replay
MAX_TERMINALS = 16  # per sandbox
COLS, ROWS = 80, 24  # a new terminal's size, as execd's
TERM = "xterm-256color"
INPUT_FRAMES = 64  # queued per session before a client waits
FRAME_BYTES = 1 << 16  # of input in one relay frame (the relay's own bound)
MERGE_BYTES = 4096  # output chunks smaller than this join the one before
TAKEOVER_S = 5.0  # how long a takeover waits for the holder to let go
# How long a new client waits for a holder to let go by itself: a client that closes and
# reconnects at once is back before the server has seen its close.
LEAVING_S = 0.5
HEADER = struct.Struct(">BI")  # the relay's frames: kind, length
DATA, RESIZE, SIGNAL = 0, 1, 2


class Channel(enum.IntEnum):
    """Which stream output came on, as the WebSocket's frame type byte says it."""

    STDOUT = 1
    STDERR = 2


class AlreadyConnected(Conflict):
    code = "ALREADY_CONNECTED"


@dataclass(frozen=True)
class Chunk:
    offset: int
    channel: Channel
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class Output:
    """The last ``limit`` bytes a session wrote, in chunks that keep their channel."""

    def __init__(self, limit: int = OUTPUT_BYTES) -> None:
        self.limit = limit
        self.end = 0  # the offset of the next byte
        self.chunks: deque[Chunk] = deque()
        self.size = 0
        self.changed = anyio.Event()  # set (and replaced) at each change

    @property
    def start(self) -> int:
        return self.chunks[0].offset if self.chunks else self.end

    def append(self, channel: Channel, data: bytes) -> None:
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last.channel == channel and len(last.data) < MERGE_BYTES:
            self.chunks[-1] = Chunk(last.offset, channel, last.data + data)
        else:
            self.chunks.append(Chunk(self.end, channel, data))
        self.end += len(data)
        self.size += len(data)
        while self.size > self.limit:
            first, excess = self.chunks[0], self.size - self.limit
            if len(first.data) <= excess:
                self.chunks.popleft()
                self.size -= len(first.data)
            else:
                self.chunks[0] = Chunk(first.offset + excess, first.channel, first.data[excess:])
                self.size -= excess
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def since(self, offset: int) -> list[Chunk]:
        """What was written at or after ``offset`` (from the oldest kept, if later)."""
        found = []
        for chunk in self.chunks:
            if chunk.end > offset:
                skip = max(0, offset - chunk.offset)
                found.append(Chunk(chunk.offset + skip, chunk.channel, chunk.data[skip:]))
        return found


@dataclass
class Holder:
    """The client attached to a session."""

    evicted: anyio.Event = field(default_factory=anyio.Event)  # a takeover asks it to go
    released: anyio.Event = field(default_factory=anyio.Event)  # it has gone


class Terminal:
    def __init__(self, terminal_id: str, cwd: str | None, command: str | None) -> None:
        self.id, self.cwd, self.command = terminal_id, cwd, command
        self.output = Output()
        self.process: Process | None = None
        self.pty = True
        self.exit_code: int | None = None
        self.ended = anyio.Event()
        self.holder: Holder | None = None
        self.starting = anyio.Lock()  # one start, by whichever client comes first
        self._claiming = anyio.Lock()
        self._input, self._queued = anyio.create_memory_object_stream[bytes](INPUT_FRAMES)

    @property
    def running(self) -> bool:
        return self.process is not None and not self.ended.is_set()

    # the one client

    async def free(self) -> bool:
        """Whether nobody holds the session, once a holder that is leaving has gone."""
        old = self.holder
        if old is not None:
            with anyio.move_on_after(LEAVING_S):
                await old.released.wait()
        return self.holder is None

    async def claim(self, takeover: bool) -> Holder:
        """Hold the session; with ``takeover`` the holder is made to let go first."""
        async with self._claiming:
            if not takeover and not await self.free():
                raise AlreadyConnected(f"another client is attached to pty session {self.id}")
            old = self.holder
            if old is not None:  # a takeover
                old.evicted.set()
                with anyio.move_on_after(TAKEOVER_S):
                    await old.released.wait()
                if self.holder is old:
                    raise AlreadyConnected(f"the holder of pty session {self.id} did not let go")
            self.holder = Holder()
            return self.holder

    def release(self, holder: Holder) -> None:
        if self.holder is holder:
            self.holder = None
        holder.released.set()

    # input

    async def write(self, data: bytes) -> None:
        for at in range(0, len(data), FRAME_BYTES):
            piece = data[at : at + FRAME_BYTES]
            await self._queue(_frame(DATA, piece) if self.pty else piece)

    async def resize(self, cols: int, rows: int) -> None:
        if self.pty:
            await self._queue(_frame(RESIZE, struct.pack(">HH", cols, rows)))

    async def signal(self, signo: int) -> None:
        """To the terminal's foreground group (pipe mode: the shell's group)."""
        if self.pty:
            await self._queue(_frame(SIGNAL, bytes([signo])))
        elif self.process is not None:
            await self.process.signal(signo)

    async def _queue(self, frame: bytes) -> None:
        if not self.ended.is_set():
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self._input.send(frame)

    # the process

    async def follow(self, process: Process) -> None:
        """Copy its output and its input until it ends, then say how it ended. It runs
        in the service's task group: a failure is logged here, never let out to end
        every sandbox's tasks."""
        try:
            async with anyio.create_task_group() as copies:
                ends = [anyio.Event(), anyio.Event()]
                err = Channel.STDERR if not self.pty else None  # the relay's own: dropped
                copies.start_soon(self._read, process.stdout, Channel.STDOUT, ends[0])
                copies.start_soon(self._read, process.stderr, err, ends[1])
                copies.start_soon(self._feed, process)
                await process.wait()
                await drained(*ends)
                copies.cancel_scope.cancel()
        except Exception:
            log.exception("pty session %s: its copies failed", self.id)
            with contextlib.suppress(SandboxError):
                await process.signal(signal.SIGKILL)
        finally:
            process.close()
            self._input.close()
            self.exit_code = SIGNALLED if process.signal_number is not None else process.status
            self.ended.set()
            self.output.wake()

    async def _read(self, pipe: PipeReader, channel: Channel | None, end: anyio.Event) -> None:
        try:
            while chunk := await pipe.receive():
                if channel is not None:
                    self.output.append(channel, chunk)
        finally:
            end.set()

    async def _feed(self, process: Process) -> None:
        assert process.stdin is not None
        async with self._queued:
            async for frame in self._queued:
                try:
                    await process.stdin.send(frame)
                except OSError:
                    return
        process.stdin.close()  # no more input: the relay hangs up

    async def stop(self) -> None:
        """End it: its input closed (the relay hangs up), then killed if it stays."""
        self._input.close()
        if self.process is None:
            self.ended.set()
            self.output.wake()
            return
        with anyio.move_on_after(INTERRUPT_GRACE_S):
            await self.ended.wait()
            return
        await self.process.signal(signal.SIGKILL)


def _frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class Terminals:
    """The PTY sessions of one sandbox; their copies run in ``tasks`` (the service's), so
    that a session outlives its clients."""

    def __init__(self, live: Live, tasks: TaskGroup) -> None:
        self.live, self.tasks = live, tasks
        self._terminals: dict[str, Terminal] = {}

    def create(self, cwd: str | None, command: str | None) -> Terminal:
        if len(self._terminals) >= MAX_TERMINALS:
            ended = [t for t in self._terminals.values() if t.ended.is_set()]
            if not ended:
                raise RateLimited(f"this sandbox has {MAX_TERMINALS} pty sessions already", 1)
            del self._terminals[ended[0].id]
        where = resolve(self.live, cwd) if cwd else None  # the sandbox's path, as for files
        terminal = Terminal(secrets.token_hex(16), where, command)
        self._terminals[terminal.id] = terminal
        return terminal

    @property
    def busy(self) -> bool:
        """Whether a client is attached to any of them (the sandbox is not idle)."""
        return any(terminal.holder is not None for terminal in self._terminals.values())

    def get(self, terminal_id: str) -> Terminal:
        terminal = self._terminals.get(terminal_id)
        if terminal is None:
            raise ContextNotFound(f"pty session {terminal_id} not found")
        return terminal

    async def start(self, terminal: Terminal, pty: bool) -> None:
        """Start its shell, unless one has been started already (then its mode holds)."""
        async with terminal.starting:
            if terminal.process is not None or terminal.ended.is_set():
                return
            shell = ["bash", "--norc", "--noprofile"]
            if terminal.command:
                shell += ["-c", terminal.command]
            argv = ["python3", "-c", RELAY, str(COLS), str(ROWS), *shell] if pty else shell
            env = {"TERM": TERM} if pty else {}
            process = await self.live.start(argv, env=env, cwd=terminal.cwd, stdin=True)
            terminal.process, terminal.pty = process, pty
            self.tasks.start_soon(terminal.follow, process)

    async def delete(self, terminal_id: str) -> None:
        terminal = self.get(terminal_id)
        del self._terminals[terminal_id]
        await terminal.stop()
