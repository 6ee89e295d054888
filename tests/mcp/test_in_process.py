"""The MCP server in-process: the official SDK's Client against baponi_mcp's server, over
the real core (SQLite, bubblewrap sandboxes, local storage) opened in this process.

Both protocol eras the SDK speaks are exercised where the transport matters (progress,
cancellation): "auto" (2026-07-28, per-request) and "legacy" (initialize handshake).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest
from baponi._base import result_to_llm_text
from baponi.types import SandboxResult as SdkResult
from mcp import Client, MCPError
from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent

from baponi_core._app import Core
from baponi_core._config import Settings
from baponi_core._errors import ValidationError
from baponi_core._models import ExecuteRequest, SandboxResult, parse
from baponi_core._records import Principal
from baponi_http import create_files_app, serving
from baponi_mcp import LocalAccess, build_server
from baponi_mcp._content import image_type, result_text
from baponi_mcp._errors import CODES
from tests.harness import (
    marker_processes,
    shared_runtimes,
    sleep_marker,
    tagged_execution,
    text_of,
    unique,
    wait_until_async,
)

pytestmark = pytest.mark.anyio

MODES = ["auto", "legacy"]
CANCELLED = "Cancelled by user"


@pytest.fixture(scope="module")
async def core(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Core]:
    home = tmp_path_factory.mktemp("mcp-home")
    settings = Settings.at(home, shutdown_grace_s=0, runtimes_dir=shared_runtimes())
    async with Core(settings) as opened:
        yield opened


@pytest.fixture(scope="module")
async def principal(core: Core) -> Principal:
    return await core.admin.local_principal()


@pytest.fixture(scope="module")
async def files_url(core: Core) -> AsyncIterator[str]:
    """The signed-file routes on loopback, as ``baponi-mcp`` serves them."""
    async with serving(create_files_app(core), "127.0.0.1", 0) as url:
        yield url


@pytest.fixture(scope="module")
def local(core: Core, principal: Principal, files_url: str) -> MCPServer[Any]:
    return build_server(LocalAccess(core, principal, files_url))


def limited(core: Core, principal: Principal, **changes: Any) -> MCPServer[Any]:
    """A server whose caller has the plan limits ``changes`` (org or profile fields)."""
    org = dataclasses.replace(principal.org, **changes.pop("org", {}))
    profile = dataclasses.replace(principal.profile, **changes)
    caller = dataclasses.replace(principal, org=org, profile=profile)
    return build_server(LocalAccess(core, caller, "http://127.0.0.1:9"))  # no files here


async def call(server: MCPServer[Any], args: dict[str, Any], mode: str = "auto") -> CallToolResult:
    async with Client(server, mode=mode) as client:
        return await client.call_tool("sandbox_execute", args)


async def download(server: MCPServer[Any], **args: Any) -> CallToolResult:
    async with Client(server) as client:
        return await client.call_tool("files_download", args)


def trace_with_probe(core: Core, probe: str) -> str:
    """The trace id of the execution tagged with metadata ``probe`` (a cancelled call has
    no result to read it from)."""
    found = tagged_execution(core.settings.home, probe)
    assert found is not None
    return found[0]


def png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG, built by hand (no imaging library needed on either side)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- tools/list


async def test_tools_and_schemas(local: MCPServer[Any]) -> None:
    async with Client(local) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"sandbox_execute", "files_download"}

    execute = tools["sandbox_execute"]
    props = execute.input_schema["properties"]
    assert set(props) == {
        "code",
        "language",
        "thread_id",
        "timeout",
        "metadata",
        "env_vars",
        "sub_paths",
    }
    assert execute.input_schema["required"] == ["code"]
    assert all(len(prop.get("description", "")) > 20 for prop in props.values())
    assert props["language"]["enum"] == ["bash", "node", "python"]
    assert props["language"]["default"] == "python"
    assert (props["timeout"]["minimum"], props["timeout"]["maximum"]) == (1, 3600)
    assert execute.description and "thread_id" in execute.description
    assert execute.output_schema is not None
    assert set(execute.output_schema["properties"]) == set(SandboxResult.model_fields)
    assert execute.annotations is not None and execute.annotations.read_only_hint is False

    files = tools["files_download"]
    props = files.input_schema["properties"]
    assert set(props) == {"source", "id", "path"}
    assert sorted(files.input_schema["required"]) == ["id", "path"]
    assert props["source"]["enum"] == ["thread", "volume"]
    assert props["source"]["default"] == "thread"
    assert all(len(prop.get("description", "")) > 20 for prop in props.values())
    assert files.output_schema is not None
    assert {"url", "expires_at", "content_included"} <= set(files.output_schema["properties"])
    assert files.annotations is not None and files.annotations.read_only_hint is True


# --------------------------------------------------------------------------- sandbox_execute


@pytest.mark.parametrize("mode", MODES)
async def test_execute_answers_sdk_text_and_result(
    local: MCPServer[Any], core: Core, principal: Principal, mode: str
) -> None:
    code = "import sys\nprint('out')\nsys.stderr.write('err\\n')"
    result = await call(local, {"code": code, "metadata": {"via": "mcp"}}, mode)
    assert result.is_error is False
    assert result.structured_content is not None
    structured = SdkResult.model_validate(result.structured_content)
    assert (structured.stdout, structured.stderr, structured.exit_code) == ("out\n", "err\n", 0)
    assert structured.success is True and structured.error is None
    assert text_of(result) == result_to_llm_text(structured) == "out\n\n\n[stderr]\nerr\n"
    record = await core.executions.get(principal, result.structured_content["trace_id"])
    assert (record.status, record.delivery_mode, record.stdout) == ("success", "inline", "out\n")


async def test_languages_and_threads(local: MCPServer[Any]) -> None:
    thread = unique("lang")
    wrote = await call(
        local, {"code": "echo kept > note.txt", "language": "bash", "thread_id": thread}
    )
    assert wrote.is_error is False, text_of(wrote)
    read = await call(
        local,
        {
            "code": "process.stdout.write(require('fs').readFileSync('note.txt', 'utf8'))",
            "language": "node",
            "thread_id": thread,
        },
    )
    assert text_of(read) == "kept\n"
    other = await call(local, {"code": "import os; print(os.path.exists('note.txt'))"})
    assert text_of(other) == "False\n"  # no thread_id: a clean sandbox


async def test_failing_code_is_an_error_result(local: MCPServer[Any]) -> None:
    result = await call(local, {"code": "print('partial')\nraise SystemExit(3)"})
    assert result.is_error is True
    assert text_of(result) == "partial\n\n\n[exit code: 3]"
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == 3
    assert result.structured_content["success"] is False


@pytest.mark.slow
async def test_timeout_is_an_error_result(local: MCPServer[Any]) -> None:
    result = await call(local, {"code": "import time; time.sleep(30)", "timeout": 1})
    assert result.is_error is True
    assert result.structured_content is not None
    assert result.structured_content["error"] == "timeout"
    assert text_of(result).endswith("[error]\ntimeout")


async def test_env_vars_reach_the_program(local: MCPServer[Any]) -> None:
    result = await call(
        local, {"code": "import os; print(os.environ['GREETING'])", "env_vars": {"GREETING": "hi"}}
    )
    assert text_of(result) == "hi\n"


BAD_BODIES = [
    {"code": ""},
    {"code": "print(1)", "language": "ruby"},
    {"code": "print(1)", "thread_id": "no spaces"},
    {"code": "print(1)", "timeout": 0},
    {"code": "print(1)", "timeout": 3601},
    {"code": "print(1)", "env_vars": {"PATH": "/tmp"}},
    {"code": "print(1)", "env_vars": {"lower": "x"}},
    {"code": "print(1)", "metadata": {f"k{i}": "v" for i in range(11)}},
    {"code": "print(1)", "sub_paths": ["/etc/passwd"]},
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=lambda b: ",".join(b)[:40])
async def test_validation_is_rests_as_an_error_result(
    local: MCPServer[Any], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as rest:
        parse(ExecuteRequest, body)  # what POST /v1/sandbox/execute would answer
    result = await call(local, body)
    assert result.is_error is True
    assert rest.value.message in text_of(result)
    assert result.structured_content is None


async def test_wrong_argument_type_is_an_error_result(local: MCPServer[Any]) -> None:
    result = await call(local, {"code": "print(1)", "timeout": "soon"})
    assert result.is_error is True
    assert "timeout" in text_of(result)
    missing = await call(local, {"language": "python"})
    assert missing.is_error is True and "code" in text_of(missing)


@pytest.mark.parametrize(
    "result",
    [
        SandboxResult(
            success=True, stdout="hi\n", stderr="", exit_code=0, error=None, trace_id="t"
        ),
        SandboxResult(success=True, stdout="", stderr="", exit_code=0, error=None, trace_id="t"),
        SandboxResult(success=False, stdout="a", stderr="b", exit_code=1, error=None, trace_id="t"),
        SandboxResult(
            success=False, stdout="", stderr="", exit_code=137, error="timeout", trace_id="t"
        ),
        SandboxResult(
            success=True, stdout="", stderr="warn", exit_code=0, error=None, trace_id="t"
        ),
        SandboxResult(success=False, stdout="", stderr="", exit_code=-1, error="x", trace_id="t"),
    ],
)
def test_result_text_is_the_sdks(result: SandboxResult) -> None:
    assert result_text(result) == result_to_llm_text(SdkResult.model_validate(result.model_dump()))


# --------------------------------------------------------------------------- progress


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
async def test_output_arrives_as_progress_before_the_end(local: MCPServer[Any], mode: str) -> None:
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second', flush=True)"
    seen: list[tuple[float, float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), progress, total, message))

    async with Client(local, mode=mode) as client:
        result = await client.call_tool(
            "sandbox_execute", {"code": code}, progress_callback=on_progress
        )
    returned = time.monotonic()
    assert text_of(result) == "first\nsecond\n"
    messages = [message for *_, message in seen]
    assert str(messages[0]).startswith("first")
    assert "".join(map(str, messages)) == "first\nsecond\n"
    assert [progress for _, progress, _, _ in seen] == list(range(1, len(seen) + 1))
    assert all(total is None for _, _, total, _ in seen)
    assert returned - seen[0][0] > 1.0, "the first line came only with the result"


async def test_no_progress_callback_still_answers(local: MCPServer[Any]) -> None:
    result = await call(local, {"code": "print('quiet', flush=True)"})
    assert text_of(result) == "quiet\n"


# --------------------------------------------------------------------------- cancellation


def spawner(marker: str) -> str:
    """Bash starting sleepers and a forking python that carry ``marker``, then 'ready'."""
    forker = f"import os, time; os.fork(); time.sleep({marker})"
    return f'sleep {marker} & python3 -c "{forker}" & echo ready; wait'


@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_the_call_kills_the_sandbox(
    local: MCPServer[Any], core: Core, principal: Principal, mode: str
) -> None:
    marker = sleep_marker(1234)
    probe = unique("cancel")
    started = anyio.Event()

    def all_started() -> bool:
        programs = [cmd.split(b"\0")[0] for cmd in marker_processes(marker)]
        return programs.count(b"sleep") == 1 and programs.count(b"python3") == 2

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message == "ready\n":
            started.set()

    args = {"code": spawner(marker), "language": "bash", "metadata": {"probe": probe}}
    async with Client(local, mode=mode) as client:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tasks:

                async def cancel_when_running() -> None:
                    await started.wait()
                    assert await wait_until_async(all_started, within=10)
                    scope.cancel()

                tasks.start_soon(cancel_when_running)
                await client.call_tool("sandbox_execute", args, progress_callback=on_progress)
        assert scope.cancelled_caught
        cancelled_at = time.monotonic()
        assert await wait_until_async(lambda: not marker_processes(marker), within=5)
        assert time.monotonic() - cancelled_at < 1.0, "sandboxed processes outlived the cancel"

    trace_id = trace_with_probe(core, probe)

    with anyio.fail_after(5):  # the cancel is recorded once the sandbox is gone
        record = await core.executions.get(principal, trace_id)
        while record.status == "running":
            await anyio.sleep(0.05)
            record = await core.executions.get(principal, trace_id)
    assert (record.status, record.error, record.exit_code) == ("cancelled", CANCELLED, 137)


# --------------------------------------------------------------------------- refusals


async def test_busy_thread_is_an_error_result(local: MCPServer[Any]) -> None:
    thread = unique("busy")
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with Client(local) as client, anyio.create_task_group() as tasks:

        async def hold() -> None:
            with anyio.move_on_after(30):
                await client.call_tool(
                    "sandbox_execute",
                    {
                        "code": "import time; print('in', flush=True); time.sleep(30)",
                        "thread_id": thread,
                    },
                    progress_callback=on_progress,
                )

        tasks.start_soon(hold)
        await started.wait()
        second = await client.call_tool(
            "sandbox_execute", {"code": "print(1)", "thread_id": thread}
        )
        tasks.cancel_scope.cancel()
    assert second.is_error is True
    assert f"thread {thread} is busy" in text_of(second)


async def test_plan_timeout_is_a_protocol_error(core: Core, principal: Principal) -> None:
    server = limited(core, principal, max_timeout=5)
    async with Client(server) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("sandbox_execute", {"code": "print(1)", "timeout": 10})
    assert refused.value.error.code == CODES["rate_limited"]
    assert refused.value.error.message == "timeout 10s exceeds the plan limit of 5s"
    assert refused.value.error.data == {"error": "rate_limited", "retry_after": 1}
    assert text_of(await call(server, {"code": "print(2)", "timeout": 5})) == "2\n"


async def test_concurrency_limit_is_a_protocol_error(core: Core, principal: Principal) -> None:
    server = limited(core, principal, org={"max_concurrency": 1})
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with Client(server) as client, anyio.create_task_group() as tasks:

        async def hold() -> None:
            with anyio.move_on_after(30):
                await client.call_tool(
                    "sandbox_execute",
                    {"code": "import time; print('in', flush=True); time.sleep(30)"},
                    progress_callback=on_progress,
                )

        tasks.start_soon(hold)
        await started.wait()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("sandbox_execute", {"code": "print(1)"})
        tasks.cancel_scope.cancel()
    assert refused.value.error.message == "concurrent execution limit reached (1/1)"


# --------------------------------------------------------------------------- files_download


@pytest.fixture(scope="module")
async def files_thread(local: MCPServer[Any]) -> str:
    """A thread holding a text file, a PNG, a small binary and a file just over 1 MiB."""
    thread = unique("files")
    image = base64.b64encode(png()).decode()
    code = (
        "import base64, os\n"
        "open('notes.txt', 'w').write('line 1\\nline 2 \\u00e9\\n')\n"
        f"open('plot.png', 'wb').write(base64.b64decode('{image}'))\n"
        "open('blob.bin', 'wb').write(bytes(range(256)))\n"
        "open('big.txt', 'w').write('x' * (1024 * 1024 + 1))\n"
        "open('empty.txt', 'w').close()\n"
        "os.makedirs('out', exist_ok=True)\n"
        "open('out/report.csv', 'w').write('a,b\\n1,2\\n')\n"
    )
    result = await call(local, {"code": code, "thread_id": thread})
    assert result.is_error is False, text_of(result)
    return thread


def assert_signed(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error is False, text_of(result)
    data = result.structured_content
    assert data is not None
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1/files/signed/[\w.-]+", data["url"])
    expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 800 < left <= 900  # 15 minutes
    summary = text_of(result)
    assert data["url"] in summary and data["expires_at"] in summary
    assert "works on this machine while the Baponi MCP server runs" in summary
    return data


async def fetch(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(url)
    assert answer.status_code == 200, answer.text
    return answer.content


async def test_download_text_file(local: MCPServer[Any], files_thread: str) -> None:
    result = await download(local, id=files_thread, path="notes.txt")
    data = assert_signed(result)
    assert (data["size"], data["mime_type"], data["content_included"]) == (
        len("line 1\nline 2 é\n".encode()),
        "text/plain",
        True,
    )
    assert len(result.content) == 2
    assert isinstance(result.content[1], TextContent)
    assert result.content[1].text == "line 1\nline 2 é\n"
    assert await fetch(data["url"]) == "line 1\nline 2 é\n".encode()
    nested = await download(local, id=files_thread, path="out/report.csv", source="thread")
    assert isinstance(nested.content[1], TextContent) and nested.content[1].text == "a,b\n1,2\n"


async def test_download_image_comes_as_an_image_block(
    local: MCPServer[Any], files_thread: str
) -> None:
    result = await download(local, id=files_thread, path="plot.png")
    data = assert_signed(result)
    assert (data["mime_type"], data["content_included"], data["size"]) == (
        "image/png",
        True,
        len(png()),
    )
    image = result.content[1]
    assert isinstance(image, ImageContent)
    assert image.mime_type == "image/png"
    assert base64.b64decode(image.data) == png()


@pytest.mark.parametrize(
    ("path", "size", "content"),
    [
        ("blob.bin", 256, bytes(range(256))),
        ("big.txt", None, b"x" * (1024 * 1024 + 1)),
        ("empty.txt", 0, b""),
    ],
)
async def test_download_without_inline_content(
    local: MCPServer[Any], files_thread: str, path: str, size: int | None, content: bytes
) -> None:
    result = await download(local, id=files_thread, path=path)
    data = assert_signed(result)
    assert (data["size"], data["content_included"]) == (size, False)
    assert len(result.content) == 1  # the URL only
    assert await fetch(data["url"]) == content  # answered by the loopback file server


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": "missing.txt"}, "not found"),
        ({"path": "../etc/passwd"}, "path must not contain '..' segments"),
        ({"path": "out"}, "path is a directory, not a file"),
        ({"path": "notes.txt", "source": "bucket"}, "source must be 'thread' or 'volume'"),
    ],
)
async def test_download_mistakes_are_error_results(
    local: MCPServer[Any], files_thread: str, args: dict[str, str], message: str
) -> None:
    result = await download(local, id=files_thread, **args)
    assert result.is_error is True
    assert message in text_of(result)


async def test_download_from_unknown_thread_is_an_error_result(local: MCPServer[Any]) -> None:
    result = await download(local, id=unique("nothing"), path="a.txt")
    assert result.is_error is True
    assert "not found" in text_of(result)


@pytest.mark.parametrize(
    ("head", "mime_type"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"%PDF-1.7", None),
    ],
)
def test_image_types_by_signature(head: bytes, mime_type: str | None) -> None:
    assert image_type(head) == mime_type


async def test_the_file_server_closes_stalled_connections(core: Core) -> None:
    """``baponi-mcp``'s loopback file server drops a client that stops mid-request, as
    ``baponi serve`` does (``BoundedHttpTools``)."""
    async with serving(create_files_app(core), "127.0.0.1", 0, idle_timeout=1) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(b"PUT /v1/files/signed/x HTTP/1.1\r\nHost: x\r\n")  # no end
            started = anyio.current_time()
            with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
                await stream.receive()  # nothing is answered: the server just closes
            assert anyio.current_time() - started > 0.5
