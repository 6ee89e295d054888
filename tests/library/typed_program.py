"""A user's program written against the public API only: tests/library/test_typing.py
type-checks it with ``mypy --strict`` (it is never run)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.routing import Mount

import baponi_core
import baponi_http
import baponi_mcp


async def run(home: Path) -> str:
    settings = baponi_core.Settings.at(home, shutdown_grace_s=5.0)
    async with baponi_core.Embedded(settings=settings) as baponi:
        org: baponi_core.Org = await baponi.manage.create_org("acme", max_concurrency=2)
        profile: baponi_core.Profile = await baponi.manage.save_profile(
            org.name, "small", cpus=0.5, memory_mb=256, max_timeout=30
        )
        volume: baponi_core.Volume = await baponi.manage.create_volume(org.name, "reports")
        key, secret = await baponi.manage.create_key(org.name, profile=profile.name)
        assert isinstance(key, baponi_core.ApiKey) and secret

        session: baponi_core.Session = baponi.session(org.name, "small", [volume.slug])
        result: baponi_core.SandboxResult = await session.execute(
            "print(1)", language="python", timeout=10, env_vars={"NAME": "x"}
        )
        async with session.stream("echo hi", language="bash") as execution:
            async for event in execution.events():
                if isinstance(event, baponi_core.OutputEvent):
                    print(event.stream, event.data)
                elif isinstance(event, baponi_core.ResultEvent):
                    status: baponi_core.ExecutionStatus = event.status
                    print(status.value)
        handle: baponi_core.Execution = await session.submit("print(2)", thread_id="t")
        view: baponi_core.ExecutionView = await handle.view()
        await session.write_file("t", "a.txt", b"data")
        data: bytes = await session.read_file("t", "a.txt")
        entries: list[baponi_core.FileEntry] = await session.list_files("t")
        try:
            await session.cancel(view.trace_id)
        except baponi_core.Conflict as exc:
            print(exc.message, data, entries)
        return result.stdout


def application(home: Path) -> Starlette:
    baponi = baponi_core.Embedded(home)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with baponi:
            yield

    routes = [
        Mount("/sandbox", app=baponi_http.rest_app(baponi)),
        Mount("/mcp", app=baponi_mcp.mcp_app(baponi)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def own_server(home: Path) -> None:
    server: MCPServer[Any] = MCPServer("mine")
    baponi = baponi_core.Embedded(home)
    try:
        async with (
            baponi,
            baponi_http.serving(baponi_http.files_app(baponi), "127.0.0.1", 0) as url,
        ):
            baponi_mcp.add_tools(server, baponi.session(), url)
            await server.run_stdio_async()
    except baponi_core.HomeInUse as exc:
        print(exc)


if __name__ == "__main__":
    anyio.run(run, Path("/tmp/home"))
