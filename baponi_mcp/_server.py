"""The MCP server: the tools ``sandbox_execute`` and ``files_download``, defined once.

Both transports serve this definition; they differ only in their :class:`Access`, which
says who is calling and where signed URLs point: the trusted local user on stdio
(:class:`LocalAccess`), the owner of the Bearer key over HTTP (``baponi_mcp._http``).
The tools call the same core services as the REST adapter, with the same validation.

No ``from __future__ import annotations`` here: the SDK reads the tools' annotations at
run time to build their schemas.
"""

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Protocol

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ContentBlock, TextContent, ToolAnnotations

from baponi_core import _limits as limits
from baponi_core._app import Core
from baponi_core._errors import Conflict
from baponi_core._events import OutputEvent
from baponi_core._models import ExecuteRequest, FileRequest, SandboxResult, parse
from baponi_core._records import Principal
from baponi_core._services.executions import Submission
from baponi_mcp._content import INLINE_MAX_BYTES, file_blocks, result_text
from baponi_mcp._errors import translated
from baponi_mcp._schema import (
    DOWNLOAD_DESCRIPTION,
    EXECUTE_DESCRIPTION,
    INSTRUCTIONS,
    Code,
    EnvVars,
    ExecutionResult,
    FileDownload,
    FilePath,
    Language,
    Metadata,
    Source,
    StorageId,
    SubPaths,
    ThreadId,
    Timeout,
)

log = logging.getLogger(__name__)

UNSERVED_METHODS = ("prompts/", "resources/")  # the server defines no prompts or resources
STOP_WAIT_S = 15.0  # a cancelled sandbox is killed at once; this only bounds the wait


@dataclass(frozen=True)
class Caller:
    """Who is calling, and with what."""

    core: Core
    principal: Principal
    base_url: str  # where the signed file URLs handed out point
    url_note: str = ""  # said next to a URL of base_url, e.g. which server answers it


class Access(Protocol):
    """How a transport tells the tools who is calling."""

    async def caller(self, ctx: Context[Any, Any]) -> Caller: ...


class LocalAccess:
    """The user on this machine (stdio, and in-process clients): one trusted principal.

    Signed URLs for local storage point at ``public_url``, else at ``files_url``: the
    signed-file routes that ``baponi-mcp`` serves on loopback while it runs."""

    def __init__(self, core: Core, principal: Principal, files_url: str) -> None:
        note = "The URL works on this machine while the Baponi MCP server runs."
        self._caller = Caller(core, principal, core.settings.base_url(files_url), note)

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        return self._caller


def build_server(access: Access) -> MCPServer[Any]:
    """The MCP server for callers resolved by ``access``."""
    server: MCPServer[Any] = MCPServer(
        "baponi",
        version=_version(),
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        subscriptions=False,  # nothing ever changes: no listChanged to promise
    )
    _serve_tools_only(server)
    register_tools(server, access)
    return server


def register_tools(server: MCPServer[Any], access: Access) -> None:
    """Add ``sandbox_execute`` and ``files_download`` to ``server``, for callers resolved by
    ``access``."""

    @server.tool(
        title="Run code in a sandbox",
        description=EXECUTE_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, open_world_hint=False
        ),
    )
    async def sandbox_execute(
        ctx: Context[Any, Any],
        code: Code,
        language: Language = "python",
        thread_id: ThreadId = None,
        timeout: Timeout = limits.DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the sandbox's, by contract)
        metadata: Metadata = None,
        env_vars: EnvVars = None,
        sub_paths: SubPaths = None,
    ) -> Annotated[CallToolResult, ExecutionResult]:
        caller = await access.caller(ctx)
        body = {
            "code": code,
            "language": language,
            "thread_id": thread_id,
            "timeout": timeout,
            "metadata": metadata,
            "env_vars": env_vars,
            "sub_paths": sub_paths,
        }
        with translated():
            request = parse(ExecuteRequest, {k: v for k, v in body.items() if v is not None})
            submission = await caller.core.executions.submit(caller.principal, request)
        result = await _follow(submission, ctx, caller)
        return CallToolResult(
            content=[TextContent(type="text", text=result_text(result))],
            structured_content=result.model_dump(),
            is_error=not result.success,
        )

    @server.tool(
        title="Download a file from a thread or volume",
        description=DOWNLOAD_DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def files_download(
        ctx: Context[Any, Any], id: StorageId, path: FilePath, source: Source = "thread"
    ) -> Annotated[CallToolResult, FileDownload]:
        caller = await access.caller(ctx)
        with translated():
            request = parse(FileRequest, {"source": source, "id": id, "path": path})
            data = await caller.core.files.read(caller.principal, request, INLINE_MAX_BYTES)
            signed = await caller.core.files.download_url(
                caller.principal, request, caller.base_url
            )
        mime_type, description, blocks = file_blocks(data)
        size = "" if data is None else f"{len(data)} bytes, "
        summary = (
            f"{source} {id}, {path}: {size}{description}.\n"
            f"Download URL (GET, expires {signed.expires_at}): {signed.url}"
        )
        if caller.url_note and signed.url.startswith(caller.base_url):
            summary += f"\n{caller.url_note}"
        download = FileDownload(
            url=signed.url,
            expires_at=signed.expires_at,
            size=None if data is None else len(data),
            mime_type=mime_type,
            content_included=bool(blocks),
        )
        content: list[ContentBlock] = [TextContent(type="text", text=summary), *blocks]
        return CallToolResult(content=content, structured_content=download.model_dump())


def _serve_tools_only(server: MCPServer[Any]) -> None:
    """Unregister the prompts and resources methods the SDK's MCPServer registers whatever
    the server defines: capabilities are derived from the registered methods, so they
    would be advertised (and answered, an unknown prompt with error code 0) with none to
    serve. Unregistered, they are the spec's -32601 and not advertised. The SDK has no
    public way to unregister; tests/mcp/test_capabilities.py pins the outcome."""
    handlers = server._lowlevel_server._request_handlers
    for method in [m for m in handlers if m.startswith(UNSERVED_METHODS)]:
        del handlers[method]


async def _follow(submission: Submission, ctx: Context[Any, Any], caller: Caller) -> SandboxResult:
    """Wait for the end of ``submission``, sending its output as progress meanwhile. If the
    call is cancelled (the client cancelled it, or went away), the sandbox is killed."""
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_progress, submission, ctx)
            await submission.settled()  # the progress task ends with the events, just before
    finally:
        if not submission.finished:
            with anyio.CancelScope(shield=True):
                await _stop(submission, caller)
    with translated():
        return await submission.result()


async def _progress(submission: Submission, ctx: Context[Any, Any]) -> None:
    """Each output chunk as a progress notification (a no-op unless the client asked for
    progress). Best effort: a client that cannot take them still gets the result."""
    sent = 0
    try:
        async for event in submission.events():
            if isinstance(event, OutputEvent):
                sent += 1
                await ctx.report_progress(sent, None, event.data)
    except Exception:
        log.debug("progress of %s no longer sent", submission.trace_id, exc_info=True)


async def _stop(submission: Submission, caller: Caller) -> None:
    try:
        await caller.core.executions.cancel(caller.principal, submission.trace_id)
    except Conflict:  # it ended meanwhile
        return
    with anyio.move_on_after(STOP_WAIT_S):
        await submission.settled()


def _version() -> str:
    try:
        return version("baponi-selfhosted")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "0"
