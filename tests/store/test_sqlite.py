"""The SQLite store's file itself: what only this implementation has to get right. Old
schema versions are migrated, the file is private and holds no key secrets, and processes
(the server and the operator CLI) write it at the same time."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from baponi_core._ids import hash_key
from baponi_core._net.policy import NetworkPolicy
from baponi_core._records import DEFAULT_RETENTION_DAYS, Volume
from baponi_core._services.admin import Admin
from baponi_core._store.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore
from tests.harness import BAPONI, cli
from tests.store.test_contract import execution, sandbox

pytestmark = pytest.mark.anyio


async def test_database_of_schema_1_is_migrated(tmp_path: Path) -> None:
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


async def test_database_of_schema_2_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as old:  # a database as release 2 left it, with a key
        for script in MIGRATIONS[:2]:
            old.executescript(script)
        old.execute(
            "INSERT INTO orgs (id, name, max_concurrency, created_at) "
            "VALUES ('org_1', 'acme', 3, 1.0)"
        )
        old.execute(
            "INSERT INTO profiles VALUES ('prf_1', 'org_1', 'default', 1, 1024, 256, 3600, 256, "
            "1024)"
        )
        old.execute(
            "INSERT INTO api_keys VALUES ('key_1', 'org_1', 'prf_1', 'old', 'sk-local-x', ?, "
            "2.0, NULL)",
            (hash_key("sk-local-old"),),
        )
        old.execute("PRAGMA user_version=2")
    assert SCHEMA_VERSION == 10
    store = SqliteStore(path)
    await store.open()
    try:
        principal = await store.find_key(hash_key("sk-local-old"))
        assert principal is not None and principal.volumes == ()
        assert principal.profile.runtime == "default"  # what profiles ran on before runtimes
        assert principal.profile.network == NetworkPolicy()  # an old profile: no network
        volume = Volume("vol_1", "org_1", "data", False, 3.0)
        await store.create_volume(volume)
        await store.bind_volumes("key_1", ["vol_1"])
        principal = await store.find_key(hash_key("sk-local-old"))
        assert principal is not None and principal.volumes == (volume,)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_database_of_schema_3_is_migrated(tmp_path: Path) -> None:
    """Retention arrives: organisations that were kept forever get the default, and the
    executions that existed are swept by it like new ones."""
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as old:
        for script in MIGRATIONS[:3]:
            old.executescript(script)
        old.execute(
            "INSERT INTO orgs (id, name, max_concurrency, created_at) "
            "VALUES ('org_1', 'acme', 3, 1.0)"
        )
        for trace_id, ended in (("trc_ancient", 2.0), ("trc_running", None)):
            old.execute(
                "INSERT INTO executions (trace_id, org_id, language, delivery_mode, status, "
                "metadata, created_at, completed_at) "
                "VALUES (?, 'org_1', 'bash', 'inline', 'success', '{}', 1.5, ?)",
                (trace_id, ended),
            )
        old.execute("PRAGMA user_version=3")
    assert SCHEMA_VERSION == 10
    store = SqliteStore(path)
    await store.open()
    try:
        org = await store.get_org("acme")
        assert org is not None and org.retention_days == DEFAULT_RETENTION_DAYS
        assert org.max_concurrency == 3
        assert await store.delete_executions("org_1", time.time() - 86400) == 1
        assert await store.get_execution("org_1", "trc_ancient") is None
        assert await store.get_execution("org_1", "trc_running") is not None
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_database_of_schema_5_is_migrated(tmp_path: Path) -> None:
    """Connectors arrive: executions that existed injected none."""
    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as old:
        for script in MIGRATIONS[:5]:
            old.executescript(script)
        old.execute(
            "INSERT INTO orgs (id, name, max_concurrency, created_at) VALUES ('o', 'a', 1, 1.0)"
        )
        old.execute(
            "INSERT INTO executions (trace_id, org_id, language, delivery_mode, status, "
            "metadata, created_at) VALUES ('trc_old', 'o', 'bash', 'inline', 'success', '{}', 1.5)"
        )
        old.execute("PRAGMA user_version=5")
    store = SqliteStore(path)
    await store.open()
    try:
        found = await store.get_execution("o", "trc_old")
        assert found is not None and found.connectors == []
        assert await store.list_connectors("o") == []
    finally:
        await store.close()


async def test_database_of_schema_4_is_migrated(tmp_path: Path) -> None:
    """Volume quotas arrive: volumes that existed have none."""
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as old:
        for script in MIGRATIONS[:4]:
            old.executescript(script)
        old.execute(
            "INSERT INTO orgs (id, name, max_concurrency, created_at) VALUES ('o', 'a', 1, 1.0)"
        )
        old.execute(
            "INSERT INTO volumes (id, org_id, slug, read_only, created_at) "
            "VALUES ('vol_1', 'o', 'data', 0, 2.0)"
        )
        old.execute("PRAGMA user_version=4")
    store = SqliteStore(path)
    await store.open()
    try:
        found = await store.get_volume("o", "data")
        assert found is not None and found.quota_bytes is None
        await store.create_volume(Volume("vol_2", "o", "capped", False, 3.0, quota_bytes=1 << 20))
        capped = await store.get_volume("o", "capped")
        assert capped is not None and capped.quota_bytes == 1 << 20
    finally:
        await store.close()


@pytest.mark.slow
def test_keys_are_stored_hashed_in_a_private_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secrets = [cli(home, "keys", "create", "--name", f"k{i}") for i in range(3)]
    database = home / "baponi.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
        rows = db.execute("SELECT * FROM api_keys").fetchall()
    assert len(rows) >= 3
    cells = " ".join(str(cell) for row in rows for cell in row)
    files = b"".join(p.read_bytes() for p in home.glob("baponi.db*"))
    for secret in secrets:
        assert secret not in cells
        assert secret.encode() not in files
        assert secret[9:].encode() not in files  # not even the random part alone
    assert oct(database.stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.slow
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


async def test_database_of_schema_8_is_migrated(tmp_path: Path) -> None:
    """Long-lived sandboxes arrive: a database of schema 8 has none, and takes them."""
    path = tmp_path / "v8.db"
    with sqlite3.connect(path) as old:
        for script in MIGRATIONS[:8]:
            old.executescript(script)
        old.execute(
            "INSERT INTO orgs (id, name, max_concurrency, created_at) VALUES ('o', 'a', 1, 1.0)"
        )
        old.execute("PRAGMA user_version=8")
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.list_sandboxes("o") == ([], 0)
        await store.insert_sandbox(sandbox("o", "sbx_1"))
        assert await store.count_live_sandboxes("o") == 1
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
