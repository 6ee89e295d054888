"""``baponi-mcp`` over stdio, spawned as a real process: by the official MCP SDK's client in
both protocol eras it speaks, and by hand to prove stdout carries nothing but JSON-RPC."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import TextContent

from baponi_mcp._errors import CODES
from tests.emulators import Emulator
from tests.harness import (
    BAPONI_MCP,
    free_port,
    marker_processes,
    sleep_marker,
    text_of,
    unique,
    wait_until,
    wait_until_async,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # a baponi-mcp process for every test

PROTOCOLS = {"auto": "2026-07-28", "legacy": "2025-11-25"}


def runtimes() -> dict[str, str]:
    """The session's runtimes directory (conftest), which a stdio server's environment
    lacks: the MCP SDK passes on only a few variables."""
    return {"BAPONI_RUNTIMES": os.environ["BAPONI_RUNTIMES"]}


def params(home: Path | None, *args: str, **env: str) -> StdioServerParameters:
    """``baponi-mcp`` with ``home`` (or none, to use ~/.baponi) and a HOME of its own."""
    where = ["--home", str(home)] if home is not None else []
    environ = {"HOME": str(env.pop("HOME", home)), "PATH": os.environ["PATH"], **runtimes(), **env}
    return StdioServerParameters(command=BAPONI_MCP, args=[*where, *args], env=environ)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_client_over_stdio(tmp_path: Path, mode: str) -> None:
    thread = unique("stdio")
    seen: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message)

    async with Client(params(tmp_path / "home"), mode=mode) as client:
        assert client.protocol_version == PROTOCOLS[mode]
        assert client.server_info is not None and client.server_info.name == "baponi"
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"sandbox_execute", "files_download"}

        code = (
            "import time\nprint('one', flush=True)\ntime.sleep(0.3)\n"
            "open('r.txt', 'w').write('saved')\nprint('two')"
        )
        result = await client.call_tool(
            "sandbox_execute", {"code": code, "thread_id": thread}, progress_callback=on_progress
        )
        assert result.is_error is False
        assert text_of(result) == "one\ntwo\n"
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "one\ntwo\n"
        assert str(seen[0]).startswith("one") and "".join(map(str, seen)) == "one\ntwo\n"

        failed = await client.call_tool("sandbox_execute", {"code": "exit 4", "language": "bash"})
        assert failed.is_error is True and text_of(failed) == "[exit code: 4]"

        file = await client.call_tool("files_download", {"id": thread, "path": "r.txt"})
        assert file.is_error is False
        assert file.structured_content is not None
        url = file.structured_content["url"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1/files/signed/[\w.-]+", url)
        block = file.content[1]
        assert isinstance(block, TextContent) and block.text == "saved"
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(url)).content == b"saved"
    assert (tmp_path / "home" / "baponi.db").is_file()


async def test_download_urls_are_served_by_baponi_mcp(tmp_path: Path) -> None:
    """With local storage no `baponi serve` can share the home, so `baponi-mcp` answers its
    own signed URLs, on loopback, and nothing else there."""
    port = free_port()
    thread = unique("big")
    code = "import os\nopen('big.bin', 'wb').write(os.urandom(2 * 1024 * 1024))"
    check = "import hashlib\nprint(hashlib.sha256(open('big.bin', 'rb').read()).hexdigest())"
    async with (
        Client(params(tmp_path, BAPONI_FILES_PORT=str(port))) as client,
        httpx.AsyncClient(timeout=30) as http,
    ):
        written = await client.call_tool("sandbox_execute", {"code": code, "thread_id": thread})
        assert written.is_error is False, text_of(written)
        file = await client.call_tool("files_download", {"id": thread, "path": "big.bin"})
        assert file.structured_content is not None
        url = file.structured_content["url"]
        assert url.startswith(f"http://127.0.0.1:{port}/v1/files/signed/")
        assert file.structured_content["content_included"] is False
        assert "while the Baponi MCP server runs" in text_of(file)

        got = await http.get(url)
        assert got.status_code == 200 and len(got.content) == 2 * 1024 * 1024
        digest = await client.call_tool("sandbox_execute", {"code": check, "thread_id": thread})
        assert text_of(digest) == hashlib.sha256(got.content).hexdigest() + "\n"

        forged = await http.get(url[:-2] + ("AA" if not url.endswith("AA") else "BB"))
        assert forged.status_code == 403
        assert forged.json() == {"error": "forbidden", "message": "signature does not match"}
        base = f"http://127.0.0.1:{port}"
        rest = await http.post(f"{base}/v1/sandbox/execute", json={"code": "print(1)"})
        assert rest.status_code == 404  # only the signed routes: no execution without a key
        assert rest.json() == {"error": "not_found", "message": "no such endpoint"}
        assert (await http.post(f"{base}/mcp", json={})).status_code == 404
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):  # gone with the MCP server
            await http.get(url)


async def test_cloud_storage_opens_no_file_port(tmp_path: Path, s3_emulator: Emulator) -> None:
    """With a cloud --storage the URLs are the provider's: nothing listens on the port."""
    port = free_port()
    storage = ["--storage", s3_emulator.fresh_url()]
    options = ["--storage-options", json.dumps(s3_emulator.options)]
    server = params(tmp_path, *storage, *options, "--files-port", str(port), **s3_emulator.env)
    code = "open('r.txt', 'w').write('in the bucket')"
    async with Client(server) as client, httpx.AsyncClient(timeout=10) as http:
        await client.call_tool("sandbox_execute", {"code": code, "thread_id": "cloud"})
        file = await client.call_tool("files_download", {"id": "cloud", "path": "r.txt"})
        assert file.structured_content is not None
        url = file.structured_content["url"]
        assert url.startswith(s3_emulator.endpoint)
        assert "while the Baponi MCP server runs" not in text_of(file)
        assert (await http.get(url)).content == b"in the bucket"
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_no_configuration_uses_home_dot_baponi(tmp_path: Path) -> None:
    async with Client(params(None, HOME=str(tmp_path))) as client:
        result = await client.call_tool("sandbox_execute", {"code": "echo hi", "language": "bash"})
    assert text_of(result) == "hi\n"
    assert (tmp_path / ".baponi" / "baponi.db").is_file()


