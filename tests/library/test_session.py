"""The in-process API over a real core (SQLite, bubblewrap sandboxes, local storage): a
session runs code in the three modes, reaches its threads' files, and is held to every
limit and isolation rule an API key of the same organisation and profile is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from baponi_core import (
    Conflict,
    Embedded,
    ExecutionStatus,
    NotFound,
    OutputEvent,
    RateLimited,
    ResultEvent,
    Settings,
    StatusEvent,
    ValidationError,
)
from tests.harness import marker_processes, sleep_marker, unique, wait_until_async

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def baponi(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Embedded]:
    home = tmp_path_factory.mktemp("library-home")
    async with Embedded(settings=Settings.at(home, shutdown_grace_s=0)) as opened:
        yield opened


async def new_org(baponi: Embedded, max_concurrency: int = 4) -> str:
    name = unique("lib")
    await baponi.manage.create_org(name, max_concurrency=max_concurrency)
    return name


@pytest.mark.slow
async def test_the_three_outcomes(baponi: Embedded) -> None:
    session = baponi.session(await new_org(baponi))
    result = await session.execute("print(6 * 7)")
    assert (result.success, result.stdout, result.exit_code) == (True, "42\n", 0)

    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)"
    async with session.stream(code) as execution:
        events = [event async for event in execution.events()]
    assert isinstance(events[0], StatusEvent) and events[0].status is ExecutionStatus.RUNNING
    assert isinstance(events[-1], ResultEvent) and events[-1].result.stdout == "0\n1\n2\n"
    output = "".join(e.data for e in events if isinstance(e, OutputEvent))
    assert output == "0\n1\n2\n"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

    handle = await session.submit("import sys; print('late', file=sys.stderr); sys.exit(3)")
    result = await handle.result()
    assert (result.success, result.stderr, result.exit_code) == (False, "late\n", 3)
    assert handle.finished
    view = await handle.view()
    assert (view.status, view.exit_code, view.trace_id) == (
        ExecutionStatus.FAILED,
        3,
        result.trace_id,
    )
    with pytest.raises(Conflict, match="already ended"):
        await handle.cancel()


async def test_a_submitted_execution_is_cancelled(baponi: Embedded) -> None:
    session = baponi.session(await new_org(baponi))
    marker = sleep_marker(60)
    handle = await session.submit(f"sleep {marker}", language="bash")
    await wait_until_async(lambda: marker_processes(marker), 30, "the sandboxed sleep")
    await handle.cancel()
    result = await handle.result()
    assert (result.error, result.exit_code) == ("Cancelled by user", 137)
    assert not marker_processes(marker)
    assert (await session.get(handle.trace_id)).status is ExecutionStatus.CANCELLED


async def test_files_of_a_thread(baponi: Embedded) -> None:
    session = baponi.session(await new_org(baponi))
    thread = unique("files")
    await session.write_file(thread, "in/data.txt", b"hello")
    result = await session.execute(
        "cat in/data.txt; printf ' world' > out.txt", language="bash", thread_id=thread
    )
    assert result.stdout == "hello"
    assert await session.read_file(thread, "out.txt") == b" world"
    listed = {entry.path: entry for entry in await session.list_files(thread)}
    assert listed["in"].is_directory and listed["in/data.txt"].size == 5
    with pytest.raises(ValidationError, match="larger than max_bytes"):
        await session.read_file(thread, "in/data.txt", max_bytes=4)
    await session.delete_file(thread, "in")
    with pytest.raises(NotFound):
        await session.read_file(thread, "in/data.txt")
    with pytest.raises(ValidationError):  # the Files API's own path rules
        await session.write_file(thread, "../escape", b"x")


async def test_the_organisations_concurrency_limit_holds(baponi: Embedded) -> None:
    session = baponi.session(await new_org(baponi, max_concurrency=1))
    marker = sleep_marker(60)
    running = await session.submit(f"sleep {marker}", language="bash")
    await wait_until_async(lambda: marker_processes(marker), 30, "the sandboxed sleep")
    with pytest.raises(RateLimited, match=r"concurrent execution limit reached \(1/1\)"):
        await session.execute("print(1)")
    with pytest.raises(
        RateLimited, match=r"concurrent execution limit reached \(1/1\)"
    ):  # another session of the org too
        await baponi.session(session.org).execute("print(1)")
    await running.cancel()
    await running.wait()
    assert (await session.execute("print(1)")).stdout == "1\n"


async def test_a_thread_runs_one_execution_at_a_time(baponi: Embedded) -> None:
    session = baponi.session(await new_org(baponi))
    marker, thread = sleep_marker(60), unique("busy")
    running = await session.submit(f"sleep {marker}", language="bash", thread_id=thread)
    await wait_until_async(lambda: marker_processes(marker), 30, "the sandboxed sleep")
    with pytest.raises(Conflict):
        await session.execute("print(1)", thread_id=thread)
    await running.cancel()


@pytest.mark.slow
async def test_the_profiles_limits_hold_and_changes_apply_at_once(baponi: Embedded) -> None:
    org = await new_org(baponi)
    await baponi.manage.save_profile(org, "small", max_timeout=5, memory_mb=64)
    session = baponi.session(org, "small")
    with pytest.raises(RateLimited, match="plan limit of 5s"):
        await session.execute("print(1)", timeout=10)
    hog = "x = bytearray(256 << 20); print('allocated')"
    result = await session.execute(hog, timeout=5)
    assert (result.success, result.error) == (False, "memory_limit_exceeded")
    await baponi.manage.save_profile(org, "small", max_timeout=20, memory_mb=1024)
    assert (await session.execute("print(1)", timeout=10)).success  # read at each call
    assert (await session.execute(hog, timeout=5)).stdout == "allocated\n"


async def test_another_organisations_threads_and_executions_are_out_of_reach(
    baponi: Embedded,
) -> None:
    mine, theirs = baponi.session(await new_org(baponi)), baponi.session(await new_org(baponi))
    thread = unique("private")
    await theirs.write_file(thread, "secret.txt", b"theirs")
    done = await theirs.execute("cat secret.txt", language="bash", thread_id=thread)
    assert done.stdout == "theirs"
    for reach in (
        mine.read_file(thread, "secret.txt"),
        mine.list_files(thread),
        mine.get(done.trace_id),
        mine.cancel(done.trace_id),
    ):
        with pytest.raises(NotFound):
            await reach
    same_name = await mine.execute("ls -A", language="bash", thread_id=thread)
    assert (same_name.success, same_name.stdout) == (True, "")  # a home of its own


async def test_only_the_chosen_volumes_are_mounted(baponi: Embedded) -> None:
    org = await new_org(baponi)
    await baponi.manage.create_volume(org, "shared")
    await baponi.manage.create_volume(org, "other", read_only=True)
    await baponi.session(org).write_file("shared", "note.txt", b"in the volume", source="volume")
    chosen = baponi.session(org, volumes=["shared"])
    seen = await chosen.execute("ls /data; cat /data/shared/note.txt", language="bash")
    assert seen.stdout == "shared\nin the volume"
    with pytest.raises(ValidationError, match="sub_paths"):
        await chosen.execute("true", language="bash", sub_paths=["/data/other"])
    with pytest.raises(NotFound, match="volume missing not found"):
        await baponi.session(org, volumes=["missing"]).execute("true", language="bash")
    everything = await baponi.session(org).execute("ls /data", language="bash")
    assert everything.stdout == "other\nshared\n"


async def test_requests_are_validated_with_the_apis_messages(baponi: Embedded) -> None:
    session = baponi.session(await new_org(baponi))
    with pytest.raises(ValidationError, match="unsupported language 'cobol'"):
        await session.execute("x", language="cobol")
    with pytest.raises(ValidationError, match="code must not be empty"):
        await session.execute("")
    with pytest.raises(NotFound, match="organisation nowhere not found"):
        await baponi.session("nowhere").execute("print(1)")
    with pytest.raises(NotFound, match="profile absent not found"):
        await baponi.session(session.org, "absent").execute("print(1)")


async def test_management_is_the_clis(baponi: Embedded) -> None:
    org = await new_org(baponi)
    assert org in {o.name for o in await baponi.manage.list_orgs()}
    key, secret = await baponi.manage.create_key(org, name="ci")
    assert secret.startswith("sk-") and key.prefix == secret[:14]
    assert [k.id for k in await baponi.manage.list_keys(org)] == [key.id]
    await baponi.manage.revoke_key(org, key.id)
    assert (await baponi.manage.list_keys(org))[0].revoked_at is not None
    with pytest.raises(Conflict):
        await baponi.manage.create_org(org)
    with pytest.raises(ValidationError, match="cpus must be between"):
        await baponi.manage.save_profile(org, "huge", cpus=1000)
    assert {p.name for p in await baponi.manage.list_profiles(org)} == {"default"}
    assert (await baponi.manage.set_max_concurrency(org, 2)).max_concurrency == 2


async def test_nothing_works_outside_the_block(tmp_path: Path) -> None:
    baponi = Embedded(tmp_path)
    with pytest.raises(RuntimeError, match="not open"):
        await baponi.session().execute("print(1)")
    async with baponi:
        pass
    with pytest.raises(RuntimeError, match="not open"):
        await baponi.manage.list_orgs()
    with pytest.raises(RuntimeError, match="opened once"):
        async with baponi:
            pass
