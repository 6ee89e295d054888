"""The REST API and the MCP endpoint mounted under prefixes of another Starlette app,
served by a real uvicorn on loopback: keys, limits and signed file URLs work under the
prefix; the MCP endpoint's session manager runs with the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from baponi_core import Embedded, Settings
from baponi_http import rest_app, serving
from baponi_mcp import add_tools, mcp_app
from tests.harness import unique

pytestmark = pytest.mark.anyio


async def own_route(request: Request) -> PlainTextResponse:
    return PlainTextResponse("mine")


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Embedded, str]]:
    """A user's app with our REST API at /sandbox and MCP at /mcp, and its URL."""
    baponi = Embedded(settings=Settings.at(tmp_path_factory.mktemp("mounted"), shutdown_grace_s=0))
    app = Starlette(
        routes=[
            Route("/", own_route),
            Mount("/sandbox", app=rest_app(baponi)),
            Mount("/mcp", app=mcp_app(baponi)),
        ]
    )
    async with baponi, serving(app, "127.0.0.1", 0) as url:
        yield baponi, url


@pytest.fixture(scope="module")
async def key(served: tuple[Embedded, str]) -> str:
    baponi, _ = served
    _, secret = await baponi.manage.create_key("default", name="mounted")
    return secret


@pytest.fixture()
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """Async: the server runs on this test's event loop."""
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


async def execute(
    http: httpx.AsyncClient, base: str, key: str | None, **body: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await http.post(f"{base}/v1/sandbox/execute", json=body, headers=headers)


async def test_the_rest_api_under_a_prefix(
    served: tuple[Embedded, str], key: str, http: httpx.AsyncClient
) -> None:
    _, url = served
    base = f"{url}/sandbox"
    assert (await http.get(f"{url}/")).text == "mine"  # the app's own routes are untouched
    assert (await http.get(f"{base}/health")).json() == {"status": "ok"}
    assert "/v1/sandbox/execute" in (await http.get(f"{base}/openapi.json")).json()["paths"]
    refused = await execute(http, base, None, code="print(1)")
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert (await execute(http, base, "sk-local-wrong", code="print(1)")).status_code == 401
    done = await execute(http, base, key, code="print(6 * 7)")
    assert done.status_code == 200 and done.json()["stdout"] == "42\n"
    assert (await http.get(f"{url}/v1/sandbox/execute")).status_code == 404  # only under the prefix


async def test_signed_urls_carry_the_prefix(
    served: tuple[Embedded, str], key: str, http: httpx.AsyncClient
) -> None:
    _, url = served
    base, thread = f"{url}/sandbox", unique("mounted")
    auth = {"Authorization": f"Bearer {key}"}
    data = b"through the mount"
    asked = {"id": thread, "path": "in.txt", "content_length": len(data)}
    upload = (await http.post(f"{base}/v1/files/upload_url", json=asked, headers=auth)).json()
    assert upload["url"].startswith(f"{base}/v1/files/signed/")
    headers = {h["name"]: h["value"] for h in upload["headers"]}
    assert (await http.put(upload["url"], content=data, headers=headers)).status_code == 200
    asked = {"id": thread, "path": "in.txt"}
    download = (await http.post(f"{base}/v1/files/download_url", json=asked, headers=auth)).json()
    assert download["url"].startswith(f"{base}/v1/files/signed/")
    assert (await http.get(download["url"])).content == data


async def test_a_keys_limits_hold_under_the_prefix(
    served: tuple[Embedded, str], http: httpx.AsyncClient
) -> None:
    baponi, url = served
    org = unique("mounted")
    await baponi.manage.create_org(org)
    await baponi.manage.save_profile(org, "default", max_timeout=5)
    _, limited = await baponi.manage.create_key(org)
    refused = await execute(http, f"{url}/sandbox", limited, code="print(1)", timeout=10)
    assert refused.status_code == 429 and "plan limit of 5s" in refused.json()["message"]


@asynccontextmanager
async def mcp_client(url: str, key: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with http, Client(streamable_http_client(f"{url}/mcp/", http_client=http)) as client:
        yield client


@pytest.mark.slow
async def test_the_mcp_endpoint_under_a_prefix(
    served: tuple[Embedded, str], key: str, http: httpx.AsyncClient
) -> None:
    _, url = served
    thread = unique("mcp-mounted")
    async with mcp_client(url, key) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"sandbox_execute", "files_download"}
        ran = await client.call_tool(
            "sandbox_execute",
            {
                "code": "printf 'made by mcp' > f.txt; echo ok",
                "language": "bash",
                "thread_id": thread,
            },
        )
        assert ran.structured_content is not None and ran.structured_content["stdout"] == "ok\n"
        got = await client.call_tool("files_download", {"id": thread, "path": "f.txt"})
    assert got.structured_content is not None
    download = got.structured_content["url"]
    assert download.startswith(f"{url}/mcp/v1/files/signed/")  # answered by the same mount
    assert (await http.get(download)).content == b"made by mcp"
    refused = await http.post(
        f"{url}/mcp/",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


async def test_the_tools_on_a_users_own_server(served: tuple[Embedded, str]) -> None:
    baponi, url = served
    org = unique("own-tools")
    await baponi.manage.create_org(org, max_concurrency=1)
    await baponi.manage.save_profile(org, "default", max_timeout=5)
    server: MCPServer[Any] = MCPServer("theirs")
    add_tools(server, baponi.session(org), f"{url}/sandbox")
    async with Client(server) as client:
        ran = await client.call_tool(
            "sandbox_execute", {"code": "print('as theirs')", "timeout": 5}
        )
        assert ran.structured_content is not None
        assert ran.structured_content["stdout"] == "as theirs\n"
        assert not ran.is_error
        with pytest.raises(MCPError, match="plan limit of 5s"):
            await client.call_tool("sandbox_execute", {"code": "1", "timeout": 10})
    record = await baponi.session(org).get(ran.structured_content["trace_id"])
    assert record.stdout == "as theirs\n"  # ran as that organisation
    with pytest.raises(ValueError, match="files_url"):
        add_tools(MCPServer("no-urls"), baponi.session())


async def test_an_open_core_takes_no_more_mounts(served: tuple[Embedded, str]) -> None:
    baponi, _ = served
    with pytest.raises(RuntimeError, match="before the core is opened"):
        mcp_app(baponi)
