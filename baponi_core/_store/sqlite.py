"""The embedded store: one SQLite file in WAL mode, one aiosqlite connection per process.

Several processes may share the file (the server and the operator CLI): WAL lets readers
run beside the writer, ``busy_timeout`` makes writers queue, and every write transaction
starts with ``BEGIN IMMEDIATE`` so it never has to upgrade a read lock half-way.

Reads go through a connection of their own: aiosqlite runs one statement at a time per
connection, so a write waiting for another process's lock would otherwise hold up every
read (each request's key lookup among them) behind it.

SQLite's refusals become core errors (:func:`refusals`): a database locked longer than the
busy timeout, a full disk, a damaged file. Opening a file that cannot serve as the
database raises :class:`CannotStart`, naming it, for the operator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from baponi_core._errors import CannotStart, NoSpace, Unavailable
from baponi_core._ids import new_id
from baponi_core._net.policy import NetworkPolicy
from baponi_core._records import (
    DEFAULT_RETENTION_DAYS,
    ApiKey,
    Connector,
    DeliveryMode,
    Execution,
    ExecutionStatus,
    Org,
    Principal,
    Profile,
    Sandbox,
    SandboxState,
    Volume,
    WebhookStatus,
)
from baponi_core._sandbox.spec import Stream

BUSY_RETRY_S = 2  # what a client is told to wait when another process holds the lock
BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
)

# One script per schema version; a database at version N runs the scripts after N.
MIGRATIONS = (
    """
CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    max_concurrency INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE profiles (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    cpus REAL NOT NULL,
    memory_mb INTEGER NOT NULL,
    pids INTEGER NOT NULL,
    max_timeout INTEGER NOT NULL,
    tmp_mb INTEGER NOT NULL,
    output_kb INTEGER NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    profile_id TEXT NOT NULL REFERENCES profiles(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE executions (
    trace_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    key_id TEXT,
    language TEXT NOT NULL,
    delivery_mode TEXT NOT NULL,
    status TEXT NOT NULL,
    thread_id TEXT,
    metadata TEXT NOT NULL,
    exit_code INTEGER,
    stdout TEXT,
    stderr TEXT,
    error TEXT,
    duration_ms INTEGER,
    created_at REAL NOT NULL,
    completed_at REAL,
    webhook_url TEXT,
    webhook_delivery_status TEXT
);
CREATE INDEX executions_by_org ON executions (org_id, created_at);
""",
    """
ALTER TABLE orgs ADD COLUMN webhook_secret TEXT;
ALTER TABLE executions ADD COLUMN timeout INTEGER NOT NULL DEFAULT 60;
ALTER TABLE executions ADD COLUMN webhook_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN webhook_next_at REAL;
CREATE INDEX executions_unfinished ON executions (trace_id) WHERE completed_at IS NULL;
CREATE INDEX executions_webhooks_due ON executions (webhook_next_at)
    WHERE webhook_delivery_status = 'pending';
CREATE TABLE execution_events (
    trace_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (trace_id, seq)
) WITHOUT ROWID;
CREATE INDEX execution_events_expiry ON execution_events (expires_at);
""",
    """
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    slug TEXT NOT NULL,
    read_only INTEGER NOT NULL,
    url TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    UNIQUE (org_id, slug)
);
CREATE TABLE key_volumes (
    key_id TEXT NOT NULL REFERENCES api_keys(id),
    volume_id TEXT NOT NULL REFERENCES volumes(id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, volume_id)
) WITHOUT ROWID;
CREATE INDEX key_volumes_by_volume ON key_volumes (volume_id);
""",
    """
ALTER TABLE orgs ADD COLUMN retention_days INTEGER DEFAULT 30;
CREATE INDEX executions_ended ON executions (org_id, completed_at)
    WHERE completed_at IS NOT NULL;
""",
    """
ALTER TABLE volumes ADD COLUMN quota_bytes INTEGER;
""",
    """
ALTER TABLE profiles ADD COLUMN runtime TEXT NOT NULL DEFAULT 'default';
""",
    """
CREATE TABLE connectors (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    name TEXT NOT NULL,
    env_names TEXT NOT NULL,
    file_paths TEXT NOT NULL,
    created_at REAL NOT NULL,
    rotated_at REAL,
    sealed BLOB NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE key_connectors (
    key_id TEXT NOT NULL REFERENCES api_keys(id),
    connector_id TEXT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, connector_id)
) WITHOUT ROWID;
CREATE INDEX key_connectors_by_connector ON key_connectors (connector_id);
ALTER TABLE executions ADD COLUMN connectors TEXT NOT NULL DEFAULT '[]';
""",
    """
ALTER TABLE profiles ADD COLUMN network TEXT;
""",
    """
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id),
    key_id TEXT,
    runtime TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    cpus REAL NOT NULL,
    memory_mb INTEGER NOT NULL,
    pids INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    env TEXT NOT NULL,
    metadata TEXT NOT NULL,
    network TEXT,
    ended_at REAL
);
CREATE INDEX sandboxes_by_org ON sandboxes (org_id, created_at);
CREATE INDEX sandboxes_live ON sandboxes (org_id) WHERE ended_at IS NULL;
""",
    """
