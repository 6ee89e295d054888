"""What the MCP server advertises is exactly what it serves: tools (which never change), no
prompts, no resources, no subscriptions. Asked for what it does not serve, it answers the
spec's -32601 (method not found), never error code 0. Seen by the official SDK's client
in both protocol eras, over HTTP on a real ``baponi serve`` and over stdio on a real
``baponi-mcp``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import METHOD_NOT_FOUND, ToolsCapability

from tests.harness import BAPONI_MCP, Server

pytestmark = pytest.mark.anyio

PYTHONPATH = os.environ.get("PYTHONPATH", "")

UNSERVED: dict[str, Callable[[Client], Awaitable[Any]]] = {
    "prompts/list": lambda client: client.list_prompts(),
    "prompts/get": lambda client: client.get_prompt("no-such-prompt"),
    "resources/list": lambda client: client.list_resources(),
    "resources/templates/list": lambda client: client.list_resource_templates(),
    "resources/read": lambda client: client.read_resource("file:///etc/passwd"),
}


@asynccontextmanager
async def over_http(server: Server, mode: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.key}"}, timeout=60)
    transport = streamable_http_client(f"{server.url}/mcp", http_client=http)
    async with http, Client(transport, mode=mode) as client:
        yield client


@asynccontextmanager
async def over_stdio(home: Path, mode: str) -> AsyncIterator[Client]:
    # PYTHONPATH passed on, so that the tree under test is the one served.
    environ = {"HOME": str(home), "PATH": os.environ["PATH"], "PYTHONPATH": PYTHONPATH}
    params = StdioServerParameters(command=BAPONI_MCP, args=["--home", str(home)], env=environ)
    async with Client(params, mode=mode) as client:
        yield client


async def check(client: Client) -> None:
    capabilities = client.server_capabilities
    assert capabilities.tools == ToolsCapability(list_changed=False)
    advertised = capabilities.model_dump(exclude_none=True)
    assert advertised == {"tools": {"list_changed": False}}, advertised
    tools = await client.list_tools()  # what is advertised is served
    assert {tool.name for tool in tools.tools} == {"sandbox_execute", "files_download"}
    for method, call in UNSERVED.items():
        with pytest.raises(MCPError) as refused:
            await call(client)
        assert refused.value.error.code == METHOD_NOT_FOUND, (method, refused.value.error)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_advertises_exactly_what_it_serves(server: Server, mode: str) -> None:
    async with over_http(server, mode) as client:
        await check(client)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_advertises_exactly_what_it_serves(tmp_path: Path, mode: str) -> None:
    async with over_stdio(tmp_path, mode) as client:
        await check(client)
