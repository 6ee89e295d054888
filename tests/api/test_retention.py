"""Retention on a real server: executions that ended longer ago than their organisation's
retention are deleted by the sweep (record, output and stored events), a recent one and a
running one stay, and an organisation with unlimited retention keeps everything. Records
are aged through the store, not by waiting a day; the sweep runs every second here."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from baponi_core._records import Execution
from baponi_core._store import Store
from tests.harness import (
    Server,
    assert_error,
    cli,
    execution_of,
    read_store,
    start_server,
    stop_server,
    stored_events,
    wait_until,
)

DAY_S = 86400
EXECUTE = "/v1/sandbox/execute"


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("retention") / "home"
    running = start_server(home, "--retention-sweep-interval", "1")
    yield running
    stop_server(running)


def key_of(server: Server, org: str, retention: str) -> str:
    created = cli(server.home, "orgs", "create", org, "--retention", retention)
    assert created.endswith(f"retention {retention}"), created
    return server.new_key("--org", org)


def age(home: Path, org: str, trace_id: str, days: float) -> None:
    """Move the execution ``days`` into the past, through the store."""
    record = execution_of(home, trace_id, org)
    assert record is not None

    def moved(when: float | None) -> float | None:
        return None if when is None else when - days * DAY_S

    older = dataclasses.replace(
        record, created_at=moved(record.created_at), completed_at=moved(record.completed_at)
    )

    async def write(store: Store) -> None:
        await store.update_execution(older)

    read_store(home, write)


def finished(home: Path, org: str, trace_id: str) -> Execution:
    """The record once it is complete and its last events are stored."""

    def done() -> Execution | None:
        record = execution_of(home, trace_id, org)
        if record is None or record.completed_at is None:
            return None
        return record

    return wait_until(done, 30, f"{trace_id} to be stored complete")


def test_the_sweep_deletes_what_is_past_retention_only(own: Server) -> None:
    day, forever = "retention-day", "retention-forever"
    with (
        own.client(key_of(own, day, "1d")) as daily,
        own.client(key_of(own, forever, "unlimited")) as kept,
    ):
        streamed = daily.post(
            EXECUTE, json={"code": "print('old')"}, headers={"Accept": "application/x-ndjson"}
        )
        old = _trace_of(streamed)
        recent = daily.post(EXECUTE, json={"code": "print('recent')"}).json()["trace_id"]
        running = daily.post(
            EXECUTE,
            json={"code": "import time; time.sleep(60)", "timeout": 90},
            headers={"Prefer": "respond-async"},
        ).json()["trace_id"]
        ancient = kept.post(EXECUTE, json={"code": "print('kept')"}).json()["trace_id"]

        finished(own.home, day, old)
        wait_until(lambda: any(e["type"] == "result" for e in stored_events(own.home, old)), 30)
        wait_until(lambda: daily.get(f"/v1/executions/{running}").json()["status"] == "running", 30)
        finished(own.home, forever, ancient)
        age(own.home, day, old, 1.5)
        age(own.home, day, running, 2)  # started long ago, but not ended: kept
        age(own.home, day, recent, 0.5)
        age(own.home, forever, ancient, 400)

        wait_until(lambda: daily.get(f"/v1/executions/{old}").status_code == 404, 15)
        assert_error(daily.get(f"/v1/executions/{old}"), 404, message=f"Execution {old} not found")
        assert_error(daily.get(f"/v1/executions/{old}/output"), 404)
        assert stored_events(own.home, old) == []
        assert daily.get(f"/v1/executions/{recent}").json()["stdout"] == "recent\n"
        assert daily.get(f"/v1/executions/{running}").json()["status"] == "running"
        assert kept.get(f"/v1/executions/{ancient}").json()["stdout"] == "kept\n"
        assert "retention: deleted 1 execution(s)" in own.log

        # Once the running one has ended (long ago, as aged), the next sweep takes it.
        assert daily.post(f"/v1/executions/{running}/cancel").status_code == 200
        finished(own.home, day, running)
        age(own.home, day, running, 2)
        wait_until(lambda: daily.get(f"/v1/executions/{running}").status_code == 404, 15)


def _trace_of(response: httpx.Response) -> str:
    """The trace id of a streamed execution, from its result line."""
    lines = [json.loads(line) for line in response.text.splitlines() if line]
    assert lines[-1]["type"] == "result", lines
    return str(lines[-1]["trace_id"])