ALTER TABLE sandboxes ADD COLUMN entrypoint TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sandboxes ADD COLUMN end_requested_at REAL;
""",
)
SCHEMA_VERSION = len(MIGRATIONS)

EVENTS_PER_INSERT = 500  # 4 parameters each, well under SQLite's 32766
ORG_FIELDS = [f.name for f in dataclasses.fields(Org)]
ORG_COLUMNS = ", ".join(f"o.{name}" for name in ORG_FIELDS)
DELETES_PER_TRANSACTION = 1000  # the server's own writes get their turn between batches
PROFILE_FIELDS = [f.name for f in dataclasses.fields(Profile)]
KEY_FIELDS = [f.name for f in dataclasses.fields(ApiKey)]
EXECUTION_FIELDS = [f.name for f in dataclasses.fields(Execution)]
VOLUME_COLUMNS = ", ".join(f"v.{f.name}" for f in dataclasses.fields(Volume))
CONNECTOR_COLUMNS = ", ".join(f"c.{f.name}" for f in dataclasses.fields(Connector))
SANDBOX_FIELDS = [f.name for f in dataclasses.fields(Sandbox)]
SANDBOX_COLUMNS = ", ".join(f"s.{name}" for name in SANDBOX_FIELDS)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    async def open(self) -> None:
        """Open (and migrate) the database; a file that cannot be it raises CannotStart.
        On any failure the connection is closed: its thread would keep the process alive."""
        try:
            await self._open()
        except BaseException as exc:
            await self._disconnect()
            if isinstance(exc, sqlite3.DatabaseError | Unavailable | OSError):
                raise CannotStart(f"database {self.path}: {_reason(exc)}") from None
            raise

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_dir():
            raise CannotStart(f"database {self.path} is a directory, not a file")
        fresh = not self.path.exists()
        # No statement cache: a cached statement keeps its last bound values, and the
        # writer binds events and outputs of megabytes (one multi-row INSERT per row count).
        self._db = await aiosqlite.connect(self.path, isolation_level=None, cached_statements=0)
        if fresh:
            os.chmod(self.path, 0o600)
        with refusals():
            for pragma in PRAGMAS:
                await self.db.execute(pragma)
        if await self._version() != SCHEMA_VERSION:  # no write lock taken when current
            async with self._write() as db:
                version = await self._version()
                for script in MIGRATIONS[version:]:
                    for statement in filter(str.strip, script.split(";")):
                        await db.execute(statement)
                await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        with refusals():
            for pragma in (*PRAGMAS, "PRAGMA query_only=ON"):
                await self.reader.execute(pragma)

    async def _version(self) -> int:
        with refusals():
            async with self.db.execute("PRAGMA user_version") as cursor:
                version = int((await cursor.fetchone() or (0,))[0])
        if version > SCHEMA_VERSION:
            raise CannotStart(f"database {self.path}: schema {version} is newer than this server's")
        return version

    async def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):  # a locked or full database
                await self._db.execute("PRAGMA optimize")
        await self._disconnect()

    async def _disconnect(self) -> None:
        for connection in (self._reader, self._db):
            if connection is not None:
                await connection.close()
        self._db = self._reader = None

    async def ping(self) -> None:
        with refusals():
            await self.reader.execute("SELECT 1")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        with refusals():
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def _one(self, sql: str, args: Iterable[Any]) -> aiosqlite.Row | None:
        """The first row of a read (of one row at most: by its key)."""
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    async def _all(self, sql: str, args: Iterable[Any], write: bool = False) -> list[Any]:
        """Every row of a read (of a write with RETURNING, when ``write``), in one round
        trip to the database thread (a cursor's execute, fetch and close take three)."""
        with refusals():
            return list(
                await (self.db if write else self.reader).execute_fetchall(sql, tuple(args))
            )

    async def _change(self, sql: str, args: Iterable[Any]) -> int:
        """One write statement, in autocommit: atomic on its own, and one round trip
        to the database thread instead of three for BEGIN/statement/COMMIT."""
        with refusals():
            async with self.db.execute(sql, tuple(args)) as cursor:
                return cursor.rowcount

    async def _insert(self, table: str, values: dict[str, Any]) -> None:
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        await self._change(f"INSERT INTO {table} ({names}) VALUES ({marks})", values.values())

    # organisations

    async def create_org(
        self, name: str, max_concurrency: int, retention_days: int | None = DEFAULT_RETENTION_DAYS
    ) -> Org:
        org = Org(
            id=new_id("org"),
            name=name,
            max_concurrency=max_concurrency,
            created_at=time.time(),
            retention_days=retention_days,
        )
        await self._insert("orgs", dataclasses.asdict(org))
        return org

    async def get_org(self, name: str) -> Org | None:
        row = await self._one(f"SELECT {ORG_COLUMNS} FROM orgs o WHERE o.name = ?", [name])
        return Org(*row) if row else None

    async def list_orgs(self) -> list[Org]:
        return [
            Org(*row)
            for row in await self._all(f"SELECT {ORG_COLUMNS} FROM orgs o ORDER BY o.name", [])
        ]

    async def update_org(self, org: Org) -> None:
        await self._change(
            "UPDATE orgs SET max_concurrency = ?, retention_days = ? WHERE id = ?",
            (org.max_concurrency, org.retention_days, org.id),
        )

    # sandbox profiles

    async def save_profile(self, profile: Profile) -> None:
        values = dataclasses.asdict(profile)
        values["network"] = profile.network.to_json()
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(
            f"{n} = excluded.{n}" for n in values if n not in ("id", "org_id", "name")
        )
        await self._change(
            f"INSERT INTO profiles ({names}) VALUES ({marks}) "
            f"ON CONFLICT (org_id, name) DO UPDATE SET {updates}",
            values.values(),
        )

    async def get_profile(self, org_id: str, name: str) -> Profile | None:
        row = await self._one(
            f"SELECT {', '.join(PROFILE_FIELDS)} FROM profiles WHERE org_id = ? AND name = ?",
            [org_id, name],
        )
        return _profile(row) if row else None

    async def list_profiles(self, org_id: str) -> list[Profile]:
        rows = await self._all(
            f"SELECT {', '.join(PROFILE_FIELDS)} FROM profiles WHERE org_id = ? ORDER BY name",
            [org_id],
        )
        return [_profile(row) for row in rows]

    async def profiles_by_runtime(self) -> dict[str, list[str]]:
        rows = await self._all(
            "SELECT p.runtime, o.name, p.name FROM profiles p JOIN orgs o ON o.id = p.org_id "
            "ORDER BY p.runtime, o.name, p.name",
            [],
        )
        users: dict[str, list[str]] = {}
        for runtime, org, profile in rows:
            users.setdefault(runtime, []).append(f"{org}/{profile}")
        return users

    # API keys

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        await self._insert("api_keys", {**dataclasses.asdict(key), "secret_hash": secret_hash})

    async def find_key(self, secret_hash: str) -> Principal | None:
        key_cols = ", ".join(f"k.{n}" for n in KEY_FIELDS)
        profile_cols = ", ".join(f"p.{n}" for n in PROFILE_FIELDS)
        row = await self._one(
            f"SELECT {key_cols}, {ORG_COLUMNS}, {profile_cols} FROM api_keys k "
            "JOIN orgs o ON o.id = k.org_id JOIN profiles p ON p.id = k.profile_id "
            "WHERE k.secret_hash = ? AND k.revoked_at IS NULL",
            [secret_hash],
        )
        if row is None:
            return None
        k, o = len(KEY_FIELDS), len(KEY_FIELDS) + len(ORG_FIELDS)
        key = ApiKey(*row[:k])
        volumes = await self._all(
            f"SELECT {VOLUME_COLUMNS} FROM key_volumes kv JOIN volumes v ON v.id = kv.volume_id "
            "WHERE kv.key_id = ? ORDER BY v.slug",
            [key.id],
        )
        return Principal(
            key=key,
            org=Org(*row[k:o]),
            profile=_profile(row[o:]),
            volumes=tuple(_volume(v) for v in volumes),
        )

    async def list_keys(self, org_id: str) -> list[ApiKey]:
        rows = await self._all(
            f"SELECT {', '.join(KEY_FIELDS)} FROM api_keys WHERE org_id = ? ORDER BY created_at",
            [org_id],
        )
        return [ApiKey(*row) for row in rows]

    async def revoke_key(self, org_id: str, key_id: str, when: float) -> bool:
        changed = await self._change(
            "UPDATE api_keys SET revoked_at = ? WHERE org_id = ? AND id = ? AND revoked_at IS NULL",
            (when, org_id, key_id),
        )
        return changed == 1

    # volumes and storage connections

    async def create_volume(self, volume: Volume) -> None:
        row = dataclasses.asdict(volume)
        row["options"] = json.dumps(row["options"])
        await self._insert("volumes", row)

    async def get_volume(self, org_id: str, slug: str) -> Volume | None:
        row = await self._one(
            f"SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.org_id = ? AND v.slug = ?",
            [org_id, slug],
        )
        return _volume(row) if row else None

    async def list_volumes(self, org_id: str) -> list[Volume]:
        rows = await self._all(
            f"SELECT {VOLUME_COLUMNS} FROM volumes v WHERE v.org_id = ? ORDER BY v.slug", [org_id]
        )
        return [_volume(row) for row in rows]

    async def volume_ids(self) -> dict[str, set[str]]:
        orgs = await self._all("SELECT id FROM orgs", [])
        found: dict[str, set[str]] = {row[0]: set() for row in orgs}
        for org_id, volume_id in await self._all("SELECT org_id, id FROM volumes", []):
            found.setdefault(org_id, set()).add(volume_id)
        return found

    async def delete_volume(self, org_id: str, slug: str) -> bool:
        async with self._write() as db:
            # Explicit, not left to ON DELETE CASCADE: that needs foreign_keys=ON everywhere.
            await db.execute(
                "DELETE FROM key_volumes WHERE volume_id IN "
                "(SELECT id FROM volumes WHERE org_id = ? AND slug = ?)",
                (org_id, slug),
            )
            async with db.execute(
                "DELETE FROM volumes WHERE org_id = ? AND slug = ?", (org_id, slug)
            ) as cursor:
                return cursor.rowcount == 1

    async def bind_volumes(self, key_id: str, volume_ids: list[str]) -> None:
        if not volume_ids:
            return
        rows = ", ".join("(?, ?)" for _ in volume_ids)
        await self._change(
            f"INSERT OR IGNORE INTO key_volumes (key_id, volume_id) VALUES {rows}",
            [v for volume_id in volume_ids for v in (key_id, volume_id)],
        )

    async def key_volumes(self, org_id: str) -> dict[str, list[str]]:
        rows = await self._all(
            "SELECT kv.key_id, v.slug FROM key_volumes kv JOIN volumes v ON v.id = kv.volume_id "
            "WHERE v.org_id = ? ORDER BY v.slug",
            [org_id],
        )
        bound: dict[str, list[str]] = {}
        for key_id, slug in rows:
            bound.setdefault(key_id, []).append(slug)
        return bound

    # connectors

    async def create_connector(self, connector: Connector) -> None:
        await self._insert("connectors", _connector_row(connector))

    async def get_connector(self, org_id: str, name: str) -> Connector | None:
        row = await self._one(
            f"SELECT {CONNECTOR_COLUMNS} FROM connectors c WHERE c.org_id = ? AND c.name = ?",
            [org_id, name],
        )
        return _connector(row) if row else None

    async def list_connectors(self, org_id: str | None = None) -> list[Connector]:
        rows = await self._all(
            f"SELECT {CONNECTOR_COLUMNS} FROM connectors c "
            "WHERE ? IS NULL OR c.org_id = ? ORDER BY c.org_id, c.name",
            [org_id, org_id],
        )
        return [_connector(row) for row in rows]

    async def replace_connectors(self, connectors: list[Connector]) -> None:
        async with self._write() as db:
            for connector in connectors:
                row = _connector_row(connector)
                await db.execute(
                    "UPDATE connectors SET env_names = ?, file_paths = ?, rotated_at = ?, "
                    "sealed = ? WHERE id = ? AND org_id = ?",
                    (
                        row["env_names"],
                        row["file_paths"],
                        row["rotated_at"],
                        row["sealed"],
                        connector.id,
                        connector.org_id,
                    ),
                )

    async def delete_connector(self, org_id: str, name: str) -> bool:
        async with self._write() as db:
            await db.execute(
                "DELETE FROM key_connectors WHERE connector_id IN "
                "(SELECT id FROM connectors WHERE org_id = ? AND name = ?)",
                (org_id, name),
            )
            async with db.execute(
                "DELETE FROM connectors WHERE org_id = ? AND name = ?", (org_id, name)
            ) as cursor:
                return cursor.rowcount == 1

    async def bind_connectors(self, key_id: str, connector_ids: list[str]) -> None:
        if not connector_ids:
            return
        rows = ", ".join("(?, ?)" for _ in connector_ids)
        await self._change(
            f"INSERT OR IGNORE INTO key_connectors (key_id, connector_id) VALUES {rows}",
            [v for connector_id in connector_ids for v in (key_id, connector_id)],
        )

    async def unbind_connectors(self, key_id: str, connector_ids: list[str]) -> None:
        marks = ", ".join("?" for _ in connector_ids)
        await self._change(
            f"DELETE FROM key_connectors WHERE key_id = ? AND connector_id IN ({marks})",
            [key_id, *connector_ids],
        )

    async def key_connectors(self, org_id: str) -> dict[str, list[str]]:
        rows = await self._all(
            "SELECT kc.key_id, c.name FROM key_connectors kc "
            "JOIN connectors c ON c.id = kc.connector_id WHERE c.org_id = ? ORDER BY c.name",
            [org_id],
        )
        bound: dict[str, list[str]] = {}
        for key_id, name in rows:
            bound.setdefault(key_id, []).append(name)
        return bound

    async def bound_connectors(self, key_id: str) -> list[Connector]:
        rows = await self._all(
            f"SELECT {CONNECTOR_COLUMNS} FROM key_connectors kc "
            "JOIN connectors c ON c.id = kc.connector_id "
            "JOIN api_keys k ON k.id = kc.key_id AND k.org_id = c.org_id "
            "WHERE kc.key_id = ? ORDER BY c.name",
            [key_id],
        )
        return [_connector(row) for row in rows]

    # executions

    async def insert_execution(self, execution: Execution) -> None:
        await self._insert("executions", _execution_row(execution))

    async def update_execution(self, execution: Execution) -> None:
        row = _execution_row(execution)
        trace_id = row.pop("trace_id")
        sets = ", ".join(f"{n} = ?" for n in row)
        await self._change(
            f"UPDATE executions SET {sets} WHERE trace_id = ?", (*row.values(), trace_id)
        )

    async def get_execution(self, org_id: str, trace_id: str) -> Execution | None:
        row = await self._one(
            f"SELECT {', '.join(EXECUTION_FIELDS)} FROM executions "
            "WHERE org_id = ? AND trace_id = ?",
            [org_id, trace_id],
        )
        if row is None:
            return None
        return _execution(row)

    async def delete_executions(self, org_id: str, ended_before: float) -> int:
        expired = (
            "SELECT trace_id FROM executions WHERE org_id = ? AND completed_at < ? "
            "AND webhook_delivery_status IS NOT 'pending' LIMIT ?"
        )
        deleted = 0
        while True:
            async with self._write() as db:
                batch = [
                    row[0]
                    for row in await db.execute_fetchall(
                        expired, (org_id, ended_before, DELETES_PER_TRANSACTION)
                    )
                ]
                marks = ", ".join("?" for _ in batch)
                if batch:
                    await db.execute(
                        f"DELETE FROM execution_events WHERE trace_id IN ({marks})", batch
                    )
                    await db.execute(f"DELETE FROM executions WHERE trace_id IN ({marks})", batch)
            deleted += len(batch)
            if len(batch) < DELETES_PER_TRANSACTION:
                return deleted

    async def fail_unfinished(self, error: str, when: float) -> list[tuple[str, str]]:
        rows = await self._all(
            "UPDATE executions SET status = 'failed', error = ?, exit_code = -1, "
            "stdout = COALESCE(stdout, ''), stderr = COALESCE(stderr, ''), completed_at = ?, "
            "duration_ms = CAST((? - created_at) * 1000 AS INTEGER), "
            "webhook_next_at = CASE WHEN webhook_delivery_status = 'pending' THEN ? END "
            "WHERE completed_at IS NULL RETURNING org_id, trace_id",
            (error, when, when, when),
            write=True,
        )
        return [(row[0], row[1]) for row in rows]

    async def due_webhooks(self, now: float, limit: int) -> list[Execution]:
        rows = await self._all(
            f"SELECT {', '.join(EXECUTION_FIELDS)} FROM executions "
            "WHERE webhook_delivery_status = 'pending' AND webhook_next_at <= ? "
            "ORDER BY webhook_next_at LIMIT ?",
            (now, limit),
        )
        return [_execution(row) for row in rows]

    async def next_webhook_at(self) -> float | None:
        row = await self._one(
            "SELECT MIN(webhook_next_at) FROM executions WHERE webhook_delivery_status = 'pending'",
            [],
        )
        return row[0] if row else None

    async def webhook_secret(self, org_id: str) -> str | None:
        row = await self._one("SELECT webhook_secret FROM orgs WHERE id = ?", [org_id])
        return row[0] if row else None

    async def set_webhook_secret(self, org_id: str, secret: str, replace: bool) -> None:
        condition = "" if replace else " AND webhook_secret IS NULL"
        await self._change(
            f"UPDATE orgs SET webhook_secret = ? WHERE id = ?{condition}", (secret, org_id)
        )

    # long-lived sandboxes

    async def insert_sandbox(self, sandbox: Sandbox) -> None:
        await self._insert("sandboxes", _sandbox_row(sandbox))

    async def update_sandbox(self, sandbox: Sandbox) -> None:
        row = _sandbox_row(sandbox)
        sandbox_id, org_id = row.pop("id"), row.pop("org_id")
        sets = ", ".join(f"{n} = ?" for n in row)
        await self._change(
            f"UPDATE sandboxes SET {sets} WHERE id = ? AND org_id = ?",
            (*row.values(), sandbox_id, org_id),
        )

    async def get_sandbox(self, org_id: str, sandbox_id: str) -> Sandbox | None:
        row = await self._one(
            f"SELECT {SANDBOX_COLUMNS} FROM sandboxes s WHERE s.org_id = ? AND s.id = ?",
            [org_id, sandbox_id],
        )
        return _sandbox(row) if row else None

    async def list_sandboxes(
        self,
        org_id: str,
        states: Iterable[SandboxState] = (),
        metadata: dict[str, str] | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[Sandbox], int]:
        where, args = ["s.org_id = ?"], [org_id]
        wanted = [state.value for state in states]
        if wanted:
            where.append(f"s.state IN ({', '.join('?' for _ in wanted)})")
            args += wanted
        for key, value in (metadata or {}).items():  # keys and values bound, never spliced
            where.append(
                "EXISTS (SELECT 1 FROM json_each(s.metadata) m WHERE m.key = ? AND m.value = ?)"
            )
            args += [key, value]
        condition = " AND ".join(where)
        total = await self._one(f"SELECT COUNT(*) FROM sandboxes s WHERE {condition}", args)
        rows = await self._all(
            f"SELECT {SANDBOX_COLUMNS} FROM sandboxes s WHERE {condition} "
            "ORDER BY s.created_at DESC, s.id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [_sandbox(row) for row in rows], int(total[0]) if total else 0

    async def count_live_sandboxes(self, org_id: str | None = None) -> int:
        condition, args = ("AND org_id = ?", [org_id]) if org_id is not None else ("", [])
        row = await self._one(
            f"SELECT COUNT(*) FROM sandboxes WHERE ended_at IS NULL {condition}", args
        )
        return int(row[0]) if row else 0

    async def request_sandbox_end(self, sandbox_id: str, when: float) -> Sandbox | None:
        rows = await self._all(
            "UPDATE sandboxes SET end_requested_at = ? WHERE id = ? AND ended_at IS NULL "
            "RETURNING org_id",
            (when, sandbox_id),
            write=True,
        )
        return await self.get_sandbox(rows[0][0], sandbox_id) if rows else None

    async def sandbox_ends_requested(self) -> list[str]:
        rows = await self._all(
            "SELECT id FROM sandboxes WHERE ended_at IS NULL AND end_requested_at IS NOT NULL",
            (),
        )
        return [row[0] for row in rows]

    async def all_sandboxes(self, live_only: bool) -> list[Sandbox]:
        condition = "WHERE s.ended_at IS NULL " if live_only else ""
        rows = await self._all(
            f"SELECT {SANDBOX_COLUMNS} FROM sandboxes s {condition}"
            "ORDER BY s.created_at DESC, s.id LIMIT 1000",
            (),
        )
        return [_sandbox(row) for row in rows]

    async def terminate_live_sandboxes(
        self, reason: str, message: str, when: float
    ) -> list[tuple[str, str]]:
        rows = await self._all(
            "UPDATE sandboxes SET state = ?, reason = ?, message = ?, ended_at = ? "
            "WHERE ended_at IS NULL RETURNING org_id, id",
            (SandboxState.TERMINATED.value, reason, message, when),
            write=True,
        )
        return [(row[0], row[1]) for row in rows]

    # execution events (the NDJSON stream, kept for reconnects)

    async def add_events(
        self, trace_id: str, events: list[tuple[int, str]], expires_at: float
    ) -> None:
        # Multi-row INSERTs: one statement (one round trip, one transaction) per chunk.
        for start in range(0, len(events), EVENTS_PER_INSERT):
            chunk = events[start : start + EVENTS_PER_INSERT]
            rows = ", ".join("(?, ?, ?, ?)" for _ in chunk)
            await self._change(
                "INSERT OR IGNORE INTO execution_events (trace_id, seq, event, expires_at) "
                f"VALUES {rows}",
                [v for seq, event in chunk for v in (trace_id, seq, event, expires_at)],
            )

    async def get_events(
        self, trace_id: str, after_seq: int, now: float, limit: int | None = None
    ) -> list[str]:
        rows = await self._all(
            "SELECT event FROM execution_events WHERE trace_id = ? AND seq > ? AND expires_at > ? "
            "ORDER BY seq LIMIT ?",
            (trace_id, after_seq, now, -1 if limit is None else limit),
        )
        return [row[0] for row in rows]

    async def get_output(self, trace_id: str, stream: Stream, offset: int, size: int) -> str:
        column = {"stdout": "stdout", "stderr": "stderr"}[stream]  # never text from outside
        row = await self._one(
            f"SELECT substr({column}, ?, ?) FROM executions WHERE trace_id = ?",
            (offset + 1, size, trace_id),
        )
        return str(row[0] or "") if row else ""

    async def purge_events(self, now: float) -> int:
        return await self._change("DELETE FROM execution_events WHERE expires_at <= ?", [now])


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """SQLite's refusals as core errors: 503, with Retry-After when it should pass."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        primary = _primary(exc)
        if primary in BUSY:
            raise Unavailable(
                "the database is busy (locked by another process); try again",
                retry_after=BUSY_RETRY_S,
            ) from exc
        if primary == sqlite3.SQLITE_FULL:
            raise NoSpace() from exc
        raise _unavailable(exc) from exc
    except sqlite3.DatabaseError as exc:  # damaged (SQLITE_CORRUPT, SQLITE_NOTADB), or worse
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise
        raise _unavailable(exc) from exc


def _unavailable(exc: sqlite3.DatabaseError) -> Unavailable:
    """SQLite's own words say what failed, never where (the error keeps it as its cause)."""
    damaged = _primary(exc) in DAMAGED
    return Unavailable(f"the database is {'damaged' if damaged else 'unavailable'} ({exc})")


def _reason(exc: BaseException) -> str:
    """Why the database could not be opened, in SQLite's or the system's words."""
    cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    damaged = isinstance(cause, sqlite3.DatabaseError) and _primary(cause) in DAMAGED
    hint = "; restore it from a backup" if damaged else ""
    return f"{cause}{hint}"


def _primary(exc: sqlite3.DatabaseError) -> int:
    """SQLite's primary result code of the error (0 when it carries none)."""
    return int(getattr(exc, "sqlite_errorcode", 0)) & 0xFF


def _profile(row: Any) -> Profile:
    values = dict(zip(PROFILE_FIELDS, row, strict=True))
    values["network"] = NetworkPolicy.from_json(values["network"])
    return Profile(**values)


def _volume(row: Any) -> Volume:
    values = dict(zip((f.name for f in dataclasses.fields(Volume)), row, strict=True))
    values["read_only"] = bool(values["read_only"])
    values["options"] = json.loads(values["options"])
    return Volume(**values)


def _connector(row: Any) -> Connector:
    values = dict(zip((f.name for f in dataclasses.fields(Connector)), row, strict=True))
    values["env_names"] = tuple(json.loads(values["env_names"]))
    values["file_paths"] = tuple(json.loads(values["file_paths"]))
    values["sealed"] = bytes(values["sealed"])
    return Connector(**values)


def _connector_row(connector: Connector) -> dict[str, Any]:
    row = dataclasses.asdict(connector)
    row["env_names"] = json.dumps(list(connector.env_names))
    row["file_paths"] = json.dumps(list(connector.file_paths))
    return row


def _execution(row: Any) -> Execution:
    values = dict(zip(EXECUTION_FIELDS, row, strict=True))
    values["metadata"] = json.loads(values["metadata"])
    values["connectors"] = json.loads(values["connectors"])
    values["status"] = ExecutionStatus(values["status"])
    values["delivery_mode"] = DeliveryMode(values["delivery_mode"])
    if values["webhook_delivery_status"] is not None:
        values["webhook_delivery_status"] = WebhookStatus(values["webhook_delivery_status"])
    return Execution(**values)


def _execution_row(execution: Execution) -> dict[str, Any]:
    row = dataclasses.asdict(execution)
    row["metadata"] = json.dumps(row["metadata"])
    row["connectors"] = json.dumps(row["connectors"])
    return row


def _sandbox(row: Any) -> Sandbox:
    values = dict(zip(SANDBOX_FIELDS, row, strict=True))
    values["state"] = SandboxState(values["state"])
    values["env"] = json.loads(values["env"])
    values["metadata"] = json.loads(values["metadata"])
    values["network"] = NetworkPolicy.from_json(values["network"])
    values["entrypoint"] = json.loads(values["entrypoint"])
    return Sandbox(**values)


def _sandbox_row(sandbox: Sandbox) -> dict[str, Any]:
    row = dataclasses.asdict(sandbox)
    row["env"] = json.dumps(sandbox.env)
    row["metadata"] = json.dumps(sandbox.metadata)
    row["network"] = sandbox.network.to_json()
    row["entrypoint"] = json.dumps(sandbox.entrypoint)
    return row
