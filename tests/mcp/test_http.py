"""MCP over streamable HTTP at /mcp of a real ``baponi serve`` process: Bearer keys (the
same keys, organisations and limits as REST), stateless requests, DNS-rebinding protection
behind a configured public host name. A server of this module's own, so that wrong keys
and foreign hosts never touch the shared one."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from baponi_mcp._errors import CODES
from tests.harness import (
    Server,
    assert_error,
    cli,
    start_server,
    stop_server,
    tagged_execution,
    text_of,
    unique,
)

pytestmark = pytest.mark.anyio

PUBLIC_HOST = "sandbox.example.test"
PUBLIC_URL = f"https://{PUBLIC_HOST}"
PROTOCOLS = {"auto": "2026-07-28", "legacy": "2025-11-25"}
LIMITED_ORG = "mcp-http-limited"
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("mcp-http"), "--public-url", PUBLIC_URL)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def limited_key(own: Server) -> str:
    """A key of another organisation whose profile caps timeouts at 5 s."""
    cli(own.home, "orgs", "create", LIMITED_ORG)
    cli(own.home, "profiles", "set", "default", "--org", LIMITED_ORG, "--max-timeout", "5")
    return own.new_key("--org", LIMITED_ORG)


@asynccontextmanager
async def connect(server: Server, key: str, mode: str = "auto") -> AsyncIterator[Client]:
    """The official SDK's client on /mcp with a Bearer key."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    async with (
        http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def rpc(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}


def post(server: Server, body: Any, key: str | None, **headers: str) -> httpx.Response:
    sent = dict(MCP_HEADERS, **headers)
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{server.url}/mcp", json=body, headers=sent, timeout=30)


def answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC response in a POST's answer (plain JSON, or the last SSE message)."""
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    messages = [json.loads(d) for d in data if d]
    return dict(messages[-1])


# --------------------------------------------------------------------------- auth


def test_without_key_401(own: Server) -> None:
    response = post(own, rpc("tools/list"), key=None)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_key_401(own: Server) -> None:
    response = post(own, rpc("tools/list"), key="sk-us-wrong-key-for-mcp")
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "tools" not in response.text


# --------------------------------------------------------------------------- stateless


def test_stateless_call_without_initialize(own: Server) -> None:
    tools = answer(post(own, rpc("tools/list"), own.key))
    assert {t["name"] for t in tools["result"]["tools"]} == {"sandbox_execute", "files_download"}
    called = answer(
        post(
            own,
            rpc("tools/call", {"name": "sandbox_execute", "arguments": {"code": "print(6*7)"}}),
            own.key,
        )
    )
    result = called["result"]
    assert result["isError"] is False
    assert result["content"][0] == {"type": "text", "text": "42\n"}
    assert result["structuredContent"]["stdout"] == "42\n"
    assert "mcp-session-id" not in {
        k.lower() for k in post(own, rpc("tools/list"), own.key).headers
    }


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_client_over_http(own: Server, mode: str) -> None:
    thread = unique("http")
    seen: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message)

    async with connect(own, own.key, mode) as client:
        assert client.protocol_version == PROTOCOLS[mode]
        code = (
            "import time\nprint('a', flush=True)\ntime.sleep(0.3)\n"
            "open('f.txt', 'w').write('from mcp')\nprint('b')"
        )
        result = await client.call_tool(
            "sandbox_execute", {"code": code, "thread_id": thread}, progress_callback=on_progress
        )
        assert text_of(result) == "a\nb\n"
        assert str(seen[0]).startswith("a") and "".join(map(str, seen)) == "a\nb\n"
        file = await client.call_tool("files_download", {"id": thread, "path": "f.txt"})
    assert file.structured_content is not None
    url = file.structured_content["url"]
    assert url.startswith(f"{PUBLIC_URL}/v1/files/signed/")  # --public-url is the base
    assert isinstance(file.content[1], TextContent) and file.content[1].text == "from mcp"
    signed = urlsplit(url)
    async with httpx.AsyncClient(base_url=own.url, timeout=30) as http:
        fetched = await http.get(f"{signed.path}?{signed.query}")
    assert fetched.status_code == 200 and fetched.content == b"from mcp"

    # the execution belongs to the key's organisation, as a REST one would
    trace_id = result.structured_content["trace_id"] if result.structured_content else ""
    with own.client() as api:
        assert api.get(f"/v1/executions/{trace_id}").json()["status"] == "success"


@pytest.mark.slow
async def test_limits_are_the_keys(own: Server, limited_key: str) -> None:
    async with connect(own, limited_key) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("sandbox_execute", {"code": "print(1)", "timeout": 6})
        allowed = await client.call_tool("sandbox_execute", {"code": "print(1)", "timeout": 5})
    assert refused.value.error.code == CODES["rate_limited"]
    assert refused.value.error.message == "timeout 6s exceeds the plan limit of 5s"
    assert allowed.structured_content is not None
    trace_id = allowed.structured_content["trace_id"]
    with own.client() as api:  # the default organisation's key cannot see it
        assert api.get(f"/v1/executions/{trace_id}").status_code == 404
    with own.client(limited_key) as api:
        assert api.get(f"/v1/executions/{trace_id}").status_code == 200


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelled_call_stops_the_execution(own: Server, mode: str) -> None:
    probe = unique("probe")
    args = {
        "code": "import time; print('go', flush=True); time.sleep(60)",
        "metadata": {"probe": probe},
    }
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with connect(own, own.key, mode) as client:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tasks:

                async def cancel_when_running() -> None:
                    await started.wait()
                    scope.cancel()

                tasks.start_soon(cancel_when_running)
                await client.call_tool("sandbox_execute", args, progress_callback=on_progress)
    assert scope.cancelled_caught
    status = "running"
    deadline = time.monotonic() + 5
    while status == "running" and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        status = running_status(own.home, probe)
    assert status == "cancelled"


def running_status(home: Path, probe: str) -> str:
    """The status of the execution tagged with metadata ``probe`` (a cancelled call has no
    result to read its trace id from)."""
    found = tagged_execution(home, probe)
    return "running" if found is None else found[1]


# --------------------------------------------------------------------------- DNS rebinding


def test_foreign_host_is_refused(own: Server) -> None:
    response = post(own, rpc("tools/list"), own.key, Host="evil.example")
    assert response.status_code == 421
    assert "tools" not in response.text


def test_foreign_origin_is_refused(own: Server) -> None:
    response = post(own, rpc("tools/list"), own.key, Origin="http://evil.example")
    assert response.status_code == 403


@pytest.mark.parametrize("host", [PUBLIC_HOST, f"{PUBLIC_HOST}:443"])
def test_public_host_is_served(own: Server, host: str) -> None:
    response = post(own, rpc("tools/list"), own.key, Host=host, Origin=PUBLIC_URL)
    assert len(answer(response)["result"]["tools"]) == 2


def test_rest_still_served(own: Server) -> None:
    with own.client() as api:
        response = api.post("/v1/sandbox/execute", json={"code": "print('rest')"})
    assert response.status_code == 200 and response.json()["stdout"] == "rest\n"
    with own.client() as api:
        assert api.get("/mcp/").status_code == 404  # only /mcp itself