@pytest.mark.parametrize(
    ("args", "env", "cap"),
    [(["--max-timeout", "5"], {}, 5), ([], {"BAPONI_MAX_TIMEOUT": "7"}, 7)],
    ids=["flag", "environment"],
)
async def test_profile_limits_from_flags_and_environment(
    tmp_path: Path, args: list[str], env: dict[str, str], cap: int
) -> None:
    async with Client(params(tmp_path, *args, **env)) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("sandbox_execute", {"code": "print(1)", "timeout": cap + 1})
        allowed = await client.call_tool("sandbox_execute", {"code": "print(1)", "timeout": cap})
    assert refused.value.error.code == CODES["rate_limited"]
    assert refused.value.error.message == f"timeout {cap + 1}s exceeds the plan limit of {cap}s"
    assert text_of(allowed) == "1\n"


def rpc(message_id: int | None, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if message_id is not None:
        message["id"] = message_id
    if params is not None:
        message["params"] = params
    return (json.dumps(message) + "\n").encode()


def test_stdout_carries_only_json_rpc(tmp_path: Path) -> None:
    """A chatty execution and debug logging: every stdout line is a JSON-RPC message, the
    logs are on stderr, and closing stdin ends the server."""
    process = subprocess.Popen(
        [BAPONI_MCP, "--home", str(tmp_path), "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"], **runtimes()},
    )
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }
    code = (
        "import sys\nopen('f.txt', 'w').write('file')\n"
        "print('to stdout')\nprint('to stderr', file=sys.stderr)"
    )
    arguments = {"code": code, "thread_id": "raw"}
    call = {"name": "sandbox_execute", "arguments": arguments, "_meta": {"progressToken": 7}}
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(rpc(1, "initialize", init))
    process.stdin.flush()
    first = json.loads(process.stdout.readline())
    assert first["id"] == 1 and first["result"]["serverInfo"]["name"] == "baponi"
    process.stdin.write(rpc(None, "notifications/initialized"))
    process.stdin.write(rpc(2, "tools/call", call))
    process.stdin.flush()
    messages = []
    while not messages or messages[-1].get("id") != 2:
        line = process.stdout.readline()
        assert line, "the server closed stdout before answering"
        messages.append(json.loads(line))
    # a download served by the process's file server logs nothing on stdout either
    fetch = {"name": "files_download", "arguments": {"id": "raw", "path": "f.txt"}}
    process.stdin.write(rpc(3, "tools/call", fetch))
    process.stdin.flush()
    download = json.loads(process.stdout.readline())
    assert download["id"] == 3
    assert httpx.get(download["result"]["structuredContent"]["url"], timeout=10).text == "file"
    started = time.monotonic()
    out, err = process.communicate(timeout=30)  # closes stdin
    assert process.returncode == 0
    assert time.monotonic() - started < 10
    assert out == b""
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert progress and all(p["progressToken"] == 7 for p in progress)
    assert "".join(p["message"] for p in progress) in {
        "to stdout\nto stderr\n",
        "to stderr\nto stdout\n",
    }
    result = messages[-1]["result"]
    assert result["structuredContent"]["stdout"] == "to stdout\n"
    assert result["content"][0]["text"] == "to stdout\n\n\n[stderr]\nto stderr\n"
    assert b"DEBUG" in err  # logs went to stderr


