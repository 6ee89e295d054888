"""The SQLite store against a real file."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from baponi_core.ids import hash_key
from baponi_core.records import Execution
from baponi_core.services.admin import Admin
from baponi_core.store.sqlite import SqliteStore
from tests.harness import BAPONI

pytestmark = pytest.mark.anyio


def execution(org_id: str, trace_id: str = "trc_test1") -> Execution:
    return Execution(
        trace_id=trace_id,
        org_id=org_id,
        key_id="key_1",
        language="python",
        delivery_mode="inline",
        created_at=time.time(),
        thread_id="t-1",
        metadata={"run": "1", "who": "tests"},
    )


async def test_execution_round_trip(store: SqliteStore) -> None:
    org = await store.create_org("acme", 4)
    record = execution(org.id)
    await store.insert_execution(record)
    running = await store.get_execution(org.id, record.trace_id)
    assert running == record
    assert running is not None and running.status == "running" and running.completed_at is None

    finished = dataclasses.replace(
        record,
        status="failed",
        exit_code=3,
        stdout="out ✓\n",
        stderr="err\n",
        error=None,
        duration_ms=123,
        completed_at=record.created_at + 0.5,
    )
    await store.update_execution(finished)
    assert await store.get_execution(org.id, record.trace_id) == finished


async def test_execution_of_another_org_is_none(store: SqliteStore) -> None:
    mine = await store.create_org("mine", 1)
    theirs = await store.create_org("theirs", 1)
    await store.insert_execution(execution(mine.id, "trc_mine"))
    assert await store.get_execution(theirs.id, "trc_mine") is None
    assert await store.get_execution(mine.id, "trc_other") is None
    assert await store.get_execution(mine.id, "trc_mine") is not None


async def test_reopen_keeps_data(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "baponi.db")
    await first.open()
    org = await first.create_org("kept", 2)
    await first.insert_execution(execution(org.id))
    await first.close()
    second = SqliteStore(tmp_path / "baponi.db")
    await second.open()
    try:
        assert await second.get_org("kept") == org
        assert await second.get_execution(org.id, "trc_test1") is not None
    finally:
        await second.close()


async def test_keys_found_by_hash_and_revoked(store: SqliteStore) -> None:
    admin = Admin(store)
    secret = await admin.first_start()
    assert secret is not None
    assert await admin.first_start() is None
    key, other = await admin.create_key(name="second")
    principal = await store.find_key(hash_key(other))
    assert principal is not None and principal.key == key and principal.org.name == "default"
    assert await store.find_key(hash_key(other + "x")) is None
    assert await store.revoke_key(key.org_id, key.id, time.time())
    assert await store.find_key(hash_key(other)) is None
    assert not await store.revoke_key(key.org_id, key.id, time.time())


async def test_two_connections_on_one_file_both_write(tmp_path: Path) -> None:
    """The server and the operator CLI share the file: neither may see 'database is locked'."""
    path = tmp_path / "baponi.db"
    server, operator = SqliteStore(path), SqliteStore(path)
    await server.open()
    await operator.open()
    try:
        org = await Admin(server).create_org("shared", 8)
        count = 60

        async def server_writes() -> None:
            for i in range(count):
                record = execution(org.id, f"trc_s{i}")
                await server.insert_execution(record)
                await server.update_execution(
                    dataclasses.replace(record, status="success", exit_code=0)
                )

        async def operator_writes() -> None:
            admin = Admin(operator)
            for i in range(count // 3):
                await admin.create_org(f"org{i}")
                await admin.create_key("shared", name=f"k{i}")
                await admin.save_profile("shared", f"p{i}", max_timeout=10 + i)

        async with anyio.create_task_group() as group:
            group.start_soon(server_writes)
            group.start_soon(operator_writes)

        # each side sees the other's writes
        assert len(await server.list_orgs()) == 1 + count // 3
        assert len(await server.list_keys(org.id)) == count // 3
        for i in (0, count - 1):
            seen = await operator.get_execution(org.id, f"trc_s{i}")
            assert seen is not None and seen.status == "success"
    finally:
        await server.close()
        await operator.close()


async def test_store_and_cli_process_write_at_once(tmp_path: Path) -> None:
    """A live store connection and CLI processes writing the same file at the same time."""
    home = tmp_path / "home"
    server = SqliteStore(home / "baponi.db")
    await server.open()
    try:
        org = await Admin(server).create_org("live", 8)
        done = anyio.Event()
        written = 0

        async def server_writes() -> None:
            nonlocal written
            while not done.is_set() or written < 20:
                record = execution(org.id, f"trc_live{written}")
                await server.insert_execution(record)
                await server.update_execution(dataclasses.replace(record, status="success"))
                written += 1

        results: list[subprocess.CompletedProcess[bytes]] = []

        async def cli_writes() -> None:
            for i in range(4):
                results.append(
                    await anyio.run_process(
                        [*BAPONI, "orgs", "create", f"cli{i}", "--home", str(home)], check=False
                    )
                )
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(cli_writes)
            group.start_soon(server_writes)
        for result in results:
            assert result.returncode == 0, result.stderr.decode()
            assert b"locked" not in result.stderr
        names = {o.name for o in await server.list_orgs()}
        assert {"live", "cli0", "cli1", "cli2", "cli3"} <= names
        seen = await server.get_execution(org.id, f"trc_live{written - 1}")
        assert seen is not None and seen.status == "success"
    finally:
        await server.close()


async def test_database_of_schema_1_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from baponi_core.store.sqlite import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # a database as the first release left it
        old.executescript(MIGRATIONS[0])
        old.execute("INSERT INTO orgs VALUES ('org_1', 'acme', 3, 1.0)")
        old.execute(
            "INSERT INTO executions (trace_id, org_id, language, delivery_mode, status, "
            "metadata, created_at) VALUES ('trc_old', 'org_1', 'bash', 'inline', 'success', "
            "'{}', 2.0)"
        )
        old.execute("PRAGMA user_version=1")
    store = SqliteStore(path)
    await store.open()
    try:
        record = await store.get_execution("org_1", "trc_old")
        assert record is not None and record.status == "success"
        assert record.timeout == 60 and record.webhook_attempts == 0
        assert await store.webhook_secret("org_1") is None
        await store.add_events("trc_old", [(1, '{"type":"keepalive","seq":1}')], time.time() + 9)
        assert await store.get_events("trc_old", 0, time.time()) == ['{"type":"keepalive","seq":1}']
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_unfinished_executions_fail_and_their_webhooks_become_due(
    store: SqliteStore,
) -> None:
    org = await store.create_org("acme", 4)
    hooked = dataclasses.replace(
        execution(org.id, "trc_hooked"),
        delivery_mode="webhook",
        webhook_url="https://example.com/h",
        webhook_delivery_status="pending",
    )
    done = dataclasses.replace(
        execution(org.id, "trc_done"), status="success", completed_at=time.time(), exit_code=0
    )
    for record in (execution(org.id, "trc_running"), hooked, done):
        await store.insert_execution(record)

    now = time.time()
    assert sorted(t for _, t in await store.fail_unfinished("server_stopped", now)) == [
        "trc_hooked",
        "trc_running",
    ]
    stranded = await store.get_execution(org.id, "trc_running")
    assert stranded is not None
    assert (stranded.status, stranded.error, stranded.exit_code) == ("failed", "server_stopped", -1)
    assert stranded.completed_at == now and stranded.stdout == ""
    untouched = await store.get_execution(org.id, "trc_done")
    assert untouched is not None and untouched.status == "success"
    assert [r.trace_id for r in await store.due_webhooks(now + 1, 10)] == ["trc_hooked"]
    assert await store.next_webhook_at() == now


async def test_events_are_kept_until_they_expire(store: SqliteStore) -> None:
    now = time.time()
    events = [(seq, f'{{"seq":{seq}}}') for seq in range(1, 1203)]  # more than one insert
    await store.add_events("trc_a", events, now + 10)
    await store.add_events("trc_b", events[:2], now - 1)
    stored = await store.get_events("trc_a", 1200, now)
    assert stored == ['{"seq":1201}', '{"seq":1202}']
    assert len(await store.get_events("trc_a", 0, now)) == 1202
    assert await store.get_events("trc_b", 0, now) == []  # expired: no longer served
    assert await store.purge_events(now) == 2
    assert await store.purge_events(now + 11) == 1202
