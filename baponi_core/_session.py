"""In-process callers: a :class:`Session` runs code and reaches files as one organisation
and profile, with no API key; an :class:`Execution` is one run it started.

Thin over the services the REST API calls: the same validation (``ExecuteRequest``,
``FileRequest``, with the SDK's messages), admission (plan timeout, the organisation's
concurrency, the thread claim, open streams) and isolation (only the organisation's
threads, executions and volumes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

from baponi_core._app import Core
from baponi_core._errors import ValidationError
from baponi_core._events import Event
from baponi_core._models import (
    ExecuteRequest,
    ExecutionView,
    FileEntry,
    FileRequest,
    SandboxResult,
    parse,
)
from baponi_core._records import DeliveryMode, Principal
from baponi_core._services.executions import Submission

if TYPE_CHECKING:
    from baponi_core._embedded import Embedded

Source = Literal["thread", "volume"]
READ_MAX_BYTES = 64 << 20  # what read_file holds in memory unless told otherwise
WRITE_CHUNK_BYTES = 1 << 20


class RunOptions(TypedDict, total=False):
    """What an execution may ask for besides its code, as ``POST /v1/sandbox/execute``."""

    language: str  # "python" (default), "bash" or "node"
    thread_id: str  # keeps /home/baponi between executions
    timeout: int  # seconds, at most the profile's max_timeout
    env_vars: Mapping[str, str]
    metadata: Mapping[str, str]
    sub_paths: Sequence[str]  # narrows what of the volumes is mounted


class Execution:
    """One execution a session started; it runs to its end whatever its holder does,
    until it is cancelled or the core closes."""

    def __init__(self, submission: Submission, session: Session) -> None:
        self._submission = submission
        self._session = session

    @property
    def trace_id(self) -> str:
        return self._submission.trace_id

    @property
    def finished(self) -> bool:
        """Whether it has ended and its record is final."""
        return self._submission.finished

    def events(self, after_seq: int = 0) -> AsyncIterator[Event]:
        """Its typed events after ``after_seq``, live, up to and with the result event."""
        return self._submission.events(after_seq)

    async def wait(self) -> None:
        """Until it has ended and its record is final."""
        await self._submission.settled()

    async def result(self) -> SandboxResult:
        """Its result, once it has ended; a sandbox that could not be set up raises
        :class:`~baponi_core.Unavailable` (the REST API's 503)."""
        return await self._submission.result()

    async def cancel(self) -> None:
        """Kill its sandbox; :class:`~baponi_core.Conflict` if it has already ended."""
        await self._session.cancel(self.trace_id)

    async def view(self) -> ExecutionView:
        """Its record, as ``GET /v1/executions/{trace_id}`` shows it."""
        return await self._session.get(self.trace_id)


class Session:
    """Calls as organisation ``org`` with its profile ``profile`` and ``volumes`` (slugs;
    None: all of the organisation's), read from the store at each call, as a key's are.
    Made by :meth:`baponi_core.Embedded.session`."""

    def __init__(
        self, embedded: Embedded, org: str, profile: str, volumes: Sequence[str] | None
    ) -> None:
        self.embedded = embedded
        self.org = org
        self.profile = profile
        self.volumes = None if volumes is None else tuple(volumes)

    def _core(self) -> Core:
        return self.embedded._open_core()

    async def _principal(self) -> Principal:
        """Who the calls run as, now."""
        return await self._core().admin.principal(self.org, self.profile, self.volumes)

    async def execute(self, code: str, **options: Unpack[RunOptions]) -> SandboxResult:
        """Run ``code`` and wait for its result (the REST API's inline mode)."""
        submission = await self._submit(code, options, None, DeliveryMode.INLINE)
        return await submission.result()

    def stream(
        self, code: str, **options: Unpack[RunOptions]
    ) -> AbstractAsyncContextManager[Execution]:
        """Run ``code``; the block follows its events (``execution.events()``), counted as
        an open stream of the organisation until it ends (the streaming mode). Leaving
        the block does not stop the execution."""
        return self._streamed(code, options)

    async def submit(
        self, code: str, *, webhook_url: str | None = None, **options: Unpack[RunOptions]
    ) -> Execution:
        """Start ``code`` and return at once (the asynchronous mode): wait on the handle,
        or let ``webhook_url`` (HTTPS) have the signed result."""
        submission = await self._submit(code, options, webhook_url, DeliveryMode.WEBHOOK)
        return Execution(submission, self)

    async def get(self, trace_id: str) -> ExecutionView:
        """An execution of the organisation's, by trace id."""
        return await self._core().executions.get(await self._principal(), trace_id)

    async def cancel(self, trace_id: str) -> None:
        """Kill a running execution of the organisation's sandbox."""
        await self._core().executions.cancel(await self._principal(), trace_id)

    async def list_files(
        self, id: str, path: str = "", *, source: Source = "thread"
    ) -> list[FileEntry]:
        """What is under ``path`` of thread ``id`` (or of volume ``id``)."""
        request = _file_request(source, id, path)
        return await self._core().files.list_files(await self._principal(), request)

    async def read_file(
        self, id: str, path: str, *, source: Source = "thread", max_bytes: int = READ_MAX_BYTES
    ) -> bytes:
        """The whole of a file of thread ``id`` (or of volume ``id``), of at most
        ``max_bytes``; a larger one is refused."""
        request = _file_request(source, id, path)
        data = await self._core().files.read(await self._principal(), request, max_bytes)
        if data is None:
            raise ValidationError(f"{path} is larger than max_bytes ({max_bytes})")
        return data

    async def write_file(
        self, id: str, path: str, data: bytes, *, source: Source = "thread"
    ) -> None:
        """Store ``data`` at ``path`` of thread ``id`` (made if new) or of volume ``id``,
        under the same quota and read-only checks as an upload."""
        request = _file_request(source, id, path, content_length=len(data))
        await self._core().files.write(await self._principal(), request, _chunks(data))

    async def delete_file(self, id: str, path: str, *, source: Source = "thread") -> None:
        """Delete a file, or a directory and all it holds."""
        request = _file_request(source, id, path)
        await self._core().files.delete(await self._principal(), request)

    async def _submit(
        self,
        code: str,
        options: RunOptions,
        webhook_url: str | None,
        mode: DeliveryMode,
    ) -> Submission:
        body: dict[str, Any] = {"code": code, **options}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        for name in ("env_vars", "metadata"):
            if name in body:
                body[name] = dict(body[name])
        if "sub_paths" in body:
            body["sub_paths"] = list(body["sub_paths"])
        request = parse(ExecuteRequest, body)
        return await self._core().executions.submit(await self._principal(), request, mode)

    @asynccontextmanager
    async def _streamed(self, code: str, options: RunOptions) -> AsyncIterator[Execution]:
        submission = await self._submit(code, options, None, DeliveryMode.STREAMING)
        try:
            yield Execution(submission, self)
        finally:
            submission.close()


def _file_request(source: Source, id: str, path: str, **more: Any) -> FileRequest:
    return parse(FileRequest, {"source": source, "id": id, "path": path, **more})


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), WRITE_CHUNK_BYTES):
        yield data[start : start + WRITE_CHUNK_BYTES]


async def principal_of(session: Session) -> Principal:
    """Who ``session`` calls as, now: for this project's adapters (``baponi_mcp``) only;
    not part of the public API."""
    return await session._principal()
