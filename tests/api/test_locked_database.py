"""A database locked by another process: requests that need to write get a clear 503 with
Retry-After, an execution that ends meanwhile is recorded once the lock goes, and a
server stopped before then leaves nothing running after its restart. A real server, a
real SQLite file locked from a connection of this test."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baponi_core._config import Settings
from tests.harness import (
    Server,
    assert_error,
    execution_of,
    start_server,
    stop_server,
    stored_events,
    wait_until,
)

pytestmark = pytest.mark.slow  # servers of their own, a database held for seconds

NDJSON = "application/x-ndjson"
BUSY = "the database is busy (locked by another process); try again"
CODE = "import time\nprint('before', flush=True)\ntime.sleep(1)\nprint('after')\n"


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """The home's database held by an exclusive write transaction of another connection."""
    db = sqlite3.connect(Settings.at(home).database, isolation_level=None, timeout=0)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


@contextlib.contextmanager
def streaming(server: Server) -> Iterator[tuple[str, Iterator[str]]]:
    """A streaming execution of CODE whose record is in: its trace id and its lines."""
    with (
        server.client() as client,
        client.stream(
            "POST", "/v1/sandbox/execute", json={"code": CODE}, headers={"Accept": NDJSON}
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        first = json.loads(next(lines))  # the answer starts once the record is inserted
        assert first["type"] == "status" and first["status"] == "running", first
        yield first["trace_id"], lines


def test_writes_refused_with_503_while_locked_and_an_end_recorded_after(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home")
    try:
        with streaming(server) as (trace_id, lines), locked(server.home), server.client() as client:
            taken = time.monotonic()
            # The stream still ends, with its result, while the record cannot be written.
            events = [json.loads(line) for line in lines]
            assert events[-1]["type"] == "result" and events[-1]["status"] == "success"
            assert events[-1]["result"]["stdout"] == "before\nafter\n"

            refused = client.post("/v1/sandbox/execute", json={"code": "print(1)"})
            assert_error(refused, 503, "service_unavailable", BUSY)
            assert refused.headers["Retry-After"] == "2"

            # Reads still work (WAL), and show the ended execution as ended.
            view = client.get(f"/v1/executions/{trace_id}")
            assert view.status_code == 200 and view.json()["status"] == "success", view.text
            stored = execution_of(server.home, trace_id)
            assert stored is not None and stored.status == "running"  # not written yet
            time.sleep(max(0.0, 10 - (time.monotonic() - taken)))

        def recorded() -> bool:
            record = execution_of(server.home, trace_id)
            return record is not None and record.completed_at is not None

        wait_until(recorded, 15, "the end to be recorded after the lock")
        record = execution_of(server.home, trace_id)
        assert record is not None and record.status == "success"
        assert record.stdout == "before\nafter\n" and record.exit_code == 0
        kept = stored_events(server.home, trace_id)
        assert [e["seq"] for e in kept] == list(range(1, len(kept) + 1))
        assert kept[-1]["type"] == "result"
        with server.client() as client:  # and the server serves again
            answer = client.post("/v1/sandbox/execute", json={"code": "print(2)"})
            assert answer.status_code == 200 and answer.json()["stdout"] == "2\n", answer.text
        assert "Traceback" not in server.log
    finally:
        stop_server(server)


def test_an_end_not_recorded_by_a_shutdown_is_settled_at_the_next_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home, "--shutdown-grace", "1")
    try:
        with streaming(server) as (trace_id, lines), locked(home):
            assert json.loads(list(lines)[-1])["type"] == "result"
            server.process.terminate()  # its tries to record the end stop with it
            server.process.wait(timeout=30)
            stored = execution_of(home, trace_id)
            assert stored is not None and stored.status == "running"
    finally:
        stop_server(server)
    again = start_server(home)
    try:
        record = execution_of(home, trace_id)
        assert record is not None and record.status == "failed", record
        assert record.error == "server_stopped" and record.completed_at is not None
        with again.client(server.key) as client:
            view = client.get(f"/v1/executions/{trace_id}").json()
        assert view["status"] == "failed" and view["completed_at"] is not None, view
    finally:
        stop_server(again)
