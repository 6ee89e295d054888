"""Fixtures: a real `baponi serve` process on loopback, its home, and API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baponi_core.store.sqlite import SqliteStore
from tests.harness import Server, start_server, stop_server

pytest_plugins = ["tests.emulators"]  # s3_emulator, gcs_emulator, azure_emulator


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session. Its environment holds a secret no sandbox may see."""
    running = start_server(tmp_path_factory.mktemp("home"))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def sdk(server: Server) -> Iterator[Any]:
    """The official SDK with the session server's key."""
    client = server.sdk()
    yield client
    client.close()


@pytest.fixture()
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="session")  # session: module-scoped async fixtures need it too
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture()
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A real SQLite store in a fresh file."""
    opened = SqliteStore(tmp_path / "baponi.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
