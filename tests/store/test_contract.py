"""The Store contract: what the services rely on, run against every implementation in
tests/store/implementations.py (the ``store`` fixture, fresh and open, and the
``implementation`` it was made by, for a second store on the same data)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from baponi_core._ids import hash_key
from baponi_core._net.policy import NetworkPolicy
from baponi_core._records import (
    DEFAULT_RETENTION_DAYS,
    ApiKey,
    Execution,
    Profile,
    Sandbox,
    SandboxState,
)
from baponi_core._services.admin import Admin
from baponi_core._store import Store
from tests.store.implementations import Implementation

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


# -- executions -----------------------------------------------------------------------------


async def test_execution_round_trip(store: Store) -> None:
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


async def test_recorded_output_is_read_in_pieces(store: Store) -> None:
    org = await store.create_org("acme", 4)
    record = dataclasses.replace(execution(org.id), stdout="é✓" * 5 + "end", stderr=None)
    await store.insert_execution(record)
    pieces = [await store.get_output(record.trace_id, "stdout", at, 4) for at in (0, 4, 8, 12)]
    assert pieces == ["é✓é✓", "é✓é✓", "é✓en", "d"]  # characters, not bytes
    assert await store.get_output(record.trace_id, "stdout", 13, 4) == ""  # past the end
    assert await store.get_output(record.trace_id, "stderr", 0, 4) == ""  # none recorded
    assert await store.get_output("trc_none", "stdout", 0, 4) == ""  # no such record


async def test_execution_of_another_org_is_none(store: Store) -> None:
    mine = await store.create_org("mine", 1)
    theirs = await store.create_org("theirs", 1)
    await store.insert_execution(execution(mine.id, "trc_mine"))
    assert await store.get_execution(theirs.id, "trc_mine") is None
    assert await store.get_execution(mine.id, "trc_other") is None
    assert await store.get_execution(mine.id, "trc_mine") is not None


async def test_unfinished_executions_fail_and_their_webhooks_become_due(store: Store) -> None:
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


async def test_events_are_kept_until_they_expire(store: Store) -> None:
    now = time.time()
    events = [(seq, f'{{"seq":{seq}}}') for seq in range(1, 1203)]  # more than one insert
    await store.add_events("trc_a", events, now + 10)
    await store.add_events("trc_b", events[:2], now - 1)
    stored = await store.get_events("trc_a", 1200, now)
    assert stored == ['{"seq":1201}', '{"seq":1202}']
    assert len(await store.get_events("trc_a", 0, now)) == 1202
    paged = await store.get_events("trc_a", 10, now, limit=3)  # how a lagging reader reads
    assert paged == ['{"seq":11}', '{"seq":12}', '{"seq":13}']
    assert await store.get_events("trc_b", 0, now) == []  # expired: no longer served
    assert await store.purge_events(now) == 2
    assert await store.purge_events(now + 11) == 1202


async def test_executions_past_a_cutoff_are_deleted_with_their_events(store: Store) -> None:
    """Only ended ones, ended before the cutoff, of that organisation, without a pending
    webhook; in batches (more than one transaction's worth)."""
    org, other = await store.create_org("acme", 4), await store.create_org("other", 4)
    now = time.time()

    def ended(trace_id: str, when: float, owner: str = org.id, **changes: Any) -> Execution:
        return dataclasses.replace(
            execution(owner, trace_id), created_at=when - 1, completed_at=when, **changes
        )

    old = [ended(f"trc_old{i}", now - 100 - i) for i in range(1203)]
    kept = [
        ended("trc_recent", now - 10),
        dataclasses.replace(execution(org.id, "trc_running"), created_at=now - 1000),
        ended(
            "trc_hook",
            now - 100,
            webhook_url="https://example.com/h",
            webhook_delivery_status="pending",
        ),
        ended(
            "trc_delivered",
            now - 100,
            webhook_url="https://e.com",
            webhook_delivery_status="delivered",
        ),
        ended("trc_theirs", now - 100, other.id),
    ]
    for record in [*old, *kept]:
        await store.insert_execution(record)
    for record in (old[0], kept[0], kept[1]):
        await store.add_events(record.trace_id, [(1, "{}")], now + 60)

    assert await store.delete_executions(org.id, now - 50) == len(old) + 1  # trc_delivered
    for record in old:
        assert await store.get_execution(org.id, record.trace_id) is None
    assert await store.get_events(old[0].trace_id, 0, now) == []
    for record in kept:
        if record.trace_id != "trc_delivered":
            assert await store.get_execution(record.org_id, record.trace_id) is not None
    assert await store.get_events("trc_recent", 0, now) == ["{}"]
    assert await store.get_events("trc_running", 0, now) == ["{}"]
    assert await store.delete_executions(org.id, now - 50) == 0


async def test_org_retention_round_trips(store: Store) -> None:
    org = await store.create_org("acme", 4)
    assert org.retention_days == DEFAULT_RETENTION_DAYS
    assert await store.get_org("acme") == org
    forever = await store.create_org("forever", 2, None)
    assert (await store.get_org("forever")) == forever and forever.retention_days is None
    changed = dataclasses.replace(org, retention_days=1, max_concurrency=7)
    await store.update_org(changed)
    assert await store.get_org("acme") == changed
    assert {o.name: o.retention_days for o in await store.list_orgs()} == {
        "acme": 1,
        "forever": None,
    }
    await store.save_profile(Profile(id="prf_1", org_id=org.id, name="default"))
    key = ApiKey("key_1", org.id, "prf_1", "k", "sk-x", now := time.time())
    await store.create_key(key, hash_key("sk-x-secret"))
    principal = await store.find_key(hash_key("sk-x-secret"))
    assert principal is not None and principal.org == changed and principal.key.created_at == now


async def test_a_profiles_network_policy_round_trips(store: Store) -> None:
    org = await store.create_org("netted", 2, None)
    plain = Profile(id="prf_plain", org_id=org.id, name="plain")
    policy = NetworkPolicy.of("allowlist", ["pypi.org", "*.pythonhosted.org:443"], ["[::1]"])
    netted = dataclasses.replace(plain, id="prf_net", name="net", network=policy)
    await store.save_profile(plain)
    await store.save_profile(netted)
    assert await store.get_profile(org.id, "plain") == plain  # none, the default
    assert await store.get_profile(org.id, "net") == netted
    opened = dataclasses.replace(netted, network=NetworkPolicy.of("open", deny=["a.org"]))
    await store.save_profile(opened)
    assert [p.network for p in await store.list_profiles(org.id)] == [opened.network, plain.network]
    key = ApiKey("key_net", org.id, "prf_net", "k", "sk-n", time.time())
    await store.create_key(key, hash_key("sk-n-secret"))
    principal = await store.find_key(hash_key("sk-n-secret"))
    assert principal is not None and principal.profile.network == opened.network


# -- keys -----------------------------------------------------------------------------------


async def test_keys_found_by_hash_and_revoked(store: Store) -> None:
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


# -- volumes and storage connections --------------------------------------------------------


async def test_volumes_round_trip_and_bind_to_keys(
    store: Store, implementation: Implementation
) -> None:
    admin = Admin(store)
    acme = await admin.create_org("acme")
    other = await admin.create_org("other")
    reports = await admin.create_volume("acme", "reports")
    archive = await admin.create_volume("acme", "archive", read_only=True)
    lake = await admin.create_volume(
        "acme", "lake", url="s3://bucket/pre", options={"key": "AK", "secret": "SK"}
    )
    await admin.create_volume("other", "reports")  # the same slug in another organisation

    assert await store.get_volume(acme.id, "lake") == lake
    assert await store.get_volume(acme.id, "archive") == archive and archive.read_only
    assert await store.get_volume(other.id, "lake") is None  # scoped to the organisation
    assert [v.slug for v in await store.list_volumes(acme.id)] == ["archive", "lake", "reports"]
    assert lake.options == {"key": "AK", "secret": "SK"} and lake.is_connection
    assert "SK" not in repr(lake)  # credentials never reach a log line

    key, secret = await admin.create_key("acme", "k", volumes=["reports", "archive"])
    await store.bind_volumes(key.id, [lake.id, reports.id])  # binding twice is harmless
    principal = await store.find_key(hash_key(secret))
    assert principal is not None
    assert [v.slug for v in principal.volumes] == ["archive", "lake", "reports"]
    assert principal.volumes[1].options == {"key": "AK", "secret": "SK"}
    assert await store.key_volumes(acme.id) == {key.id: ["archive", "lake", "reports"]}

    assert await store.delete_volume(acme.id, "lake") is True
    assert await store.delete_volume(acme.id, "lake") is False
    assert await store.delete_volume(other.id, "archive") is False  # not theirs
    principal = await store.find_key(hash_key(secret))
    assert principal is not None and [v.slug for v in principal.volumes] == ["archive", "reports"]
    with pytest.raises(implementation.duplicate):  # one slug per organisation
        await store.create_volume(dataclasses.replace(reports, id="vol_dup"))


async def test_key_without_volumes_has_none(store: Store) -> None:
    admin = Admin(store)
    await admin.ensure_default_org()
    await admin.create_volume("default", "unbound")
    _, secret = await admin.create_key()
    principal = await store.find_key(hash_key(secret))
    assert principal is not None and principal.volumes == ()


# -- one database, several stores -----------------------------------------------------------


async def test_reopen_keeps_data(implementation: Implementation, tmp_path: Path) -> None:
    first = implementation.make(tmp_path)
    await first.open()
    org = await first.create_org("kept", 2)
    await first.insert_execution(execution(org.id))
    await first.close()
    second = implementation.make(tmp_path)
    await second.open()
    try:
        assert await second.get_org("kept") == org
        assert await second.get_execution(org.id, "trc_test1") is not None
    finally:
        await second.close()


async def test_two_stores_on_one_database_both_write(
    implementation: Implementation, tmp_path: Path
) -> None:
    """The server and the operator CLI share the database: neither may be refused for the
    other's writes (SQLite: 'database is locked')."""
    server, operator = implementation.make(tmp_path), implementation.make(tmp_path)
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


async def test_profiles_are_found_by_the_runtime_they_name(store: Store) -> None:
    acme = await store.create_org("acme", 4)
    beta = await store.create_org("beta", 4)
    await store.save_profile(Profile(id="prf_a", org_id=acme.id, name="small", runtime="slim"))
    await store.save_profile(Profile(id="prf_b", org_id=beta.id, name="big"))
    await store.save_profile(Profile(id="prf_c", org_id=beta.id, name="tiny", runtime="slim"))
    assert await store.profiles_by_runtime() == {
        "default": ["beta/big"],
        "slim": ["acme/small", "beta/tiny"],
    }
    stored = await store.get_profile(acme.id, "small")
    assert stored is not None and stored.runtime == "slim"
    await store.save_profile(dataclasses.replace(stored, runtime="default"))
    assert (await store.profiles_by_runtime())["default"] == ["acme/small", "beta/big"]


# -- long-lived sandboxes -------------------------------------------------------------------


def sandbox(org_id: str, sandbox_id: str, **changes: Any) -> Sandbox:
    now = time.time()
    record = Sandbox(
        id=sandbox_id,
        org_id=org_id,
        key_id="key_1",
        runtime="default",
        created_at=now,
        expires_at=now + 600,
        cpus=0.5,
        memory_mb=512,
        pids=64,
        env={"TOKEN": "v ✓"},
        metadata={"team": "a", "run": "1"},
        network=NetworkPolicy.of("allowlist", ["*.example.com:443"], []),
    )
    return dataclasses.replace(record, **changes)


async def test_sandbox_round_trip(store: Store) -> None:
    org = await store.create_org("acme", 4)
    record = sandbox(org.id, "sbx_1")
    await store.insert_sandbox(record)
    assert await store.get_sandbox(org.id, "sbx_1") == record

    paused = dataclasses.replace(
        record, state=SandboxState.PAUSED, reason="PAUSED", expires_at=record.expires_at + 60
    )
    await store.update_sandbox(paused)
    found = await store.get_sandbox(org.id, "sbx_1")
    assert found == paused and found is not None and found.state is SandboxState.PAUSED


async def test_sandbox_of_another_org_is_not_found_nor_changed(store: Store) -> None:
    acme = await store.create_org("acme", 4)
    other = await store.create_org("other", 4)
    record = sandbox(acme.id, "sbx_1")
    await store.insert_sandbox(record)
    assert await store.get_sandbox(other.id, "sbx_1") is None
    await store.update_sandbox(dataclasses.replace(record, org_id=other.id, state="Failed"))
    assert await store.get_sandbox(acme.id, "sbx_1") == record
    assert await store.list_sandboxes(other.id) == ([], 0)


async def test_sandboxes_listed_by_state_and_metadata_page_by_page(store: Store) -> None:
    org = await store.create_org("acme", 4)
    base = time.time()
    for i in range(5):
        await store.insert_sandbox(
            sandbox(
                org.id,
                f"sbx_{i}",
                created_at=base + i,
                state=SandboxState.PAUSED if i % 2 else SandboxState.RUNNING,
                metadata={"team": "a" if i < 3 else "b", "n": str(i)},
            )
        )
    page, total = await store.list_sandboxes(org.id, limit=2)
    assert [s.id for s in page] == ["sbx_4", "sbx_3"] and total == 5  # newest first
    page, total = await store.list_sandboxes(org.id, offset=4, limit=2)
    assert [s.id for s in page] == ["sbx_0"] and total == 5

    paused, total = await store.list_sandboxes(org.id, states=[SandboxState.PAUSED])
    assert [s.id for s in paused] == ["sbx_3", "sbx_1"] and total == 2
    either, _ = await store.list_sandboxes(
        org.id, states=[SandboxState.PAUSED, SandboxState.RUNNING]
    )
    assert len(either) == 5

    team_a, total = await store.list_sandboxes(org.id, metadata={"team": "a"})
    assert [s.id for s in team_a] == ["sbx_2", "sbx_1", "sbx_0"] and total == 3
    both, _ = await store.list_sandboxes(
        org.id, states=[SandboxState.RUNNING], metadata={"team": "a", "n": "2"}
    )
    assert [s.id for s in both] == ["sbx_2"]
    # A key or value is matched as it is, never read as a JSON path or SQL.
    for hostile in ({"team' OR 1=1 --": "a"}, {'$."team"': "a"}, {"team": "a' OR '1'='1"}):
        assert await store.list_sandboxes(org.id, metadata=hostile) == ([], 0)


async def test_live_sandboxes_counted_and_terminated_at_a_restart(
    store: Store, implementation: Implementation, tmp_path: Path
) -> None:
    acme = await store.create_org("acme", 4)
    other = await store.create_org("other", 4)
    await store.insert_sandbox(sandbox(acme.id, "sbx_run", state=SandboxState.RUNNING))
    await store.insert_sandbox(sandbox(acme.id, "sbx_paused", state=SandboxState.PAUSED))
    await store.insert_sandbox(sandbox(other.id, "sbx_other", state=SandboxState.PENDING))
    ended = sandbox(acme.id, "sbx_done", state=SandboxState.TERMINATED, reason="DELETED")
    await store.insert_sandbox(dataclasses.replace(ended, ended_at=ended.created_at + 1))
    assert await store.count_live_sandboxes(acme.id) == 2
    assert await store.count_live_sandboxes(other.id) == 1
    assert await store.count_live_sandboxes() == 3
    await store.close()

    again = implementation.make(tmp_path)  # the same data, as a restarted server sees it
    await again.open()
    try:
        when = time.time()
        stranded = await again.terminate_live_sandboxes(
            "SERVER_STOPPED", "the server stopped", when
        )
        assert sorted(stranded) == sorted(
            [(acme.id, "sbx_run"), (acme.id, "sbx_paused"), (other.id, "sbx_other")]
        )
        for org_id, sandbox_id in stranded:
            found = await again.get_sandbox(org_id, sandbox_id)
            assert found is not None and found.state is SandboxState.TERMINATED
            assert found.reason == "SERVER_STOPPED" and found.ended_at == when
        done = await again.get_sandbox(acme.id, "sbx_done")
        assert done is not None and done.reason == "DELETED"  # an ended one is left as it was
        assert await again.count_live_sandboxes() == 0
        assert await again.terminate_live_sandboxes("SERVER_STOPPED", "again", when) == []
    finally:
        await again.close()
