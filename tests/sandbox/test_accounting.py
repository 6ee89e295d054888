"""The CPU time and memory a long-lived sandbox's cgroup counts (its metrics' source):
they grow with what its processes do, ended ones included, and its accounting group
goes with it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from baponi_core._sandbox.cgroups import Cgroups
from baponi_core._sandbox.spec import Limits, MiB
from tests.harness import wait_until

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
HOLD = "import sys, time\nb = bytearray(64 << 20)\nb[::4096] = b'x' * len(b[::4096])\n"
HOLD += "print(flush=True)\ntime.sleep(30)"


@pytest.fixture()
def cgroups() -> Iterator[Cgroups]:
    found = Cgroups.detect()
    assert found is not None, "these tests run as root, with cgroups"
    try:
        yield found
    finally:
        found.close()


def in_group(attach: Callable[[int], None], code: str) -> subprocess.Popen[bytes]:
    """A Python process that waits for its group before running ``code``."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.stdin.readline()\n{code}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    attach(process.pid)
    assert process.stdin is not None
    process.stdin.write(b"go\n")
    process.stdin.flush()
    return process


def test_cpu_time_and_memory_are_counted_per_group(cgroups: Cgroups) -> None:
    group = cgroups.create("acct-1", Limits(), freezable=True)
    try:
        before = group.cpu_used_ns()
        assert before is not None and group.memory_used() < 16 * MiB
        burner = in_group(group.attach, BURN)
        assert burner.wait(timeout=10) == 0
        used = (group.cpu_used_ns() or 0) - before
        assert 0.25e9 < used < 2e9, used  # the ended process's time stays counted
        holder = in_group(group.attach, HOLD)
        assert holder.stdout is not None and holder.stdout.readline() == b"\n"
        assert group.memory_used() > 60 * MiB
        holder.kill()
        holder.wait()
        wait_until(lambda: group.memory_used() < 60 * MiB, 5, "the memory to be released")
    finally:
        assert group.remove()
    assert not any(d.exists() for d in group.dirs)
