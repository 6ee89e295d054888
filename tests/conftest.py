"""Fixtures: a real `baponi serve` process on loopback for the session, its SDK and HTTP
clients, and a fresh store of each implementation. Helpers live in tests/harness.py."""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baponi_core._store import Store
from tests.harness import COLD, POOLED, Server, cli, shared_runtimes, start_server, stop_server
from tests.store.implementations import IMPLEMENTATIONS, Implementation

pytest_plugins = ["tests.emulators"]  # s3_emulator, gcs_emulator, azure_emulator


@pytest.fixture(scope="session", autouse=True)
def runtimes() -> Iterator[Path]:
    """The one runtimes directory of the session (harness.shared_runtimes), named in the
    environment so that every `baponi`, `baponi serve` and `baponi-mcp` a test starts uses
    it unless the test gives its own."""
    path = shared_runtimes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BAPONI_RUNTIMES", str(path))
        yield path


@pytest.fixture(scope="session")
def cold_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session, without a pool: every sandbox is set up at its
    request. Its environment holds a secret no sandbox may see."""
    running = with_test_network(start_server(tmp_path_factory.mktemp("home"), *COLD))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def pooled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session with the default pool of prepared sandboxes."""
    running = with_test_network(start_server(tmp_path_factory.mktemp("pooled"), *POOLED))
    yield running
    stop_server(running)


def with_test_network(running: Server) -> Server:
    """``BAPONI_TEST_NETWORK`` (say ``--network allowlist --allow 127.0.0.1``) gives the
    server's default profile that network policy, to run a battery with egress on."""
    network = os.environ.get("BAPONI_TEST_NETWORK")
    if network:
        cli(running.home, "profiles", "set", "default", *shlex.split(network))
    return running


@pytest.fixture(scope="session")
def server(cold_server: Server) -> Server:
    """The session's server; a module that runs on both paths overrides this fixture
    with ``tests.harness.on_both_paths()``."""
    return cold_server


@pytest.fixture(scope="module")  # module: each module's own `server` (on_both_paths)
def sdk(server: Server) -> Iterator[Any]:
    """The official SDK with the session server's key."""
    client = server.sdk()
    yield client
    client.close()


@pytest.fixture()
def api(server: Server) -> Iterator[httpx.Client]:
    """Plain HTTP with the session server's key."""
    with server.client() as client:
        yield client


@pytest.fixture(scope="session")  # session: module-scoped async fixtures need it too
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda implementation: implementation.name)
def implementation(request: pytest.FixtureRequest) -> Implementation:
    """Each Store implementation in turn."""
    chosen: Implementation = request.param
    return chosen


@pytest.fixture()
async def store(implementation: Implementation, tmp_path: Path) -> AsyncIterator[Store]:
    """A real, open store of ``implementation`` on fresh, empty storage."""
    opened = implementation.make(tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
