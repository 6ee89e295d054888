"""Limits on live long-lived sandboxes, per organisation and per server, on a real SQLite
store: creates at the same time never pass them together, and an ended sandbox frees its
place."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from baponi_core._errors import RateLimited
from baponi_core._records import SandboxState
from baponi_core._sandboxes.admission import Admission, SandboxLimits
from baponi_core._store.sqlite import SqliteStore
from tests.store.test_contract import sandbox

pytestmark = pytest.mark.anyio


async def test_creates_at_once_stop_at_each_limit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "baponi.db")
    await store.open()
    try:
        acme = await store.create_org("acme", 4)
        other = await store.create_org("other", 4)
        admission = Admission(store, SandboxLimits(per_org=3, per_server=5))
        refusals: list[str] = []

        async def create(org_id: str, n: int) -> None:
            try:
                await admission.admit(
                    org_id, lambda: store.insert_sandbox(sandbox(org_id, f"sbx_{org_id}_{n}"))
                )
            except RateLimited as exc:
                assert exc.status == 429 and exc.retry_after
                refusals.append(exc.message)

        async with anyio.create_task_group() as tasks:
            for n in range(6):
                tasks.start_soon(create, acme.id, n)
        assert await store.count_live_sandboxes(acme.id) == 3
        assert len(refusals) == 3 and "organisation has its limit of 3" in refusals[0]

        async with anyio.create_task_group() as tasks:
            for n in range(4):
                tasks.start_soon(create, other.id, n)
        assert await store.count_live_sandboxes(other.id) == 2  # the server's 5 reached
        assert "this server runs its limit of 5" in refusals[-1]

        # An ended sandbox frees its place.
        first = (await store.list_sandboxes(other.id))[0][0]
        ended = dataclasses.replace(first, state=SandboxState.TERMINATED, ended_at=1.0)
        await store.update_sandbox(ended)
        await create(other.id, 9)
        assert await store.count_live_sandboxes() == 5
    finally:
        await store.close()
