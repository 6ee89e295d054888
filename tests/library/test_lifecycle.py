"""Opening and closing an embedded core: what it starts it stops, leaving no sandbox,
task, thread, file descriptor or mount behind, after an exception in the block too; two
cores on two homes in one process; a second core on a home already open refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from baponi_core import Embedded, ExecutionStatus, HomeInUse, Session, Settings
from baponi_core._sandbox.pool import DEFAULT_SPEC, PoolSizes
from tests.harness import marker_processes, sleep_marker, wait_until_async

pytestmark = pytest.mark.anyio

# anyio's pool of worker threads belongs to the event loop, not to the core: idle
# workers end on their own after 10 s (anyio's MAX_IDLE_TIME), so they are not counted.
ANYIO_WORKER = "AnyIO worker thread"


class Boom(Exception):
    pass


@dataclass(frozen=True)
class Snapshot:
    """What of this process a core could leave behind."""

    fds: frozenset[str]
    threads: frozenset[int]
    tasks: frozenset[asyncio.Task[object]]
    children: frozenset[str]
    mounts: int  # below /run/baponi, in this thread's mount namespace

    @classmethod
    def take(cls) -> Snapshot:
        children = set()
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                children |= set((task / "children").read_text().split())
        return cls(
            fds=frozenset(os.listdir("/proc/self/fd")),
            threads=frozenset(
                t.ident for t in threading.enumerate() if not t.name.startswith(ANYIO_WORKER)
            ),
            tasks=frozenset(asyncio.all_tasks()),
            children=frozenset(children),
            mounts=sum(
                " /run/baponi/" in line
                for line in Path("/proc/thread-self/mountinfo").read_text().splitlines()
            ),
        )


def new_since(before: Snapshot) -> dict[str, object]:
    """What the process holds now that it did not at ``before`` (what ended meanwhile is
    not the core's doing)."""
    now = Snapshot.take()
    new: dict[str, object] = {
        "fds": sorted(f"{fd} {_target(fd)}" for fd in now.fds - before.fds),
        "threads": [
            t.name for t in threading.enumerate() if t.ident in now.threads - before.threads
        ],
        "tasks": now.tasks - before.tasks,
        "children": sorted(f"{pid} {_command(pid)}" for pid in now.children - before.children),
        "mounts": max(now.mounts - before.mounts, 0),
    }
    return {what: held for what, held in new.items() if held}


def _target(fd: str) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return "(closed)"


def _command(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode()
    return "(ended)"


async def settled(before: Snapshot) -> None:
    """Wait until the process holds nothing new since ``before`` (a closed descriptor, a
    thread ending or a reaped child show a moment after the close returned), else fail
    with what is left."""
    await wait_until_async(lambda: not new_since(before), 10, lambda: new_since(before))


async def use(baponi: Embedded, thread: str) -> None:
    """A bit of everything: each mode, a thread's files, a streamed run left unread."""
    session = baponi.session()
    await session.write_file(thread, "in.txt", b"data")
    assert (await session.execute("cat in.txt", language="bash", thread_id=thread)).success
    async with session.stream("print('streamed')") as execution:
        assert [e async for e in execution.events()][-1].type == "result"
    async with session.stream("print('not read')"):
        pass
    await (await session.submit("print('submitted')")).wait()


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["0", DEFAULT_SPEC], ids=["cold", "pooled"])
async def test_nothing_is_left_behind(tmp_path: Path, pool: str) -> None:
    async with Embedded(tmp_path / "warm-up") as warm:  # imports, the agent's build
        await warm.session().execute("print(1)")
    before = Snapshot.take()
    settings = Settings.at(tmp_path / "home", pool=PoolSizes.parse(pool))
    async with Embedded(settings=settings) as baponi:
        await use(baponi, "lifecycle")
        assert new_since(before)  # the check sees what a core holds
    await settled(before)


@pytest.mark.slow
async def test_an_exception_in_the_block_stops_what_runs_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    async with Embedded(tmp_path / "warm-up") as warm:
        await warm.session().execute("print(1)")
    before = Snapshot.take()
    marker = sleep_marker(20)
    # A grace long enough for the sleep to finish: a normal exit would wait for it.
    settings = Settings.at(tmp_path / "home", shutdown_grace_s=120)
    with pytest.raises(Boom):
        async with Embedded(settings=settings) as baponi:
            session = baponi.session()
            running = await session.submit(f"sleep {marker}", language="bash")
            await wait_until_async(lambda: marker_processes(marker), 30, "the sandboxed sleep")
            raise Boom
    assert not marker_processes(marker)
    await settled(before)
    async with Embedded(settings=settings) as again:  # the home is free, the record final
        record = await again.session().get(running.trace_id)
    assert (record.status, record.error) == (ExecutionStatus.FAILED, "server_stopped")


@pytest.mark.slow
async def test_a_normal_exit_lets_running_executions_finish(tmp_path: Path) -> None:
    settings = Settings.at(tmp_path, shutdown_grace_s=120)
    async with Embedded(settings=settings) as baponi:
        running = await baponi.session().submit("import time; time.sleep(1); print('done')")
    assert running.finished
    assert (await running.result()).stdout == "done\n"


@pytest.mark.slow
async def test_two_cores_on_two_homes_in_one_process(tmp_path: Path) -> None:
    first = Embedded(settings=Settings.at(tmp_path / "one", shutdown_grace_s=0))
    second = Embedded(settings=Settings.at(tmp_path / "two", shutdown_grace_s=0))
    async with first:
        async with second:
            one, two = first.session(), second.session()
            await one.write_file("same", "who", b"one")
            await two.write_file("same", "who", b"two")
            seen: dict[str, str] = {}

            async def run(name: str, session: Session) -> None:
                for turn in range(3):
                    result = await session.execute("cat who", language="bash", thread_id="same")
                    seen[f"{name}-{turn}"] = result.stdout

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run, "one", one)
                tasks.start_soon(run, "two", two)
            assert seen == {f"{n}-{i}": n for n in ("one", "two") for i in range(3)}
        # The first still runs sandboxes and reaches its files once the second has closed.
        result = await one.execute("cat who; echo more >> who", language="bash", thread_id="same")
        assert result.stdout == "one"
        assert await one.read_file("same", "who") == b"onemore\n"


@pytest.mark.slow
async def test_a_second_core_on_the_same_home_is_refused(tmp_path: Path) -> None:
    async with Embedded(tmp_path) as baponi:
        before = Snapshot.take()
        with pytest.raises(HomeInUse, match="already open in this process: one core per home"):
            async with Embedded(tmp_path):
                pass
        await settled(before)  # the refused one holds nothing
        assert (await baponi.session().execute("print('still serving')")).success
    async with Embedded(tmp_path) as reopened:  # free again once the first has closed
        assert (await reopened.session().execute("print(1)")).stdout == "1\n"


@pytest.mark.slow
async def test_a_cancelled_block_leaves_nothing(tmp_path: Path) -> None:
    async with Embedded(tmp_path / "warm-up") as warm:
        await warm.session().execute("print(1)")
    before = Snapshot.take()
    marker = sleep_marker(20)
    settings = Settings.at(tmp_path / "home", shutdown_grace_s=120)
    with anyio.CancelScope() as scope:
        async with Embedded(settings=settings) as baponi:
            await baponi.session().submit(f"sleep {marker}", language="bash")
            await wait_until_async(lambda: marker_processes(marker), 30, "the sandboxed sleep")
            scope.cancel()
            await anyio.sleep(30)  # cancelled here
    assert scope.cancelled_caught
    assert not marker_processes(marker)
    await settled(before)
