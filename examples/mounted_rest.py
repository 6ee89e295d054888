"""Baponi's REST API inside your own Starlette application, under /sandbox, driven by
the official SDK (``pip install baponi``) with its base URL at the prefix: API keys,
limits and the signed file URLs work there as they do under `baponi serve`.

    .venv/bin/python examples/mounted_rest.py

It serves the application on a free loopback port, makes an API key, runs code and moves
a file in and out through the SDK, then stops. State lives in BAPONI_HOME (else
~/.baponi), which must not be open elsewhere. FastAPI mounts the same way
(``app.mount("/sandbox", rest_app(baponi))``).
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import uvicorn
from baponi import Baponi
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from baponi_core import Embedded
from baponi_http import rest_app

warnings.filterwarnings("ignore", message="Base URL")  # plain HTTP is fine on loopback

baponi = Embedded()  # opened by the application's lifespan


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the application's own route\n")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with baponi:  # a mounted app has no lifespan of its own: the core opens here
        yield


app = Starlette(
    routes=[Route("/", hello), Mount("/sandbox", app=rest_app(baponi))], lifespan=lifespan
)


def use_the_sdk(base_url: str, key: str) -> None:
    """What a client of the application does: the SDK with its base URL at the prefix."""
    print(httpx.get(base_url.removesuffix("/sandbox") + "/").text, end="")
    client = Baponi(api_key=key, base_url=base_url)
    print("execute:", client.execute("print(6 * 7)").stdout, end="")

    data = b"uploaded through a signed URL\n"
    upload = client.upload_url(path="in.txt", id="mounted-example", content_length=len(data))
    print("upload URL under the prefix:", upload.url.startswith(f"{base_url}/v1/files/signed/"))
    headers = {header.name: header.value for header in upload.headers}
    httpx.put(upload.url, headers=headers, content=data).raise_for_status()
    result = client.execute(
        "cat in.txt; echo 'written in the sandbox' > out.txt",
        language="bash",
        thread_id="mounted-example",
    )
    print("the sandbox read:", result.stdout, end="")
    download = client.download_url(path="out.txt", id="mounted-example")
    print("downloaded:", httpx.get(download.url).text, end="")

    wrong = Baponi(api_key="sk-local-not-a-key", base_url=base_url, max_retries=0)
    try:
        wrong.execute("print(1)")
    except Exception as exc:  # the SDK's AuthenticationError
        print("a wrong key:", type(exc).__name__)


async def main() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        while not server.started:  # uvicorn says so with a flag only  # noqa: ASYNC110
            await anyio.sleep(0.05)
        _, secret = await baponi.manage.create_key("default", name="mounted example")
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/sandbox"
        await anyio.to_thread.run_sync(use_the_sdk, base_url, secret)
        server.should_exit = True


anyio.run(main)
