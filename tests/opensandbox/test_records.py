"""Long-lived sandbox records across a restart of a real ``baponi serve``: a sandbox the
previous server left reads Terminated with a reason, never Running; one that had ended
keeps its own end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from baponi_core._records import SandboxState
from baponi_core._sandboxes.recovery import SERVER_STOPPED
from baponi_core._store import Store
from tests.harness import opened_store, org_id_of, read_store, start_server, stop_server
from tests.store.test_contract import sandbox


@pytest.mark.slow
def test_sandboxes_left_running_read_terminated_after_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    stop_server(start_server(home))  # the home, its database and organisation exist
    org_id = org_id_of(home)
    running = sandbox(org_id, "sbx_running", state=SandboxState.RUNNING)
    paused = sandbox(org_id, "sbx_paused", state=SandboxState.PAUSED, reason="PAUSED")
    ended = sandbox(org_id, "sbx_deleted", state=SandboxState.TERMINATED, reason="DELETED")
    ended = dataclasses.replace(ended, ended_at=ended.created_at + 1)

    async def insert() -> None:
        async with opened_store(home) as store:
            for record in (running, paused, ended):
                await store.insert_sandbox(record)

    anyio.run(insert)
    server = start_server(home)
    try:

        async def states(store: Store) -> dict[str, tuple[str, str | None, bool]]:
            found, _ = await store.list_sandboxes(org_id)
            return {s.id: (s.state, s.reason, s.ended_at is not None) for s in found}

        assert read_store(home, states) == {
            "sbx_running": (SandboxState.TERMINATED, SERVER_STOPPED, True),
            "sbx_paused": (SandboxState.TERMINATED, SERVER_STOPPED, True),
            "sbx_deleted": (SandboxState.TERMINATED, "DELETED", True),
        }
        assert "2 long-lived sandbox(es) ended with the previous server" in server.log
    finally:
        stop_server(server)
