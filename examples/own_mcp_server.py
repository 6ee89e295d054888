"""Your own MCP server (the official ``mcp`` SDK) with Baponi's tools, ``sandbox_execute``
and ``files_download``, added beside its own, served over your own transport: stdio here.

    .venv/bin/python examples/own_mcp_server.py         # a client: launches the server below
    .venv/bin/python examples/own_mcp_server.py serve   # the server, as MCP clients launch it

The client spawns the server over stdio as Claude Desktop would, lists the tools, calls
the server's own and Baponi's. State lives in BAPONI_HOME (else ~/.baponi), which must not
be open elsewhere.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp import Client, StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp.types import TextContent

from baponi_core import Embedded
from baponi_http import files_app, serving
from baponi_mcp import add_tools

server = MCPServer("my-tools")


@server.tool()
def shout(text: str) -> str:
    """The server's own tool: ``text`` in capitals."""
    return text.upper()


async def serve() -> None:
    baponi = Embedded()
    # Download URLs of local storage need a server for them: the signed-file routes, on
    # loopback while this server runs (or wherever you mount rest_app).
    async with baponi, serving(files_app(baponi), "127.0.0.1", 0) as files_url:
        add_tools(server, baponi.session(), files_url)
        await server.run_stdio_async()


async def client() -> None:
    # The stdio client passes on little of the environment: hand these over.
    kept = ("BAPONI_HOME", "BAPONI_RUNTIMES", "PYTHONPATH")
    env = {name: os.environ[name] for name in kept if name in os.environ}
    params = StdioServerParameters(command=sys.executable, args=[__file__, "serve"], env=env)
    async with Client(params) as session:
        tools = (await session.list_tools()).tools
        print("tools:", ", ".join(sorted(tool.name for tool in tools)))
        said = await session.call_tool("shout", {"text": "hello"})
        assert isinstance(said.content[0], TextContent)
        print("shout:", said.content[0].text)
        ran = await session.call_tool(
            "sandbox_execute",
            {
                "code": "open('hello.txt', 'w').write('hi from the sandbox')\nprint('wrote it')",
                "thread_id": "own-mcp-example",
            },
        )
        print("sandbox_execute:", ran.structured_content)
        got = await session.call_tool(
            "files_download", {"id": "own-mcp-example", "path": "hello.txt"}
        )
        assert isinstance(got.content[0], TextContent) and isinstance(got.content[1], TextContent)
        print("files_download:", got.content[1].text)


anyio.run(serve if sys.argv[1:] == ["serve"] else client)
