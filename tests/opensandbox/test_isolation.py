"""Long-lived sandboxes kept apart: two of different organisations alive at once see
nothing of each other, and code in one cannot signal, read or starve the other; the host
stays out of sight; and everything a sandbox held on the host goes when it ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from baponi_core._sandbox.uids import DEFAULT_UIDS
from tests.harness import (
    SERVER_SECRET,
    Server,
    org_key,
    start_server,
    stop_server,
    unique,
    wait_until,
)
from tests.opensandbox.clients import Execd, opened

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("iso") / "home")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def pair(server: Server) -> Iterator[tuple[Execd, Execd]]:
    """Two sandboxes of two organisations, alive at once."""
    with (
        opened(server, org_key(server, unique("org-a"))) as one,
        opened(server, org_key(server, unique("org-b"))) as other,
    ):
        yield one, other


def host_uids(marker: str) -> set[int]:
    """The host uids of the processes whose command line starts with ``marker``."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if not (entry / "cmdline").read_bytes().startswith(marker.encode()):
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        found.add(int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1]))
    return found


def test_neither_sees_nor_signals_the_others_processes(pair: tuple[Execd, Execd]) -> None:
    one, other = pair
    marker = unique("keep")
    code, _, _ = one.sh(f"(exec -a {marker} sleep 300) > /dev/null 2>&1 & echo started")
    assert code == 0
    wait_until(lambda: host_uids(marker), within=10, what="the marker to run")
    code, out, _ = other.sh(
        "ls /proc | grep -c '^[0-9]'; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '"
    )
    assert marker not in out
    other.sh("kill -9 -1; pkill -9 sleep; true")
    assert host_uids(marker), "the other sandbox's kill reached it"
    code, out, _ = one.sh("pgrep -c sleep || true")
    assert out.strip() == "1"
    uid_one, uid_other = host_uids(marker), set()
    marker_other = unique("other")
    other.sh(f"(exec -a {marker_other} sleep 300) > /dev/null 2>&1 &")
    wait_until(lambda: host_uids(marker_other), within=10, what="the other marker")
    uid_other = host_uids(marker_other)
    assert uid_one.isdisjoint(uid_other)  # a host uid of each one's own
    assert all(uid in DEFAULT_UIDS for uid in uid_one | uid_other)


def test_neither_reads_the_others_files(pair: tuple[Execd, Execd]) -> None:
    one, other = pair
    name = unique("secret")
    assert one.sh(f"echo x > ~/{name}; echo y > /tmp/{name}; echo z > /dev/shm/{name}")[0] == 0
    _, out, _ = other.sh(f"find / -name '{name}*' 2>/dev/null; true")
    assert out == ""
    assert one.sh(f"cat ~/{name}")[1] == "x\n"


def test_a_bomb_in_one_does_not_starve_the_other(pair: tuple[Execd, Execd]) -> None:
    one, other = pair
    bomb = "bomb() { bomb | bomb & }; bomb"
    other.events({"command": f"timeout 5 bash -c '{bomb}'", "background": True})
    other.events(
        {
            "command": "timeout 5 python3 -c 'b=[]\nwhile 1: b.append(bytearray(1<<24))'",
            "background": True,
        }
    )
    for _ in range(5):
        code, out, _ = one.sh("echo alive")
        assert (code, out) == (0, "alive\n")


def test_the_host_stays_out_of_sight(pair: tuple[Execd, Execd]) -> None:
    one, _ = pair
    code, out, _ = one.sh("env")
    assert SERVER_SECRET not in out and "BAPONI_" not in out
    assert one.sh("cat /etc/shadow")[0] != 0
    _, out, _ = one.sh("cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '")
    assert out.split() == ["lo"]  # no interface out of the sandbox
    _, out, _ = one.sh("id -u; id -un")
    assert out == "1000\nbaponi\n"
    code, _, _ = one.sh("touch /usr/bin/x")
    assert code != 0  # the runtime's root filesystem is read-only


def test_everything_a_sandbox_held_goes_when_it_ends(server: Server) -> None:
    pid = server.process.pid

    def held() -> tuple[int, int, int]:
        mounts = len(Path(f"/proc/{pid}/mountinfo").read_text().splitlines())
        groups = sum(
            1
            for base in Path("/sys/fs/cgroup").glob(f"*/**/srv-{pid}-*")
            for _ in base.iterdir()
            if _.is_dir()
        )
        return mounts, groups, len(os.listdir(f"/proc/{pid}/fd"))

    with opened(server):
        pass  # the fixture's own first sandbox: lazily made state is made now
    before = held()
    marker = unique("gone")
    with opened(server) as box:
        box.sh(f"(exec -a {marker} sleep 300) > /dev/null 2>&1 &")
        wait_until(lambda: host_uids(marker), within=10, what="its process")
        during = held()
        assert during[1] > before[1] and during[2] > before[2]  # its cgroups, its socket
    wait_until(lambda: not host_uids(marker), within=10, what="its processes to end")

    def freed() -> bool:  # descriptors the server holds for other clients may come and go
        now = held()
        return now[:2] == before[:2] and now[2] <= before[2]

    wait_until(freed, within=10, what=lambda: f"{held()} to be {before}")
