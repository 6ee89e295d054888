"""Talk to ``baponi-mcp`` the way Claude Desktop does: spawn it over stdio with the official
MCP SDK's client, run code with live output, fetch a plot the code drew, then a file too
large to come inline, through the URL that ``baponi-mcp`` serves itself on loopback.

    .venv/bin/python examples/mcp_client.py

No server and no API key needed: ``baponi-mcp`` opens the local home (BAPONI_HOME, else
~/.baponi) itself. Set BAPONI_HOME to keep this example's state somewhere else.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

import anyio
import httpx
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent, TextContent

BAPONI_MCP = str(Path(sys.executable).with_name("baponi-mcp"))  # next to this Python
THREAD = "mcp-example"

COUNTDOWN = """
import time
for i in range(3, 0, -1):
    print(f"{i}...", flush=True)
    time.sleep(0.4)
print("done")
"""

# Draws a 64x32 bar chart as PNG with nothing but the standard library (no matplotlib in
# the sandbox image) and saves it in the thread's home, /home/baponi.
PLOT = """
import struct, zlib
values = [3, 7, 5, 9, 4, 8, 6, 2]
w, h = 64, 32
rows = []
for y in range(h):
    row = bytearray(b"\\0")
    for x in range(w):
        bar = values[x // 8]
        filled = (h - y) <= bar * 3 and x % 8 != 7
        row += b"\\x1f\\x77\\xb4" if filled else b"\\xff\\xff\\xff"
    rows.append(bytes(row))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
open("plot.png", "wb").write(png)
print(f"wrote plot.png ({len(png)} bytes)")
"""


async def on_progress(progress: float, total: float | None, message: str | None) -> None:
    """Output as the code writes it (a progress notification per chunk)."""
    print(f"  [live {progress:g}] {message!r}")


async def main() -> None:
    # The stdio client passes on only HOME, PATH and a few more: hand BAPONI_HOME over.
    # The stdio client passes on little of the environment: hand these over.
    kept = ("BAPONI_HOME", "BAPONI_RUNTIMES")
    env = {name: os.environ[name] for name in kept if name in os.environ} or None
    server = StdioServerParameters(command=BAPONI_MCP, env=env)
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
        print("tools:", ", ".join(tool.name for tool in tools))

        print("\n1. run code, output streamed while it runs:")
        result = await client.call_tool(
            "sandbox_execute", {"code": COUNTDOWN}, progress_callback=on_progress
        )
        assert isinstance(result.content[0], TextContent)
        print(f"result text:\n{result.content[0].text}")
        print("structured:", result.structured_content)

        print("\n2. a mistake comes back as an error result the model can read:")
        failed = await client.call_tool("sandbox_execute", {"code": "print(undefined_name)"})
        assert isinstance(failed.content[0], TextContent)
        print(f"is_error={failed.is_error}\n{failed.content[0].text}")

        print("\n3. draw a plot in a thread, then download it:")
        drawn = await client.call_tool("sandbox_execute", {"code": PLOT, "thread_id": THREAD})
        assert isinstance(drawn.content[0], TextContent)
        print(drawn.content[0].text, end="")
        plot = await client.call_tool("files_download", {"id": THREAD, "path": "plot.png"})
        summary, image = plot.content
        assert isinstance(summary, TextContent) and isinstance(image, ImageContent)
        print(summary.text)
        saved = Path(tempfile.gettempdir()) / "baponi-mcp-plot.png"
        saved.write_bytes(base64.b64decode(image.data))
        print(f"saved the {image.mime_type} image block as {saved}")

        print("\n4. a file over 1 MiB comes as a URL only, served by baponi-mcp itself:")
        code = "open('rows.csv', 'w').write(''.join(f'{i},{i * i}\\n' for i in range(200_000)))"
        await client.call_tool("sandbox_execute", {"code": code, "thread_id": THREAD})
        big = await client.call_tool("files_download", {"id": THREAD, "path": "rows.csv"})
        assert big.structured_content is not None
        url = big.structured_content["url"]
        async with httpx.AsyncClient() as http:
            answer = await http.get(url)
        answer.raise_for_status()
        print(f"GET {url[:50]}...: {len(answer.content)} bytes, ending {answer.text[-12:]!r}")


if __name__ == "__main__":
    anyio.run(main)
