"""What the execd tests of sessions, PTY and proxy share: a server of their module, a
sandbox made with the official SDK, and that sandbox's execd address and token, for the
raw HTTP and WebSocket clients (the SDK has none for the PTY and the proxy)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
from opensandbox import SandboxSync
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxException

from tests.harness import Server, start_server, stop_server, unique
from tests.opensandbox.clients import RUNTIME

EXECD_PORT = 44772
TOKEN_HEADER = "X-EXECD-ACCESS-TOKEN"


@contextlib.contextmanager
def serving(home: Path, *args: str) -> Iterator[Server]:
    server = start_server(home, *args)
    try:
        yield server
    finally:
        stop_server(server)


@contextlib.contextmanager
def sandbox_of(server: Server) -> Iterator[SandboxSync]:
    config = ConnectionConfigSync(
        domain=f"{server.url}/opensandbox",
        api_key=server.key,
        request_timeout=timedelta(seconds=30),
    )
    box = SandboxSync.create(RUNTIME, connection_config=config, metadata={"t": unique()})
    try:
        yield box
    finally:
        with contextlib.suppress(SandboxException):
            box.kill()


def execd_of(box: SandboxSync) -> tuple[str, dict[str, str]]:
    """The sandbox's execd as ``host:port/prefix``, and the headers that open it."""
    endpoint = box.get_endpoint(EXECD_PORT)
    return endpoint.endpoint, dict(endpoint.headers or {})


def execd_client(box: SandboxSync, *, token: bool = True) -> httpx.Client:
    where, headers = execd_of(box)
    return httpx.Client(base_url=f"http://{where}", headers=headers if token else {}, timeout=30)
