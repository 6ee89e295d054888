"""execd's ``/metrics`` of a long-lived sandbox: its own CPU and memory, read from its
cgroup (never the host's figures), against its own limits."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import anyio
from pydantic import BaseModel

from baponi_core._sandbox.spec import MiB
from baponi_core._sandboxes.errors import NotSupported
from baponi_core._sandboxes.live import Live

SAMPLE_S = 1.0  # CPU use is measured over this long, as execd's
WATCH_PAUSE_S = 1.0  # between two samples of /metrics/watch


class Metrics(BaseModel):
    """``cpu_used_pct`` is a share of the sandbox's CPU limit (100: all of it)."""

    cpu_count: float
    cpu_used_pct: float
    mem_total_mib: float
    mem_used_mib: float
    timestamp: int  # unix milliseconds


async def sample(live: Live, over_s: float = SAMPLE_S) -> Metrics:
    """The sandbox's use now, its CPU over the last ``over_s``."""
    live.check_usable()
    group = live.handle.cgroup
    before = group.cpu_used_ns() if group is not None else None
    if group is None or before is None:
        raise NotSupported("this server keeps no CPU and memory accounting for sandboxes")
    start = time.monotonic()
    await anyio.sleep(over_s)
    used_ns = (group.cpu_used_ns() or before) - before
    elapsed = time.monotonic() - start
    limits = live.handle.shape.limits
    return Metrics(
        cpu_count=math.ceil(limits.cpus),
        cpu_used_pct=round(min(100.0, 100 * used_ns / 1e9 / elapsed / limits.cpus), 2),
        mem_total_mib=limits.memory_bytes / MiB,
        mem_used_mib=round(group.memory_used() / MiB, 2),
        timestamp=int(time.time() * 1000),
    )


async def watch(live: Live) -> AsyncIterator[Metrics]:
    """A sample about every two seconds (a pause, then a one-second sample) until the
    caller stops reading or the sandbox stops."""
    while True:
        yield await sample(live)
        await anyio.sleep(WATCH_PAUSE_S)
