"""One execution while it is live: its state inside the service (:class:`Run`), and what
the caller that submitted it holds (:class:`Submission`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum

import anyio

from baponi_core._errors import BaponiError
from baponi_core._events import Event
from baponi_core._models import ExecuteRequest, SandboxResult
from baponi_core._records import DeliveryMode, Execution, Profile, Volume
from baponi_core._sandbox.image import Runtime
from baponi_core._services.journal import Journal
from baponi_core._services.streams import Counted


class StopReason(Enum):
    """Why a running execution was told to stop."""

    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    QUOTA = "quota"  # its thread home outgrew the quota


@dataclass
class Run:
    """An execution in progress."""

    record: Execution
    request: ExecuteRequest
    profile: Profile
    runtime: Runtime  # the generation it runs on, chosen at admission
    volumes: tuple[Volume, ...]  # mounted at /data/<slug>
    held: contextlib.ExitStack  # its concurrency slot and thread claim
    journal: Journal
    stop: anyio.Event = field(default_factory=anyio.Event)
    stop_reason: StopReason = StopReason.CANCEL
    done: anyio.Event = field(default_factory=anyio.Event)
    # Set with done, or before it once an inline run's answer is final (answer_early).
    answerable: anyio.Event = field(default_factory=anyio.Event)
    result: SandboxResult | None = None
    failure: BaponiError | None = None  # a platform fault an inline caller should see
    persisted: int = 0  # journal events already in the store
    # The record is inserted while the run starts: writes to it wait for this, and none
    # is made if the insert failed (the submission was refused).
    inserted: anyio.Event = field(default_factory=anyio.Event)
    insert_failed: bool = False
    stored_end: bool = False  # the completed record is in the store

    @property
    def trace_id(self) -> str:
        return self.record.trace_id

    async def recorded(self) -> bool:
        """Wait until the record is in the store; False if it never will be."""
        await self.inserted.wait()
        return not self.insert_failed

    @property
    def kept(self) -> bool:
        """Whether its events are stored for reconnects (streaming and webhook delivery)."""
        return self.record.delivery_mode is not DeliveryMode.INLINE

    def answer_early(self) -> None:
        """Its program has ended, its sandbox is killed and its end is stored, and it holds
        no thread: the inline caller may have the result while the kernel is still
        tearing the sandbox down, and its organisation's concurrency slot is free again."""
        self.held.close()
        self.answerable.set()

    def request_stop(self, reason: StopReason) -> None:
        """Kill its sandbox (or keep it from starting); the first reason given counts."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()


class Submission:
    """An admitted execution, as its submitter sees it: its id, its events while it runs,
    its result. Whatever the submitter does, the execution runs to its end."""

    def __init__(self, run: Run, stream: contextlib.ExitStack | None = None) -> None:
        self._run = run
        self._stream = stream or contextlib.ExitStack()  # an open stream counted, if streaming

    @property
    def trace_id(self) -> str:
        return self._run.trace_id

    @property
    def finished(self) -> bool:
        """Whether it has ended and its record is final."""
        return self._run.done.is_set()

    async def settled(self) -> None:
        """Wait until it has ended and its record is final."""
        await self._run.done.wait()

    async def result(self) -> SandboxResult:
        """Wait for the end (for an inline run without a thread, until its program has
        ended and its end is stored: its sandbox may still be going); a platform fault is
        raised rather than returned."""
        await self._run.answerable.wait()
        if self._run.failure is not None:
            raise self._run.failure
        assert self._run.result is not None
        return self._run.result

    def events(self, after_seq: int = 0) -> AsyncIterator[Event]:
        """Its events with ``seq > after_seq``, live, up to and with the result event; a
        streaming submission's stream is counted as open until they are read to the end
        or dropped."""
        return Counted(self._stream, self._run.journal.follow(after_seq))

    def lines(self, after_seq: int = 0) -> AsyncIterator[str]:
        """:meth:`events` as NDJSON (lines in pieces), counted as open the same way."""
        return Counted(self._stream, self._run.journal.lines(after_seq))

    def close(self) -> None:
        """Stop counting a streaming submission's stream as open, read or not."""
        self._stream.close()
