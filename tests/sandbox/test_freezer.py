"""The cgroup freezer, which pauses a long-lived sandbox: a frozen group's processes do
not advance until it is thawed, and a frozen group still goes entirely when removed or
when its server's groups close (a frozen process on cgroup v1 dies only once thawed)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baponi_core._sandbox.cgroups import Cgroup, Cgroups
from baponi_core._sandbox.spec import Limits
from tests.harness import wait_until

COUNTER = """
import sys, time
path, i = sys.argv[1], 0
while True:
    i += 1
    with open(path + ".new", "w") as f:
        f.write(str(i))
    __import__("os").replace(path + ".new", path)
    time.sleep(0.005)
"""


@pytest.fixture()
def cgroups() -> Iterator[Cgroups]:
    found = Cgroups.detect()
    assert found is not None, "these tests run as root, with cgroups"
    assert found.can_freeze
    try:
        yield found
    finally:
        found.close()


def counting(group: Cgroup, where: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A process in ``group`` that counts into a file, once it has begun to."""
    count = where / "count"
    process = subprocess.Popen([sys.executable, "-c", COUNTER, str(count)])
    group.attach(process.pid)
    wait_until(lambda: count.exists() and int(count.read_text()) > 2, 10, "the counter")
    return process, count


def advances(count: Path, over_s: float = 0.2) -> bool:
    before = int(count.read_text())
    time.sleep(over_s)
    return int(count.read_text()) > before


def test_a_frozen_group_does_not_advance_until_thawed(cgroups: Cgroups, tmp_path: Path) -> None:
    group = cgroups.create("frz-counter", Limits(), freezable=True)
    process, count = counting(group, tmp_path)
    try:
        assert group.freezer_state() == "THAWED"
        assert group.freeze()
        assert group.freezer_state() == "FROZEN"
        assert not advances(count)
        assert process.poll() is None  # stopped, not ended
        group.thaw()
        assert group.freezer_state() == "THAWED"
        assert advances(count)
    finally:
        assert group.remove()
        process.wait(timeout=5)


def test_a_frozen_group_is_removed_with_its_processes(cgroups: Cgroups, tmp_path: Path) -> None:
    group = cgroups.create("frz-remove", Limits(), freezable=True)
    process, _ = counting(group, tmp_path)
    assert group.freeze()
    assert group.remove()
    assert process.wait(timeout=5) == -9
    assert not any(d.exists() for d in group.dirs)


def test_closing_the_groups_ends_a_frozen_sandbox(tmp_path: Path) -> None:
    cgroups = Cgroups.detect()
    assert cgroups is not None
    group = cgroups.create("frz-close", Limits(), freezable=True)
    process, _ = counting(group, tmp_path)
    assert group.freeze()
    cgroups.close()  # as at a server stop
    assert process.wait(timeout=5) == -9
    assert not any(d.exists() for d in (*group.dirs, *cgroups.bases))
    assert cgroups.freezer is None or not cgroups.freezer.exists()


def test_a_one_shot_group_has_no_freezer_of_its_own(cgroups: Cgroups) -> None:
    group = cgroups.create("frz-none", Limits())
    try:
        if cgroups.v2:  # v2's freezer is in every group
            assert group.dirs == (cgroups.bases[0] / "frz-none",)
        else:
            assert len(group.dirs) == len(cgroups.bases)
            with pytest.raises(ValueError, match="without a freezer"):
                group.freeze()
    finally:
        assert group.remove()


DYING_SERVER = """
import subprocess, sys, os
from baponi_core._sandbox.cgroups import Cgroups
from baponi_core._sandbox.spec import Limits
cgroups = Cgroups.detect()
group = cgroups.create("frz-stale", Limits(), freezable=True)
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
group.attach(child.pid)
assert group.freeze()
print(os.getpid(), child.pid, flush=True)
os.kill(os.getpid(), 9)  # dies with its frozen group in place
"""


def alive(pid: int) -> bool:
    """Whether the process runs (or is frozen): not gone, nor a zombie left to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_dead_servers_frozen_groups_go_at_the_next_start(tmp_path: Path) -> None:
    dying = subprocess.run(
        [sys.executable, "-c", DYING_SERVER], capture_output=True, text=True, timeout=30
    )
    assert dying.returncode == -9, dying.stderr
    server, child = map(int, dying.stdout.split())
    assert alive(child)  # frozen, in the dead server's groups
    started = time.monotonic()
    cgroups = Cgroups.detect()  # a new server's start cleans up after the dead one
    assert cgroups is not None
    try:
        wait_until(lambda: not alive(child), 5, "the frozen orphan's end")
        assert time.monotonic() - started < 2  # thawed first, never waited on frozen
        assert list(Path("/sys/fs/cgroup").glob(f"*/baponi/srv-{server}-*")) == []
    finally:
        cgroups.close()
