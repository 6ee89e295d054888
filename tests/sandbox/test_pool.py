"""The pool against a sandbox runtime of this process: what it keeps, hands out once,
discards when old, and ends when it closes; how its size is written; which requests a
waiting interpreter may serve."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import BlockingPortal

from baponi_core._sandbox import Limits, Shape, warm
from baponi_core._sandbox.mountns import PRIVATE_BASE
from baponi_core._sandbox.pool import Pool, PoolSizes
from baponi_core._sandbox.runtime import SandboxRuntime
from tests.harness import runtime_on_a_thread, wait_until_async

BASE_ENV = warm.base_env(Shape())  # what a sandbox of the host runtime starts with

SHAPE = Shape()
FILL_S = 30


Opened = tuple[BlockingPortal, SandboxRuntime]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Opened]:
    root = tmp_path_factory.mktemp("pool-runtime")
    (root / "shared").mkdir()
    with runtime_on_a_thread(root / "run", [root / "shared"]) as opened:
        yield opened


async def filled(pool: Pool, sizes: dict[str, int]) -> None:
    pool.want(SHAPE)
    await wait_until_async(
        lambda: all(pool.count(SHAPE, lang) >= n for lang, n in sizes.items()),
        FILL_S,
        f"the pool to hold {sizes}",
    )


def cgroup_dirs(sandbox_id: str) -> list[Path]:
    root, server = Path("/sys/fs/cgroup"), f"srv-{os.getpid()}-*"  # one per runtime
    return [*root.glob(f"*/baponi/{server}/{sandbox_id}"), *root.glob(f"**/{server}/{sandbox_id}")]


def cpu_share(sandbox_id: str) -> str:
    """Its share of the CPU (cgroup v1 ``cpu.shares``; v2 ``cpu.weight`` as shares)."""
    for directory in cgroup_dirs(sandbox_id):
        if (directory / "cpu.shares").exists():
            return (directory / "cpu.shares").read_text().strip()
        if (directory / "cpu.weight").exists():
            return {"1": "2", "100": "1024"}[(directory / "cpu.weight").read_text().strip()]
    raise AssertionError(f"no cpu cgroup for {sandbox_id}")


def test_close_ends_every_kept_sandbox(runtime: Opened) -> None:
    portal, sandboxes = runtime

    async def scenario() -> tuple[list[str], list[int], list[str]]:
        pool = Pool(sandboxes, PoolSizes.parse("python=2,bash=1"))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pool.run)
            await filled(pool, {"python": 2, "bash": 1})
            kept = pool.kept()
            ids = [p.sandbox.id for p in kept]
            pids = [pid for p in kept for pid in p.members or ()]
            slots_before = sorted(p.name for p in PRIVATE_BASE.glob("runtime-*/slots/sbx-*"))
            await pool.close()
            tasks.cancel_scope.cancel()
        assert set(ids) <= set(slots_before)
        left = sorted(p.name for p in PRIVATE_BASE.glob("runtime-*/slots/sbx-*"))
        return ids, pids, left

    ids, pids, slots_left = portal.call(scenario)
    assert len(ids) == 3
    assert len(pids) == 2 * 3 + 2, pids  # bwrap and the init each, and two interpreters
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    assert [d for i in ids for d in cgroup_dirs(i)] == []
    assert not set(ids) & set(slots_left)


def test_each_is_handed_out_once(runtime: Opened) -> None:
    portal, sandboxes = runtime

    async def scenario() -> None:
        pool = Pool(sandboxes, PoolSizes.parse("python=1"))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pool.run)
            await filled(pool, {"python": 1})
            assert cpu_share(pool.kept()[0].sandbox.id) == "2"  # prepared in the background
            taken = pool.take(SHAPE, "python")
            assert taken is not None and taken.waiting is not None
            assert cpu_share(taken.sandbox.id) == "1024"  # handed out: as any sandbox
            assert pool.take(SHAPE, "python") is None  # not until a new one is made
            assert pool.take(SHAPE, "bash") is None  # none of it kept
            assert pool.take(Shape(limits=Limits(pids=99)), "python") is None
            await filled(pool, {"python": 1})
            again = pool.take(SHAPE, "python")
            assert again is not None and again.sandbox is not taken.sandbox
            for prepared in (taken, again):
                await prepared.sandbox.close()
            await pool.close()
            tasks.cancel_scope.cancel()

    portal.call(scenario)


def test_old_ones_are_discarded(runtime: Opened) -> None:
    portal, sandboxes = runtime

    async def scenario() -> int:
        pool = Pool(sandboxes, PoolSizes.parse("bash=1"), max_age_s=0.3)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pool.run)
            await filled(pool, {"bash": 1})
            first = pool.kept()[0]
            await anyio.sleep(0.5)
            taken = pool.take(SHAPE, "bash")
            assert taken is None or taken is not first  # the old one never
            if taken is not None:
                await taken.sandbox.close()
            await pool.close()
            tasks.cancel_scope.cancel()
        return pool.discarded

    assert portal.call(scenario) >= 1


@pytest.mark.parametrize(
    ("spec", "sizes"),
    [
        ("python=2,node=1,bash=1", {"python": 2, "node": 1, "bash": 1}),
        ("bash=3", {"python": 0, "node": 0, "bash": 3}),
        (" node=1 , python=0 ", {"python": 0, "node": 1, "bash": 0}),
        ("4", {"python": 2, "node": 1, "bash": 1}),
        ("5", {"python": 2, "node": 2, "bash": 1}),
        ("0", {"python": 0, "node": 0, "bash": 0}),
    ],
)
def test_pool_sizes(spec: str, sizes: dict[str, int]) -> None:
    parsed = PoolSizes.parse(spec)
    assert dict(parsed.per_language) == sizes
    assert PoolSizes.parse(str(parsed)) == parsed


@pytest.mark.parametrize("spec", ["", "ruby=1", "python=1,python=2", "python=-1", "1000", "x"])
def test_bad_pool_sizes(spec: str) -> None:
    with pytest.raises(ValueError):
        PoolSizes.parse(spec)


@pytest.mark.parametrize(
    ("env", "serves"),
    [
        ({}, True),
        ({"GREETING": "hi"}, True),
        (dict(BASE_ENV), True),  # the base environment is what it started with
        ({"PYTHONSAFEPATH": "1"}, False),
        ({"MALLOC_ARENA_MAX": "2"}, False),
        ({"GLIBC_TUNABLES": "glibc.malloc.check=3"}, False),
        ({"LANG": "en_US.UTF-8"}, False),
        ({"HOME": "/tmp"}, False),
        ({"NODE_OPTIONS": "--max-old-space-size=64"}, True),  # Python's start-up ignores it
    ],
)
def test_which_requests_a_waiting_python_serves(env: dict[str, str], serves: bool) -> None:
    assert warm.serves("python", Shape(), {**BASE_ENV, **env}) is serves


@pytest.mark.parametrize(
    ("env", "serves"),
    [
        ({"GREETING": "hi"}, True),
        ({"NODE_OPTIONS": "--max-old-space-size=64"}, False),
        ({"UV_THREADPOOL_SIZE": "2"}, False),
        ({"PYTHONSAFEPATH": "1"}, True),
    ],
)
def test_which_requests_a_waiting_node_serves(env: dict[str, str], serves: bool) -> None:
    assert warm.serves("node", Shape(), {**BASE_ENV, **env}) is serves
