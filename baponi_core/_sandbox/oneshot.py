"""Run one program to its end in a sandbox of its own: what an execution is.

One user of the sandbox handle: prepare a sandbox, attach the home and volumes, start
the interpreter on the code, collect stdout and stderr up to their cap under a
wall-clock deadline, then close the sandbox (whatever the code left running goes with
it) and say how it ended.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import anyio

from baponi_core._sandbox import warm
from baponi_core._sandbox.handle import KILLED, Process, Sandbox, SandboxError
from baponi_core._sandbox.pipes import PipeReader
from baponi_core._sandbox.pool import Pool
from baponi_core._sandbox.runtime import SandboxRuntime
from baponi_core._sandbox.spec import RUN_DIR, Command, MiB, Mount, Shape, Stream

STOP_WAIT_S = 10.0

SCRIPTS = {"python": "main.py", "bash": "main.sh", "node": "main.js"}  # by language

OutputSink = Callable[[Stream, bytes], None]  # called as output arrives


@dataclass(frozen=True)
class CodeRun:
    """One program: ``code`` in ``language``, with the request's environment, home and
    volumes, and connector files (``secrets``, by path below /run/secrets), in a sandbox
    of ``shape``, whose runtime has an interpreter for it (the caller checked)."""

    language: str
    code: bytes
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    shape: Shape = field(default_factory=Shape)
    home: Path | None = None  # a thread home; None: a fresh tmpfs, discarded
    mounts: tuple[Mount, ...] = ()  # volumes and storage connections, under /data
    timeout_s: float = 60.0  # from the start of set-up
    output_bytes: int = 1 * MiB  # per stream

    def command(self) -> Command:
        runtime, script = self.shape.runtime, SCRIPTS[self.language]
        interpreter = runtime.interpreter(self.language)
        if interpreter is None:
            raise SandboxError(f"runtime {runtime.name} has no interpreter for {self.language}")
        return Command(
            argv=(*interpreter, f"{RUN_DIR}/{script}"),
            env={**warm.base_env(self.shape), **self.env},
            cwd=runtime.workdir,
            files={script: self.code},
            secrets=self.secrets,
            cpu_seconds=int(self.timeout_s) + 5,  # a backstop; the wall clock rules
            last=True,
        )


class Ending(Enum):
    """How a program ended."""

    EXITED = "exited"
    OOM = "oom"
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"
    SECCOMP = "seccomp"
    STOPPED = "stopped"  # killed on request: a cancel or a shutdown


@dataclass(frozen=True)
class Outcome:
    ending: Ending
    exit_code: int  # as a shell reports it: 128 + the signal for a signal
    stdout: bytes
    stderr: bytes
    duration_ms: int
    blocked: bool = False  # the egress proxy refused a connection of it by its policy


@dataclass
class _Run:
    sandbox: Sandbox
    timed_out: bool = False
    overflowed: bool = False
    stopped: bool = False
    signal_number: int | None = None  # the signal that ended the program, if one did


@asynccontextmanager
async def run_code(
    runtime: SandboxRuntime,
    job: CodeRun,
    *,
    on_output: OutputSink | None = None,
    stop: anyio.Event | None = None,
    pool: Pool | None = None,
) -> AsyncIterator[Outcome]:
    """Run ``job`` to its end, passing output to ``on_output`` as it is written; the block
    gets the outcome. Setting ``stop`` kills the sandbox (ending ``STOPPED``); so does
    cancelling the caller. Raises SandboxError (MountError for a mount) if the sandbox
    could not be set up. With a ``pool``, a sandbox prepared ahead is used when it has
    one of the job's shape and language (its waiting interpreter too, when the job's
    variables let it serve); else one is set up now.

    The block runs as soon as the program has ended and its output is in, while its
    sandbox, killed, is still ending (a caller can record the outcome meanwhile); leaving
    the block waits until no process of the sandbox runs any more. What the sandbox held
    is freed after that, in the background."""
    started = time.monotonic()
    prepared = pool.take(job.shape, job.language) if pool is not None else None
    if prepared is not None:
        sandbox, waiting = prepared.sandbox, prepared.waiting
    else:
        sandbox, waiting = await runtime.prepare(job.shape, ahead=False), None  # at attach
    try:
        await sandbox.attach(job.home, job.mounts)
        run = _Run(sandbox)
        streams: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        failure: SandboxError | None = None
        async with anyio.create_task_group() as watch:
            if stop is not None:
                watch.start_soon(_stop_on, stop, run)
            try:
                code = await _supervise(run, job, streams, started, on_output, waiting)
            except SandboxError as exc:
                failure = None if run.stopped else exc  # stopped while it was being started
                code = KILLED
            watch.cancel_scope.cancel()
        if failure is not None:  # raised here, not from the task group: as it is, ungrouped
            raise failure
        yield Outcome(
            ending=_ending(run, code),
            exit_code=code,
            stdout=bytes(streams["stdout"]),
            stderr=bytes(streams["stderr"]),
            duration_ms=int((time.monotonic() - started) * 1000),
            blocked=sandbox.egress_refused > 0,
        )
    finally:
        if waiting is not None:  # not handed the program (a failed attach, a stop): ours
            waiting.close()
        await sandbox.close(wait=False)


async def run_to_end(runtime: SandboxRuntime, job: CodeRun) -> Outcome:
    """:func:`run_code`, for a caller with nothing to do before the sandbox has ended."""
    async with run_code(runtime, job) as outcome:
        return outcome


async def _supervise(
    run: _Run,
    job: CodeRun,
    streams: dict[Stream, bytearray],
    started: float,
    on_output: OutputSink | None,
    waiting: Process | None,
) -> int:
    """Start the program and wait for its end under the deadline; its status."""
    remaining = job.timeout_s - (time.monotonic() - started)
    process: Process | None = None
    code = KILLED
    try:
        with anyio.move_on_after(max(remaining, 0)) as deadline:
            process = await _begin(run.sandbox, job, waiting)
            async with anyio.create_task_group() as pumps:
                pipes: tuple[tuple[Stream, PipeReader], ...] = (
                    ("stdout", process.stdout),
                    ("stderr", process.stderr),
                )
                for name, pipe in pipes:
                    pumps.start_soon(_pump, run, pipe, name, streams[name], job, on_output)
                code = await process.wait()  # and the sandbox is ending: what it left too
                run.sandbox.kill()  # at once, so that the pipes those held end
        if deadline.cancelled_caught:
            run.timed_out = True
            run.sandbox.kill()
            if process is not None:
                with anyio.move_on_after(STOP_WAIT_S):
                    code = await process.wait()
        if process is not None:
            run.signal_number = process.signal_number
    finally:  # cancelled too (the core closed from a cancelled task): the pipes go
        if process is not None:
            process.close()
    return code


async def _begin(sandbox: Sandbox, job: CodeRun, waiting: Process | None) -> Process:
    """The program's process: the ``waiting`` interpreter given the program, when it can
    run it as a fresh one would; else a fresh one (the waiting one killed first)."""
    command = job.command()
    if waiting is not None and warm.serves(job.language, job.shape, command.env):
        for name, data in command.files.items():
            sandbox.put(name, data)
        sandbox.put_secrets(command.secrets)
        command = replace(command, files={}, secrets={})  # given already
        if await _hand_over(waiting, command):
            return waiting
        # it died as it was handed out (no code of anyone's ran): a fresh one, then
    if waiting is not None:
        waiting.close()
        await waiting.signal(signal.SIGKILL)
        await waiting.wait()
    return await sandbox.start(command)


async def _hand_over(waiting: Process, command: Command) -> bool:
    """Give the waiting interpreter its program; whether it was still there to take it."""
    assert waiting.stdin is not None
    try:
        await waiting.stdin.send(warm.request(command))
    except BrokenPipeError:
        return False
    finally:
        waiting.stdin.close()
    return True


async def _pump(
    run: _Run,
    pipe: PipeReader,
    name: Stream,
    data: bytearray,
    job: CodeRun,
    on_output: OutputSink | None,
) -> None:
    while chunk := await pipe.receive():
        room = job.output_bytes - len(data)
        kept = chunk[:room]
        data += kept
        if on_output is not None and kept:
            on_output(name, kept)
        if len(chunk) > room:
            run.overflowed = True
            run.sandbox.kill()
            return


async def _stop_on(stop: anyio.Event, run: _Run) -> None:
    await stop.wait()
    run.stopped = True
    run.sandbox.kill()


def _ending(run: _Run, code: int) -> Ending:
    if run.stopped:
        return Ending.STOPPED
    if run.sandbox.oom_kills() > 0:
        return Ending.OOM
    if run.timed_out:
        return Ending.TIMEOUT
    if run.overflowed:
        return Ending.OUTPUT_LIMIT
    if run.signal_number == signal.SIGSYS:  # the wait status: not an exit(159)
        return Ending.SECCOMP
    return Ending.EXITED
