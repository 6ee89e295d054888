"""execd's code contexts in one long-lived sandbox: each a real Jupyter kernel
(``ipykernel``) that keeps its variables between runs, owned by a kernel bridge
(:mod:`bridge`) inside the sandbox, spoken to over that process's pipes alone. The server
never connects to anything the sandbox made.

The bridge is untrusted (user code can kill or replace it): each line it says is bounded
(:data:`MAX_LINE`) and parsed (:mod:`bridgewire`), a line that is not its protocol ends
the context, so does its death, at once, and a run's output is bounded
(:data:`RUN_OUTPUT_BYTES`, the rest dropped). A run that an interrupt does not stop
within :data:`INTERRUPT_GRACE_S` ends its context. Every run ends with one
:class:`Finished`, whatever happened.

One run at a time per context; a default context per language, made at its first use.
What a sandbox's contexts hold on the server is bounded: :data:`MAX_CONTEXTS`, each with
one line being read and :data:`QUEUED` events waiting for its client.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from baponi_core._errors import ValidationError
from baponi_core._sandbox import Process
from baponi_core._sandbox.spec import RUN_DIR, Stream
from baponi_core._sandboxes import bridgewire as wire
from baponi_core._sandboxes.errors import ContextNotFound, NotSupported, RuntimeFailure
from baponi_core._sandboxes.live import Drain, Live, drained

log = logging.getLogger(__name__)

LANGUAGES = ("python", "bash", "java", "javascript", "typescript", "go")  # execd's
KERNELS = ("python",)  # the languages with a kernel here
HERE = Path(__file__).parent
BRIDGE = "kernel-bridge.py"  # at /run/baponi/, inside
PROGRAM = (HERE / "bridge.py").read_bytes()
MAX_CONTEXTS = 8  # per sandbox: each is a kernel, tens of MiB
MAX_LINE = 4 << 20  # one line of the bridge: a large figure, base64
QUEUED = 4  # events of a run held for a client that reads slowly (each one line at most)
RUN_OUTPUT_BYTES = 64 << 20  # what one run may say
START_S = 120.0  # for a kernel to answer (a cold start on a loaded machine)
INTERRUPT_GRACE_S = 10.0
SAY_S = 10.0  # for the bridge to take a request off its pipe
ENDED_KEPT = 64  # ended contexts remembered, to say why they went
TRUNCATED = "\n[output past {} MiB dropped]\n"


# what a run says, in order: Status, Output and Result any number of times, Count once;
# then its stream ends, and CodeRun.finished says how the run ended


@dataclass(frozen=True)
class Status:
    state: str  # the kernel's: busy, idle


@dataclass(frozen=True)
class Output:
    stream: Stream
    text: str


@dataclass(frozen=True)
class Count:
    count: int


@dataclass(frozen=True)
class Result:
    data: Mapping[str, object]  # by MIME type: text/plain, image/png (base64), text/html


@dataclass(frozen=True)
class Failure:
    ename: str
    evalue: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finished:
    elapsed_ms: int
    failure: Failure | None = None


CodeEvent = Status | Output | Count | Result


@dataclass
class CodeRun:
    context_id: str
    events: MemoryObjectReceiveStream[CodeEvent]
    finished: Finished | None = None  # set when ``events`` ends


@dataclass
class _Running:
    run: CodeRun
    sink: MemoryObjectSendStream[CodeEvent] | None
    started: float
    budget: int = RUN_OUTPUT_BYTES
    failure: Failure | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class Context:
    """One kernel and its bridge."""

    def __init__(self, id: str, language: str, process: Process) -> None:
        self.id, self.language, self.process = id, language, process
        self.ready = anyio.Event()
        self.ended = anyio.Event()
        self.why: str | None = None  # why it ended
        self._running: _Running | None = None

    @property
    def running(self) -> bool:
        return self._running is not None

    async def execute(self, code: str) -> CodeRun:
        if self.ended.is_set():
            raise RuntimeFailure(f"code context {self.id} has ended: {self.why}")
        if self._running is not None:
            raise RuntimeFailure("session is busy")
        sink, events = anyio.create_memory_object_stream[CodeEvent](QUEUED)
        run = CodeRun(self.id, events)
        self._running = _Running(run, sink, time.monotonic())
        if not await self._say(json.dumps({"op": "execute", "code": code})):
            self._finish(self._ended_failure())
        return run

    async def interrupt(self) -> None:
        """SIGINT to the kernel; its context ends if the run goes on regardless."""
        running = self._running
        if running is None:
            return
        await self._say('{"op":"interrupt"}')
        with anyio.move_on_after(INTERRUPT_GRACE_S):
            await running.done.wait()
            return
        await self.end("its kernel did not stop at an interrupt")

    async def end(self, why: str) -> None:
        """Kill the bridge (its kernel dies with it); the run, if any, ends now."""
        if self.why is None:
            self.why = why
        await self.process.signal(9)
        self._finish(self._ended_failure())
        self.ended.set()

    def _ended_failure(self) -> Failure:
        return Failure("ContextEnded", f"code context {self.id} has ended: {self.why}")

    async def _say(self, line: str) -> bool:
        stdin = self.process.stdin
        if stdin is None or self.ended.is_set():
            return False
        try:
            with anyio.fail_after(SAY_S):
                await stdin.send(line.encode() + b"\n")
        except OSError:
            return False
        except TimeoutError:
            await self.end(f"its bridge read no request for {SAY_S:.0f} s (stopped from inside?)")
            return False
        return True

    # what the bridge says

    async def follow(self) -> None:
        """Read the bridge until it ends; then the context ends."""
        stderr = bytearray()
        try:
            async with anyio.create_task_group() as readers:
                eof = anyio.Event()
                readers.start_soon(self._read, eof)
                readers.start_soon(Drain(self.process.stderr, stderr, 4096).run)
                await self.process.wait()
                await drained(eof)  # what it said last is still in the pipe
                readers.cancel_scope.cancel()
        finally:
            self.process.close()
            why = "its kernel and bridge ended (killed from inside?)"
            if not self.ready.is_set():
                last = stderr.decode(errors="replace").strip().splitlines()[-1:]
                why = "its kernel did not start" + (f": {last[0][:500]}" if last else "")
            with anyio.CancelScope(shield=True):
                await self.end(why)
            self.ready.set()

    async def _read(self, eof: anyio.Event) -> None:
        buffer, searched = bytearray(), 0
        try:
            while chunk := await self.process.stdout.receive():
                buffer += chunk
                while (end := buffer.find(b"\n", searched)) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    searched = 0
                    if not await self._take(line):
                        return
                searched = len(buffer)
                if len(buffer) > MAX_LINE:
                    await self.end(f"its bridge said a line past {MAX_LINE >> 20} MiB")
                    return
        finally:
            eof.set()

    async def _take(self, line: bytes) -> bool:
        """Act on one line; False if it ends the context."""
        message = wire.parse_line(line)
        if message is None:
            await self.end("its bridge broke the protocol (replaced from inside?)")
            return False
        if isinstance(message, wire.Died):
            await self.end(message.message)
            return False
        if isinstance(message, wire.Ready):
            self.ready.set()
            return True
        running = self._running
        if running is None:
            return True  # nothing asked: dropped
        running.budget -= len(line)
        if isinstance(message, wire.Reply):
            if running.failure is None and message.status != "ok":
                running.failure = Failure(message.status, f"the run ended: {message.status}")
            self._finish(running.failure)
        elif isinstance(message, wire.Error):
            running.failure = Failure(message.ename, message.evalue, tuple(message.traceback))
        elif isinstance(message, wire.Status):
            await self._emit(running, Status(message.state))
        elif isinstance(message, wire.Count):
            await self._emit(running, Count(message.count))
        elif running.budget < 0:
            if running.budget + len(line) >= 0:  # the first line past it
                note = TRUNCATED.format(RUN_OUTPUT_BYTES >> 20)
                await self._emit(running, Output("stderr", note))
        elif isinstance(message, wire.StreamText):
            if message.text:
                await self._emit(running, Output(message.name, message.text))
        else:
            await self._emit(running, Result(message.data))
        return True

    async def _emit(self, running: _Running, event: CodeEvent) -> None:
        if running.sink is None:
            return
        try:
            await running.sink.send(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            running.sink = None  # the caller went away; the run goes on

    def _finish(self, failure: Failure | None) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        elapsed = int((time.monotonic() - running.started) * 1000)
        running.run.finished = Finished(elapsed, failure)
        if running.sink is not None:
            running.sink.close()
        running.done.set()


class Contexts:
    """The code contexts of one sandbox; their readers run in ``tasks`` (the service's),
    so that they outlive the request that made them."""

    def __init__(self, live: Live, tasks: TaskGroup) -> None:
        self.live, self.tasks = live, tasks
        self._contexts: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}  # language: the id of its default context
        self._ended: OrderedDict[str, str] = OrderedDict()  # id: why
        self._starting = anyio.Lock()  # one bridge started at a time: its file written once
        self._written = False
        self._locks: dict[str, anyio.Lock] = {}  # language: held while its default is made
        self._creating = 0  # contexts being made now

    @property
    def busy(self) -> bool:
        """Whether a context is being made or runs code (the sandbox is not idle)."""
        return self._creating > 0 or any(c.running for c in self._contexts.values())

    async def create(self, language: str, cwd: str | None = None) -> Context:
        check_language(language)
        if len(self.list()) >= MAX_CONTEXTS:
            raise RuntimeFailure(f"this sandbox has {MAX_CONTEXTS} code contexts; delete one")
        self._creating += 1
        try:
            return await self._create(language, cwd)
        finally:
            self._creating -= 1

    async def _create(self, language: str, cwd: str | None) -> Context:
        if cwd is not None and (await self.live.run(("test", "-d", cwd))).status != 0:
            raise ValidationError(f"cwd: {cwd} is no directory in the sandbox")
        process = await self._start_bridge(cwd)
        context = Context(secrets.token_hex(16), language, process)
        self._contexts[context.id] = context
        self.tasks.start_soon(self._follow, context)
        with anyio.move_on_after(START_S):
            await context.ready.wait()
        if not context.ready.is_set():
            await context.end(f"its kernel did not start within {START_S:.0f} s")
        if context.ended.is_set():
            raise RuntimeFailure(f"could not create a {language} context: {context.why}")
        return context

    async def _start_bridge(self, cwd: str | None) -> Process:
        """The bridge started with the runtime's Python, a pipe on its stdin; its file is
        written into the sandbox at the first start."""
        python = self.live.handle.shape.runtime.interpreter("python")
        if python is None:
            raise NotSupported(f"runtime {self.live.record.runtime} has no Python for a kernel")
        async with self._starting:
            files = {} if self._written else {BRIDGE: PROGRAM}
            argv = (*python, "-I", f"{RUN_DIR}/{BRIDGE}")
            process = await self.live.start(argv, cwd=cwd, stdin=True, files=files)
            self._written = True
        return process

    async def _follow(self, context: Context) -> None:
        await context.follow()
        self._forget(context)

    def get(self, context_id: str) -> Context:
        context = self._contexts.get(context_id)
        if context is None or context.ended.is_set():
            why = context.why if context is not None else self._ended.get(context_id)
            if why is not None:
                raise ContextNotFound(f"code context {context_id} has ended: {why}")
            raise ContextNotFound(f"no code context {context_id} in this sandbox")
        return context

    def list(self, language: str | None = None) -> list[Context]:
        if language is not None:
            check_language(language, kernel=False)
        contexts = self._contexts.values()
        return [c for c in contexts if language in (None, c.language) and not c.ended.is_set()]

    async def delete(self, context_id: str) -> None:
        context = self.get(context_id)
        await context.end("deleted")
        self._forget(context)

    async def delete_language(self, language: str) -> None:
        for context in self.list(language):
            await context.end("deleted")
            self._forget(context)

    def _forget(self, context: Context) -> None:
        """An ended context gone from the lists, its reason kept for a while."""
        if self._contexts.pop(context.id, None) is None:
            return
        self._ended[context.id] = context.why or "it ended"
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        if self._defaults.get(context.language) == context.id:
            del self._defaults[context.language]

    async def default(self, language: str) -> Context:
        """The language's default context, made now if it has none (one at a time)."""
        async with self._locks.setdefault(language, anyio.Lock()):
            context_id = self._defaults.get(language)
            context = self._contexts.get(context_id or "")
            if context is not None and not context.ended.is_set():
                return context
            context = await self.create(language)
            self._defaults[language] = context.id
            return context

    async def run(self, code: str, context_id: str | None, language: str) -> CodeRun:
        self.live.check_usable()  # a paused sandbox's kernels would not answer
        if context_id:
            try:
                context = self.get(context_id)
            except ContextNotFound as exc:  # execd's answer on a run: RUNTIME_ERROR
                raise RuntimeFailure(exc.message) from None
        else:
            context = await self.default(language)
        if context_id and language and context.language != language:
            raise ValidationError(f"context {context_id} is {context.language}, not {language}")
        return await context.execute(code)

    async def interrupt(self, context_id: str) -> None:
        self.live.check_usable()  # else its grace would run out while the kernel is frozen
        context = self._contexts.get(context_id)
        if context is None or context.ended.is_set():
            raise RuntimeFailure(f"no such session: {context_id}")
        await context.interrupt()


def check_language(language: str, *, kernel: bool = True) -> None:
    """Raise unless ``language`` is one of execd's (and, with ``kernel``, has one here)."""
    if language not in LANGUAGES:
        raise ValidationError(f"language must be one of {', '.join(LANGUAGES)}")
    if kernel and language not in KERNELS:
        raise NotSupported(f"no {language} kernel here; code contexts run {', '.join(KERNELS)}")
