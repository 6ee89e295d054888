"""execd's metrics of a real long-lived sandbox come from its own cgroup: a CPU loop
inside it shows about all of its CPU limit, 100 MiB it holds show in its memory, and
an idle sandbox shows neither (whatever the host is doing)."""

from __future__ import annotations

import time

import pytest

from baponi_core._sandbox.spec import MiB
from baponi_core._sandboxes import metrics
from baponi_core._sandboxes.live import Live
from tests.opensandbox.live import LIMITS, Sandboxes

pytestmark = pytest.mark.slow  # each sample takes its second

HOLD = """
import sys, time
held = bytearray(100 << 20)
held[::4096] = b"x" * len(held[::4096])  # every page touched: resident
sys.stdout.write("held")
sys.stdout.flush()
time.sleep(60)
"""


def test_an_idle_sandbox_shows_its_limits_and_little_use(sandboxes: Sandboxes, live: Live) -> None:
    before = int(time.time() * 1000)
    found = sandboxes.call(metrics.sample, live)
    assert found.cpu_count == 1  # 0.5 CPU, rounded up
    assert found.mem_total_mib == LIMITS.memory_bytes / MiB
    assert found.cpu_used_pct < 10
    assert 0 <= found.mem_used_mib < 50
    assert before + 900 <= found.timestamp <= int(time.time() * 1000)


def test_a_cpu_loop_uses_all_of_its_limit_and_memory_held_shows(
    sandboxes: Sandboxes, live: Live
) -> None:
    idle = sandboxes.call(metrics.sample, live)

    async def busy() -> tuple[metrics.Metrics, metrics.Metrics]:
        spinner = await live.start(["sh", "-c", "while :; do :; done"])
        holder = await live.start(["python3", "-c", HOLD])
        try:
            assert await holder.stdout.receive() == b"held"
            return await metrics.sample(live), await metrics.sample(live)
        finally:
            for process in (spinner, holder):
                await process.signal(9)
                process.close()

    first, second = sandboxes.call(busy)
    for loaded in (first, second):
        # Of its own 0.5 CPU (throttled there, never above), not of the host's two; more
        # than half of it even when other work shares the cores.
        assert 50 < loaded.cpu_used_pct <= 110, loaded
        assert loaded.mem_used_mib - idle.mem_used_mib > 95, (idle, loaded)
        assert loaded.mem_used_mib < LIMITS.memory_bytes / MiB