def test_bad_option_exits_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [BAPONI_MCP, "--home", str(tmp_path), "--memory", "1"],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"memory_mb must be between 32 and" in done.stderr


def sleeper(marker: str) -> dict[str, Any]:
    return {"code": f"echo ready; sleep {marker}", "language": "bash", "timeout": 60}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelled_call_kills_the_sandbox(tmp_path: Path, mode: str) -> None:
    marker = sleep_marker(2345)
    async with Client(params(tmp_path), mode=mode) as client:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tasks:

                async def cancel_when_running() -> None:
                    assert await wait_until_async(lambda: marker_processes(marker), within=10)
                    scope.cancel()

                tasks.start_soon(cancel_when_running)
                await client.call_tool("sandbox_execute", sleeper(marker))
        assert scope.cancelled_caught
        assert await wait_until_async(lambda: not marker_processes(marker), within=1.0)
        # the server is still there for the next call
        after = await client.call_tool("sandbox_execute", {"code": "print('next')"})
        assert text_of(after) == "next\n"


@pytest.mark.parametrize("how", ["stdin closed", "SIGTERM", "SIGINT"])
def test_ending_mid_call_kills_running_sandboxes(tmp_path: Path, how: str) -> None:
    """A client that goes away mid-call (Claude Desktop quitting), or a signal while the
    client still holds stdin open, ends the server at once and leaves no sandbox behind."""
    marker = sleep_marker(3456)
    process = subprocess.Popen(
        [BAPONI_MCP, "--home", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"], **runtimes()},
    )
    assert process.stdin is not None
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    }
    process.stdin.write(rpc(1, "initialize", init))
    process.stdin.write(rpc(None, "notifications/initialized"))
    process.stdin.write(
        rpc(2, "tools/call", {"name": "sandbox_execute", "arguments": sleeper(marker)})
    )
    process.stdin.flush()
    wait_until(lambda: marker_processes(marker), 10, "the sandbox to start")
    if how == "stdin closed":
        process.stdin.close()
    else:
        process.send_signal(getattr(signal, how))
    assert process.wait(timeout=15) == 0
    assert not marker_processes(marker)
    process.stdin.close()
